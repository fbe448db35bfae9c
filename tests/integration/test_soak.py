"""A short version of the load test (benchmarks/soak.py) in CI: concurrent HTTP and gRPC
clients, single users and batches, zero errors allowed."""
from __future__ import annotations

import pytest

from benchmarks.soak import render, soak

pytestmark = pytest.mark.integration


def test_short_soak_has_no_errors(serving_stack, catalogue):
    _, milvus, triton = serving_stack
    report = soak({"http": triton.http_url, "grpc": triton.grpc_url}, catalogue[0], clients=4,
                  seconds=8.0, pids={"tritonserver": triton.pid, "milvus": milvus.pid})
    print(render(report))
    assert report["errors"] == []
    kinds = {(row["protocol"], row["users_per_request"]) for row in report["latency"]}
    assert kinds == {("http", 1), ("http", 32), ("grpc", 1), ("grpc", 32)}
    assert report["requests"] >= 8
    for tree in report["memory"].values():
        assert tree["peak_mib"] > 0
