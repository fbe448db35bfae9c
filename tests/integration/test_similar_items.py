"""The second Triton model, ``similar_items``, over HTTP and gRPC."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from core.artifacts import Artifacts

pytestmark = pytest.mark.integration
OUTPUTS = ("item_ids", "scores", "found")


def _similar(triton, item_ids, protocol: str, model: str) -> dict:
    module, url = ((httpclient, triton.http_url) if protocol == "http" else (grpcclient, triton.grpc_url))
    client = module.InferenceServerClient(url)
    values = np.asarray(item_ids, dtype=np.int64)
    request = module.InferInput("item_id", list(values.shape), "INT64")
    request.set_data_from_numpy(values)
    try:
        result = client.infer(model, [request], outputs=[module.InferRequestedOutput(o) for o in OUTPUTS])
        return {name: result.as_numpy(name) for name in OUTPUTS}
    finally:
        client.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_similar_items_contract(serving_stack, protocol):
    config, _, triton = serving_stack
    model, k = config.serving.similar_model_name, config.serving.top_k
    vectors = pd.read_parquet(Artifacts.of(config).item_vectors)
    known = vectors["item_id"].to_numpy()[:5]
    unknown = int(vectors["item_id"].max()) + 10_000
    answer = _similar(triton, [*known, unknown], protocol, model)
    assert answer["item_ids"].shape == (6, k) and answer["scores"].shape == (6, k)
    assert answer["found"].tolist() == [True] * 5 + [False]
    catalogue = set(vectors["item_id"].tolist())
    for row, item in enumerate([*known, unknown]):
        ids = answer["item_ids"][row]
        assert item not in ids and len(set(ids)) == k and set(ids) <= catalogue
        assert np.all(np.diff(answer["scores"][row]) <= 0)
    popular = pd.read_parquet(Artifacts.of(config).popular_items)["item_id"].to_numpy()
    np.testing.assert_array_equal(answer["item_ids"][5], popular[:k])
    alone = _similar(triton, known[[2]], protocol, model)
    np.testing.assert_array_equal(alone["item_ids"][0], answer["item_ids"][2])


def test_similar_items_match_exact_inner_product_search(serving_stack):
    config, _, triton = serving_stack
    k = config.serving.top_k
    vectors = pd.read_parquet(Artifacts.of(config).item_vectors)
    ids = vectors["item_id"].to_numpy()
    matrix = np.stack(vectors["embedding"].to_numpy()).astype(np.float32)
    rows = np.arange(0, len(ids), max(1, len(ids) // 40))[:40]
    answer = _similar(triton, ids[rows], "grpc", config.serving.similar_model_name)
    overlap = []
    for n, row in enumerate(rows):
        scores = matrix @ matrix[row]
        scores[row] = -np.inf
        exact = set(ids[np.argsort(-scores)[:k]].tolist())
        overlap.append(len(exact & set(answer["item_ids"][n].tolist())) / k)
    assert np.mean(overlap) >= 0.95, np.mean(overlap)


def test_similar_items_bad_request(serving_stack):
    config, _, triton = serving_stack
    with pytest.raises(InferenceServerException, match="item_id is empty"):
        _similar(triton, np.array([], dtype=np.int64), "http", config.serving.similar_model_name)
    assert _similar(triton, [int(pd.read_parquet(Artifacts.of(config).items)["item_id"][0])], "http",
                    config.serving.similar_model_name)["found"].tolist() == [True]


def test_cli_similar_and_client(serving_stack, clients):
    import subprocess
    import sys
    from pathlib import Path

    config, _, triton = serving_stack
    item = int(pd.read_parquet(Artifacts.of(config).item_vectors)["item_id"][0])
    recsys = str(Path(sys.executable).parent / "recsys")
    result = subprocess.run([recsys, "similar", str(item), "-1", "--url", triton.grpc_url, "--grpc"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"item {item}:" in result.stdout and "item -1  (not in the collection" in result.stdout
    answer = clients["http"].similar([item])
    assert answer["found"].tolist() == [True] and item not in answer["item_ids"][0]
