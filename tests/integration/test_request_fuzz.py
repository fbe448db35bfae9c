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

    from training.pipeline import Artifacts

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
