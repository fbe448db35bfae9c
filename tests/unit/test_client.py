"""RecommenderClient over several endpoints, with stand-in tritonclient objects: round robin,
an unreachable replica skipped and rested, a model error returned as is."""
from __future__ import annotations

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from recsys.client import RecommendError, RecommenderClient, TritonUnreachable


class _Result:
    def __init__(self, endpoint: str):
        self.endpoint = endpoint

    def as_numpy(self, name):
        return np.array([self.endpoint.encode()], dtype=object) if name == "source" else np.zeros((1, 1))


class _Replica:
    def __init__(self, endpoint: str, failure: Exception | None = None):
        self.endpoint, self.failure, self.calls = endpoint, failure, 0

    def infer(self, *args, **kwargs):
        self.calls += 1
        if self.failure is not None:
            raise self.failure
        return _Result(self.endpoint)

    def close(self):
        pass


def _client(protocol: str, *replicas: _Replica, rest_s: float = 5.0) -> RecommenderClient:
    client = RecommenderClient(",".join(r.endpoint for r in replicas), protocol, rest_s=rest_s)
    client._clients = list(replicas)
    by_endpoint = {r.endpoint: r for r in replicas}
    client._connect = lambda module, endpoint: by_endpoint[endpoint]  # a reconnect finds the same stand-in
    return client


def _answered_by(client: RecommenderClient) -> str:
    return client.recommend([1])["source"][0]


def test_requests_go_to_the_replicas_in_turn():
    client = _client("http", _Replica("a:1"), _Replica("b:1"), _Replica("c:1"))
    assert [_answered_by(client) for _ in range(6)] == ["a:1", "b:1", "c:1"] * 2
    assert client.answered == [2, 2, 2]


@pytest.mark.parametrize("protocol, failure", [
    ("http", ConnectionRefusedError(111, "Connection refused")),
    ("grpc", InferenceServerException("failed to connect", status="StatusCode.UNAVAILABLE")),
])
def test_an_unreachable_replica_is_skipped_and_rested(protocol, failure):
    down, up = _Replica("down:1", failure), _Replica("up:1")
    client = _client(protocol, down, up)
    assert [_answered_by(client) for _ in range(4)] == ["up:1"] * 4
    assert down.calls == 1  # tried once, then rested
    client._resting_until = [0.0, 0.0]  # rest over: tried again in its turn
    _answered_by(client), _answered_by(client)
    assert down.calls == 2


@pytest.mark.parametrize("protocol, error", [
    ("grpc", InferenceServerException("bad request: user_id is empty", status="StatusCode.INVALID_ARGUMENT")),
    ("http", InferenceServerException("bad request: user_id is empty", status="400")),
    ("grpc", InferenceServerException("dependency unavailable: Milvus at x: down", status="StatusCode.UNAVAILABLE")),
    ("http", InferenceServerException("dependency unavailable: Milvus at x: down", status="503")),
])
def test_a_model_error_is_not_retried_on_another_replica_nor_rests_it(protocol, error):
    first, second = _Replica("a:1", error), _Replica("b:1")
    client = _client(protocol, first, second)
    with pytest.raises(RecommendError) as raised:
        client.recommend([1])
    assert raised.value.status == error.status() and str(raised.value) == error.message()
    assert second.calls == 0 and client._resting_until[0] == 0.0


def test_every_replica_unreachable_names_each():
    client = _client("http", _Replica("a:1", ConnectionResetError(104, "reset")),
                     _Replica("b:1", TimeoutError("timed out")))
    with pytest.raises(TritonUnreachable, match=r"\(http\): a:1: .*reset; b:1: timed out"):
        client.recommend([1])
    with pytest.raises(ValueError, match="no Triton endpoint"):
        RecommenderClient(" , ", "http")


class _Flaky(_Replica):
    """Refuses the connection ``times`` times, then answers."""

    def __init__(self, endpoint, failure, times):
        super().__init__(endpoint, failure)
        self.times = times

    def infer(self, *args, **kwargs):
        self.calls += 1
        if self.calls <= self.times:
            raise self.failure
        return _Result(self.endpoint)


@pytest.mark.parametrize("protocol, refused", [
    ("http", ConnectionRefusedError(111, "Connection refused")),
    ("grpc", InferenceServerException("failed to connect to all addresses; last error: UNKNOWN: "
                                      "Connection refused (111)", status="StatusCode.UNAVAILABLE")),
])
def test_a_refused_request_is_sent_again_within_the_wait_and_a_lost_one_never(protocol, refused):
    server = _Flaky("a:1", refused, 3)
    client = _client(protocol, server)
    client.wait_s = 10
    assert _answered_by(client) == "a:1" and server.calls == 4  # held until the server was back
    lost = (ConnectionResetError(104, "reset") if protocol == "http" else
            InferenceServerException("Socket closed", status="StatusCode.UNAVAILABLE"))
    server = _Flaky("a:1", lost, 3)
    client = _client(protocol, server)
    client.wait_s = 10
    with pytest.raises(TritonUnreachable):
        client.recommend([1])
    assert server.calls == 1  # it reached the server: never sent again
    client = _client(protocol, _Flaky("a:1", refused, 1000))
    client.wait_s = 0.5
    with pytest.raises(TritonUnreachable, match="refused"):
        client.recommend([1])
