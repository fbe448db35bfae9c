"""One request never ends the service (issue: "Survive hostile requests").

Against a real ``recsys serve`` (Milvus, Triton, the HTTP guard, the supervisor):
- the KServe v2 JSON shapes that abort or exhaust ``tritonserver`` 2.51 are refused with 400 at
  the public HTTP port and Triton keeps its process;
- sent to Triton's private HTTP port (any crash of Triton stands in for one the guard does not
  know), Triton aborts; the supervisor restarts it, Milvus keeps running, the service answers
  again within RECOVERY_BOUND_S, HTTP clients (through the guard) and gRPC clients (the client
  sends a refused request again) lose only what was in flight at the crash, and ``recsys status`` reports the restart with its exit status.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from core.artifacts import Artifacts
from recsys.client import RecommendError, RecommenderClient

pytestmark = pytest.mark.integration

# Measured: 15.5-20 s from the abort to the first answer on the 2-core machine (README,
# Security); the bound leaves room for a loaded CI machine.
RECOVERY_BOUND_S = 120.0
CRASHING_SHAPES = [[10 ** 12], [2 ** 31], [2 ** 40], [2 ** 32, 2 ** 32], [3037000500, 3037000500]]


def _post(port: int, shape: list[int], timeout_s: float = 60.0):
    body = json.dumps({"inputs": [{"name": "user_id", "datatype": "INT64", "shape": shape, "data": [1]}]})
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/recommender/infer",
                                     data=body.encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _status(config_path: Path) -> dict:
    recsys = str(Path(sys.executable).parent / "recsys")
    done = subprocess.run([recsys, "--config", str(config_path), "status", "--json"],
                          capture_output=True, text=True, timeout=120)
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def served(serving_stack, serve_command, tmp_path_factory):
    config = serving_stack[0]
    root = tmp_path_factory.mktemp("hostile")
    with serve_command(config, root, "hostile_test", "http_guard_wait_s = 180") as run:
        assert "Ctrl-C to stop" in run.output, run.output
        yield run, pd.read_parquet(Artifacts.of(config).users)["user_id"].to_numpy()[:8].tolist()


def _triton_pid(run) -> int:
    checks = [c for c in _status(run.config_path)["checks"] if c["component"] == "serve"]
    assert checks, "recsys status shows no supervised servers"
    return json.loads(Path(re.search(r'workdir = "(.*)"', run.config_path.read_text()).group(1)
                           ).joinpath("triton", "supervisor.json").read_text())["servers"]["tritonserver"]["pid"]


def test_shapes_that_crash_triton_are_refused_at_the_public_port(served):
    run, users = served
    pid = _triton_pid(run)
    for shape in CRASHING_SHAPES:
        status, body = _post(run.ports["http"], shape)
        assert status == 400, (shape, status, body)
        assert "elements" in body and "user_id" in body, body
    client = RecommenderClient(f"127.0.0.1:{run.ports['http']}", "http")
    assert client.recommend(users[:2])["item_ids"].shape[0] == 2
    client.close()
    assert _triton_pid(run) == pid  # never restarted


def test_a_crashed_triton_is_restarted_and_no_request_is_lost_beyond_those_in_flight(served):
    run, users = served
    private = int(re.search(r"Triton's private 127\.0\.0\.1:(\d+)", run.output).group(1))
    pid = _triton_pid(run)
    crashed_at, stop = [], threading.Event()
    outcomes: list[tuple[float, float, str]] = []  # (sent, answered, "ok" | error)

    def caller(protocol: str, port: int) -> None:
        # HTTP: the guard holds requests while Triton restarts; gRPC: the client sends a
        # refused request again (wait_s).
        client = RecommenderClient(f"127.0.0.1:{port}", protocol, timeout_s=240, wait_s=240)
        while not stop.is_set():
            sent = time.monotonic()
            try:
                client.recommend(users[:3])
                outcomes.append((sent, time.monotonic(), f"{protocol} ok"))
            except Exception as exc:  # noqa: BLE001 - every failure is examined below
                outcomes.append((sent, time.monotonic(), f"{protocol} {type(exc).__name__}: {exc}"))
                time.sleep(0.05)
        client.close()

    threads = [threading.Thread(target=caller, args=("http", run.ports["http"])) for _ in range(3)]
    threads.append(threading.Thread(target=caller, args=("grpc", run.ports["grpc"])))
    for thread in threads:
        thread.start()
    try:
        time.sleep(2)
        crashed_at.append(time.monotonic())
        try:
            _post(private, [10 ** 12], timeout_s=30)
        except OSError:
            pass  # the server died under the request
        crashed_at.append(time.monotonic())  # its connection dropped: Triton is gone
        deadline = crashed_at[0] + RECOVERY_BOUND_S
        while time.monotonic() < deadline:
            if any(s > crashed_at[-1] and o == "http ok" for s, _, o in outcomes) and \
                    any(s > crashed_at[-1] and o == "grpc ok" for s, _, o in outcomes):
                break
            time.sleep(0.5)
        time.sleep(1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(300)
    crash, died = crashed_at  # the poison sent; its connection dropped (the abort)
    recovered = min((a for s, a, o in outcomes if s > died and o == "http ok"), default=None)
    assert recovered is not None and recovered - crash < RECOVERY_BOUND_S, outcomes[-5:]
    print(f"time to recover (abort -> first answer through the guard): {recovered - crash:.1f}s")
    http = [o for o in outcomes if o[2].startswith("http")]
    lost = [o for o in http if o[2] != "http ok"]
    # Each HTTP caller had at most one request in flight at the crash; the guard holds the rest.
    assert len(lost) <= 3, lost
    in_flight = died + 0.5  # sent before the abort (0.5 s: the clock read after the drop)
    assert all(s <= in_flight and "closed the connection during the request" in o for s, _, o in lost), lost
    assert sum(o[2] == "http ok" for o in http if o[0] > crash) > 0
    grpc = [o for o in outcomes if o[2].startswith("grpc")]
    grpc_lost = [o for o in grpc if o[2] != "grpc ok"]
    assert len(grpc_lost) <= 1 and all(s <= in_flight for s, _, _ in grpc_lost), grpc_lost
    assert sum(o[2] == "grpc ok" for o in grpc if o[0] > crash) > 0

    state = _status(run.config_path)
    triton, = [c for c in state["checks"] if c["component"] == "serve" and c["name"].startswith("tritonserver")]
    assert triton["ok"] and triton["name"] == "tritonserver running", triton
    assert "1 restarts" in triton["detail"] and "killed by SIGABRT (signal 6)" in triton["detail"], triton
    milvus, = [c for c in state["checks"] if c["component"] == "serve" and c["name"].startswith("milvus")]
    assert milvus["detail"].startswith("0 restarts"), milvus
    assert _triton_pid(run) != pid
    assert run.process.poll() is None  # recsys serve itself is still up


def test_bad_requests_are_4xx_over_http_and_invalid_argument_over_grpc(served):
    run, users = served
    for protocol, port in (("http", run.ports["http"]), ("grpc", run.ports["grpc"])):
        client = RecommenderClient(f"127.0.0.1:{port}", protocol)
        for call, message in (
                (lambda: client.recommend([]), "user_id is empty"),
                (lambda: client.recommend(list(range(1, 2000))), "at most"),
                (lambda: client.recommend(users[:1], filter="EXCLUDE garbage"), "filter:"),
                (lambda: client.recommend(users[:1], filter_values={"x": 1}), "filter_values given without"),
                (lambda: client.similar([], "similar_items"), "item_id is empty"),
                (lambda: client.similar([1], "similar_items", filter="INCLUDE ItemID IN ("), "filter:")):
            with pytest.raises(RecommendError) as raised:
                call()
            status = str(raised.value.status)
            assert status in ("400", "StatusCode.INVALID_ARGUMENT"), (protocol, message, status, raised.value)
            assert "bad request:" in str(raised.value) and message in str(raised.value), raised.value
        client.close()
