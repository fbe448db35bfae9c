"""`recsys serve`: starts Milvus and Triton, answers, and stops both on SIGTERM / Ctrl-C."""
from __future__ import annotations

import re
import signal
import time

import pandas as pd
import pytest

from core.artifacts import Artifacts
from recsys.client import RecommenderClient
from support import alive

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_serve_runs_in_foreground_and_stops_cleanly(serving_stack, serve_command, tmp_path, stop_signal):
    trained_config = serving_stack[0]  # Feast applied and materialized
    artifacts = Artifacts.of(trained_config)
    with serve_command(trained_config, tmp_path, "serve_test") as served:
        process, ports, output = served.process, served.ports, served.output
        assert "Ctrl-C to stop" in output, output
        assert f"127.0.0.1:{ports['http']}" in output and f"127.0.0.1:{ports['grpc']}" in output
        pids = [int(p) for p in re.findall(r"pid (\d+)", output)]
        assert len(pids) == 3, output  # Milvus, Triton, the HTTP guard

        users = pd.read_parquet(artifacts.users)["user_id"].to_numpy()[:2]
        client = RecommenderClient(f"127.0.0.1:{ports['grpc']}", "grpc")
        assert client.recommend(users)["item_ids"].shape[0] == 2
        client.close()

        process.send_signal(stop_signal)
        rest, _ = process.communicate(timeout=120)
        if stop_signal == signal.SIGKILL:  # no clean-up code ran: the servers must follow anyway
            deadline = time.monotonic() + 60
            while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
                time.sleep(0.5)
        else:
            assert process.returncode == 0, rest
            assert "stopped Milvus and Triton" in rest
        for pid in pids:
            assert not alive(pid), f"process {pid} left behind"
