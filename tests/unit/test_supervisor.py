"""The supervisor of ``recsys serve``: restarts with backoff, bounded, recorded for status."""
from __future__ import annotations

import json
import os
import signal
import sys

import pytest

from core.config import SupervisorConfig, load_config
from recsys.runtime.servers import ManagedProcess, ServerError
from recsys.runtime.supervisor import Supervisor, describe_exit, read_state, state_path
from recsys.status import supervisor_checks


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _server(tmp_path, name="tritonserver", seconds=60):
    server = ManagedProcess(name, [sys.executable, "-c", f"import time; time.sleep({seconds})"],
                            tmp_path / f"{name}.log")
    server.spawn()
    return server


def _crash(server, sig=signal.SIGABRT):
    os.kill(server.pid, sig)
    server.process.wait(timeout=10)


def test_describe_exit():
    assert describe_exit(-6) == "killed by SIGABRT (signal 6)"
    assert describe_exit(1) == "exit status 1"
    assert describe_exit(None) == "still running"


def test_a_crashed_server_is_restarted_and_the_other_is_left_alone(tmp_path):
    clock, lines = Clock(), []
    triton, milvus = _server(tmp_path), _server(tmp_path, "milvus")
    milvus_pid = milvus.pid
    supervisor = Supervisor([milvus, triton], SupervisorConfig(backoff_s=2, max_restarts=3, window_s=100),
                            tmp_path / "state.json", clock=clock, log=lines.append)
    try:
        first_pid = triton.pid
        _crash(triton)
        supervisor.check()
        assert "killed by SIGABRT (signal 6); restarting in 0s" in lines[-1]  # the first: at once
        assert not triton.alive()
        supervisor.check()
        assert triton.alive() and triton.pid != first_pid
        assert milvus.pid == milvus_pid and milvus.alive()
        clock.now = 3.5
        supervisor.check()
        assert lines[-1] == "tritonserver: ready again, 3.5s after it exited"
        record = json.loads((tmp_path / "state.json").read_text())["servers"]["tritonserver"]
        assert record["restarts"] == 1 and record["state"] == "running" and record["last_recovery_s"] == 3.5
        assert record["exits"][0]["status"] == -6
        assert "restarted at" in (tmp_path / "tritonserver.log").read_text()  # log kept, appended
        _crash(triton)  # the second exit within the window waits its backoff
        supervisor.check()
        assert "restarting in 2s" in lines[-1]
        clock.now = 5.4
        supervisor.check()
        assert not triton.alive()
        clock.now = 5.5
        supervisor.check()
        assert triton.alive()
    finally:
        triton.stop(5)
        milvus.stop(5)


def test_backoff_doubles_and_the_supervisor_gives_up_past_the_limit(tmp_path):
    clock, lines = Clock(), []
    triton = _server(tmp_path)
    supervisor = Supervisor([triton], SupervisorConfig(backoff_s=1, max_backoff_s=3, max_restarts=3, window_s=100),
                            tmp_path / "state.json", clock=clock, log=lines.append)
    delays = []
    try:
        for _ in range(3):
            _crash(triton, signal.SIGKILL)
            supervisor.check()
            delays.append(lines[-1].split("restarting in ")[1].split("s")[0])
            clock.now += 10
            supervisor.check()
            assert triton.alive()
        assert delays == ["0", "1", "2"]
        _crash(triton, signal.SIGKILL)
        with pytest.raises(ServerError, match="exited 4 times within 100s .*SIGKILL.*giving up"):
            supervisor.check()
        state = json.loads((tmp_path / "state.json").read_text())
        assert state["servers"]["tritonserver"]["state"] == "gave up"
    finally:
        triton.stop(5)


def test_exits_older_than_the_window_do_not_count(tmp_path):
    clock = Clock()
    triton = _server(tmp_path)
    supervisor = Supervisor([triton], SupervisorConfig(backoff_s=1, max_restarts=1, window_s=50),
                            tmp_path / "state.json", clock=clock, log=lambda _: None)
    try:
        for _ in range(3):
            _crash(triton, signal.SIGKILL)
            supervisor.check()
            clock.now += 60
            supervisor.check()
            assert triton.alive()
    finally:
        triton.stop(5)


def test_status_reports_restarts_of_a_running_serve_and_ignores_a_stale_file(tmp_path):
    config = load_config(base={}, overrides={"workdir": str(tmp_path / "work")}, environ={})
    triton = _server(tmp_path)
    clock = Clock()
    supervisor = Supervisor([triton], SupervisorConfig(backoff_s=1), state_path(config), clock=clock,
                            log=lambda _: None)
    try:
        assert [c.ok for c in supervisor_checks(config)] == [True]
        _crash(triton)
        supervisor.check()
        check, = supervisor_checks(config)
        assert not check.ok and check.name == "tritonserver restarting"
        assert "killed by SIGABRT" in check.detail
        supervisor.check()
        clock.now = 5
        supervisor.check()
        check, = supervisor_checks(config)
        assert check.ok and check.detail.startswith("1 restarts, last exit")
    finally:
        triton.stop(5)
    stale = json.loads(state_path(config).read_text())
    stale["supervisor_pid"] = 2 ** 22 + 12345  # no such process
    state_path(config).write_text(json.dumps(stale))
    assert read_state(state_path(config)) is None and supervisor_checks(config) == []
