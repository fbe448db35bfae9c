"""The request contract of ``recommender``, through a real tritonserver and a real Milvus, over
HTTP and gRPC, with Feast's SQLite online store filled by the feast CLI."""
from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from recsys.client import RecommendError

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_contract_shapes_dtypes_raw_ids_sorted_scores(clients, catalogue, serving_stack, protocol):
    config = serving_stack[0]
    users, items, _ = catalogue
    request = users[:5]
    answer = clients[protocol].recommend(request)
    k = config.serving.top_k
    assert answer["item_ids"].dtype == np.int64 and answer["item_ids"].shape == (5, k)
    assert answer["scores"].dtype == np.float32 and answer["scores"].shape == (5, k)
    assert answer["fallback"].dtype == np.bool_ and answer["fallback"].shape == (5,)
    assert not answer["fallback"].any()
    for row in range(5):
        ids = answer["item_ids"][row]
        assert set(ids.tolist()) <= items, "ids must be raw catalogue ids"
        assert len(set(ids.tolist())) == k, "ids must be unique within a row"
        scores = answer["scores"][row]
        assert np.all(np.isfinite(scores))
        assert np.all(np.diff(scores) <= 0), "scores must be sorted descending"


def test_raw_ids_are_not_encoded_ids(clients, catalogue):
    users, items, _ = catalogue
    answer = clients["grpc"].recommend(users[:3])
    # The fixture's raw item ids are MovieLens ids + 500,000; encoded ids are below 2,000.
    assert answer["item_ids"].min() > 500_000


def test_batch_equals_singles(clients, catalogue):
    users, _, _ = catalogue
    request = users[10:18]
    batch = clients["grpc"].recommend(request)
    for row, user_id in enumerate(request):
        single = clients["grpc"].recommend([user_id])
        np.testing.assert_array_equal(single["item_ids"][0], batch["item_ids"][row])
        np.testing.assert_allclose(single["scores"][0], batch["scores"][row], rtol=1e-5, atol=1e-6)


def test_http_and_grpc_agree(clients, catalogue):
    users, _, _ = catalogue
    request = users[20:26]
    by_http = clients["http"].recommend(request)
    by_grpc = clients["grpc"].recommend(request)
    np.testing.assert_array_equal(by_http["item_ids"], by_grpc["item_ids"])
    np.testing.assert_allclose(by_http["scores"], by_grpc["scores"], rtol=1e-5, atol=1e-6)


def test_personalized_not_everyone_gets_the_same_list(clients, catalogue):
    users, _, _ = catalogue
    answer = clients["grpc"].recommend(users[:20])
    distinct_rows = {tuple(row) for row in answer["item_ids"].tolist()}
    assert len(distinct_rows) > 5


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_unknown_users_get_flagged_popular_fallback(clients, catalogue, serving_stack, protocol):
    users, _, popular = catalogue
    k = serving_stack[0].serving.top_k
    unknown = [-5, int(users.max()) + 10_000_000]
    request = np.array([users[0], unknown[0], users[1], unknown[1]])
    answer = clients[protocol].recommend(request)
    assert answer["fallback"].tolist() == [False, True, False, True]
    for row in (1, 3):
        np.testing.assert_array_equal(answer["item_ids"][row], popular[:k])
        assert np.all(np.diff(answer["scores"][row]) <= 0)
    alone = clients[protocol].recommend(request[[0]])
    np.testing.assert_array_equal(alone["item_ids"][0], answer["item_ids"][0])


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bad_requests_get_clear_errors_and_server_keeps_serving(clients, catalogue, serving_stack,
                                                               protocol):
    users, _, _ = catalogue
    client = clients[protocol]
    max_users = serving_stack[0].serving.max_batch_users
    with pytest.raises(RecommendError, match="empty"):
        client.recommend(np.array([], dtype=np.int64))
    with pytest.raises(RecommendError, match=f"at most {max_users}"):
        client.recommend(np.arange(max_users + 1, dtype=np.int64))
    with pytest.raises(RecommendError, match="data-type is .FP32.*expects .INT64"):
        client.recommend(np.array([1.5, 2.5], dtype=np.float32), dtype="FP32")
    with pytest.raises(RecommendError, match="(?i)shape"):
        client.recommend(np.array([[users[0], users[1]]], dtype=np.int64))
    answer = client.recommend(users[:2])
    assert answer["item_ids"].shape[0] == 2


def test_stage_timings_exported_as_metrics(clients, catalogue, serving_stack):
    _, _, triton = serving_stack
    users, _, _ = catalogue
    clients["http"].recommend(users[:2])
    url = f"http://{triton.host}:{triton.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    for stage in ("QueryFeatures[user_features]", "TransformFeatures[user]", "QueryMilvus",
                  "PredictSavedModel[dlrm]", "OrderCandidates"):
        assert f'recsys_stage_seconds_total{{stage="{stage}"}}' in text


def test_cli_recommend_against_running_server(serving_stack, catalogue):
    config, _, triton = serving_stack
    users, _, _ = catalogue
    recsys = str(Path(sys.executable).parent / "recsys")
    for flag, url in (([], triton.http_url), (["--grpc"], triton.grpc_url)):
        result = subprocess.run([recsys, "recommend", str(users[0]), str(users[1]), "--url", url, *flag],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("user ") == 2
    result = subprocess.run([recsys, "recommend", "1", "--url", "127.0.0.1:1"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "cannot reach Triton" in result.stderr
    assert "Traceback" not in result.stderr


def test_milvus_down_fails_fast_with_clear_error_then_recovers(clients, catalogue, serving_stack):
    import time

    _, milvus, triton = serving_stack
    users, _, _ = catalogue
    milvus.stop()
    try:
        for protocol in ("http", "grpc"):
            started = time.monotonic()
            with pytest.raises(RecommendError, match="dependency unavailable: .*Milvus"):
                clients[protocol].recommend(users[:2])
            assert time.monotonic() - started < 30
        assert triton.alive() and clients["http"].ready()
    finally:
        milvus.start()
    deadline = time.monotonic() + 120
    while True:
        try:
            answer = clients["grpc"].recommend(users[:2])
            break
        except RecommendError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)
    assert answer["item_ids"].shape == (2, serving_stack[0].serving.top_k)
