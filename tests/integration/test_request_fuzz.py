"""Generated requests against the served model: every one gets either a correct answer or a
clear error, and the server keeps answering (bounded: a few dozen examples per protocol)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys.client import RecommendError, RecommenderClient

pytestmark = pytest.mark.integration

DTYPES = {"INT64": np.int64, "INT32": np.int32, "FP32": np.float32, "FP64": np.float64}


@st.composite
def requests(draw, known_users):
    dtype = draw(st.sampled_from(sorted(DTYPES)))
    size = draw(st.integers(min_value=0, max_value=80))
    ids = draw(st.lists(st.one_of(st.sampled_from(known_users),
                                  st.integers(min_value=-2**63, max_value=2**63 - 1)),
                        min_size=size, max_size=size))
    values = np.array(ids, dtype=np.int64)
    if dtype != "INT64":
        values = values.astype(DTYPES[dtype])
    if draw(st.booleans()) and size and size % 2 == 0:
        values = values.reshape(2, -1)
    return dtype, values


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_generated_requests_answered_or_rejected_clearly(serving_stack, protocol):
    import pandas as pd

    from core.artifacts import Artifacts

    config, _, triton = serving_stack
    known = pd.read_parquet(Artifacts.of(config).users)["user_id"].head(200).tolist()
    url = triton.http_url if protocol == "http" else triton.grpc_url
    client = RecommenderClient(url, protocol)
    limit, k = config.serving.max_batch_users, config.serving.top_k

    @settings(max_examples=25, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(requests(known))
    def check(request):
        dtype, values = request
        valid = dtype == "INT64" and values.ndim == 1 and 0 < values.size <= limit
        try:
            answer = client.recommend(values, dtype=dtype)
        except RecommendError as exc:
            assert not valid, f"valid request rejected: {exc}"
            message = str(exc)
            assert any(word in message for word in ("data-type", "shape", "empty", "at most")), message
        else:
            assert valid, f"invalid request answered: {dtype} {values.shape}"
            assert answer["item_ids"].shape == (values.size, k)
            assert np.all(np.diff(answer["scores"], axis=1) <= 0)
        assert client.ready()

    check()
    client.close()


FRAGMENTS = ["INCLUDE", "EXCLUDE", "ItemID", "WHERE", "Items.genres", "Items.release_year",
             "Items.item_interactions", "Items.nope", "IN", "NOT", "AND", "OR", "=", "!=", "<", ">=",
             "(", ")", ",", "|", "$P", "$Q", "'Drama'", '"x\\" or id > 0 or \\""', "3", "-1.5",
             "500001", "id > 0", ";", "\x00", "]"]


@st.composite
def filters(draw):
    """Filter expressions: grammatical ones with hostile values, and fragment soup."""
    if draw(st.booleans()):
        expression = draw(st.sampled_from([
            "INCLUDE ItemID WHERE Items.genres IN $P",
            "EXCLUDE ItemID WHERE ItemID IN $P",
            "INCLUDE ItemID WHERE Items.release_year = $P | EXCLUDE ItemID WHERE Items.item_interactions < $Q",
        ]))
    else:
        expression = " ".join(draw(st.lists(st.sampled_from(FRAGMENTS), max_size=12)))
    scalar = st.one_of(st.text(max_size=20), st.integers(-2**70, 2**70), st.floats(), st.booleans(), st.none())
    values = draw(st.one_of(
        st.dictionaries(st.sampled_from(["P", "Q", "R", "bad name"]), st.one_of(scalar, st.lists(scalar, max_size=4)),
                        max_size=3),
        st.text(max_size=30)))
    return expression, values


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_generated_filters_answered_or_rejected_clearly(serving_stack, catalogue, protocol):
    """Whatever filter text and values a caller sends: a filtered answer (ids in the catalogue,
    -1 only at the end, sorted scores) when the filter is valid, ``bad request: filter: ...``
    when not - decided exactly as the filter engine decides - and the server keeps serving."""
    import json

    from ensemble.graph import feast_features
    from operators.filters import FeatureKinds, FilterError, compile_filter

    config, _, triton = serving_stack
    users, items, _ = catalogue
    kinds = FeatureKinds.from_feast(feast_features(config)["item_features"])
    url = triton.http_url if protocol == "http" else triton.grpc_url
    client = RecommenderClient(url, protocol)

    @settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(filters())
    def check(request):
        expression, values = request
        sent = values if isinstance(values, str) else json.dumps(values)
        try:
            compile_filter(expression, sent, kinds)
            valid = True
        except FilterError:
            valid = False
        try:
            answer = client.recommend(users[:3], filter=expression, filter_values=sent)
        except RecommendError as exc:
            assert not valid, f"valid filter rejected: {exc}"
            assert "bad request: filter:" in str(exc), str(exc)
        else:
            assert valid, f"invalid filter answered: {expression!r} {sent!r}"
            for row, scores in zip(answer["item_ids"], answer["scores"]):
                ids = row.tolist()
                head = ids[: ids.index(-1)] if -1 in ids else ids
                assert set(head) <= items and all(i == -1 for i in ids[len(head):])
                assert np.all(np.diff(scores[: len(head)]) <= 0) and np.all(np.isneginf(scores[len(head):]))
        assert client.ready()

    check()
    client.close()
