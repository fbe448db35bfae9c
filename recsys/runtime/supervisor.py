"""Keep the servers of ``recsys serve`` running: a server that exits is started again.

A single malformed HTTP request can abort ``tritonserver`` 2.51 (README, Security); the
supervisor restarts it with a backoff, leaves the other servers running, logs every exit with
its status, and records what happened in a state file that ``recsys status`` reads. Past
``max_restarts`` exits within ``window_s`` it gives up (:class:`~recsys.runtime.servers.ServerError`),
so that a restart loop ends in an outer supervisor (systemd, Kubernetes), not in silence.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from core.config import Config, SupervisorConfig
from recsys.runtime.servers import ManagedProcess, ServerError

KEPT_EXITS = 20  # exits remembered per server in the state file


def describe_exit(status: int | None) -> str:
    """``exit status 1`` / ``killed by SIGABRT (signal 6)`` for a process' return code."""
    if status is None:
        return "still running"
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = "an unknown signal"
        return f"killed by {name} (signal {-status})"
    return f"exit status {status}"


@dataclass
class ServerRecord:
    """What the supervisor knows of one server; written to the state file as is."""

    name: str
    pid: int | None = None
    state: str = "running"  # running | restarting | starting | gave up
    restarts: int = 0
    last_recovery_s: float | None = None  # exit -> ready again, of the last restart
    exits: list[dict] = field(default_factory=list)  # newest last: at, status, description

    # Not written: monotonic times of this process.
    recent: list[float] = field(default_factory=list, repr=False)
    restart_at: float | None = field(default=None, repr=False)
    exited_at: float | None = field(default=None, repr=False)


class Supervisor:
    """Watch ``servers`` (started already); call :meth:`check` periodically."""

    def __init__(self, servers: list[ManagedProcess], settings: SupervisorConfig, state_path: Path,
                 clock=time.monotonic, log=None):
        self.servers = list(servers)
        self.settings = settings
        self.state_path = Path(state_path)
        self.clock = clock
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        self.records = {s.name: ServerRecord(s.name, pid=s.pid) for s in self.servers}
        self._write()

    def check(self) -> None:
        """Restart what exited, when its backoff is over; note servers that are ready again.
        Raises :class:`ServerError` when a server exited too often to go on."""
        changed = False
        for server in self.servers:
            changed |= self._check(server, self.records[server.name])
        if changed:
            self._write()

    def _check(self, server: ManagedProcess, record: ServerRecord) -> bool:
        now = self.clock()
        if record.restart_at is not None:
            if now < record.restart_at:
                return False
            record.restart_at = None
            server.spawn(append_log=True)
            record.pid, record.state, record.restarts = server.pid, "starting", record.restarts + 1
            self.log(f"{server.name}: restart {record.restarts} (pid {record.pid})")
            return True
        if not server.alive():
            return self._exited(server, record, now)
        if record.state == "starting" and server.ready():
            record.state = "running"
            record.last_recovery_s = round(now - record.exited_at, 1)
            self.log(f"{server.name}: ready again, {record.last_recovery_s:.1f}s after it exited")
            return True
        return False

    def _exited(self, server: ManagedProcess, record: ServerRecord, now: float) -> bool:
        status = server.exit_status()
        description = describe_exit(status)
        record.exits = (record.exits + [{"at": _utc_now(), "status": status,
                                         "description": description}])[-KEPT_EXITS:]
        record.recent = [t for t in record.recent if now - t <= self.settings.window_s] + [now]
        record.exited_at, record.pid = now, None
        server.reap()  # and anything left in its process group
        if len(record.recent) > self.settings.max_restarts:
            record.state = "gave up"
            self._write()
            raise ServerError(f"{server.name} exited {len(record.recent)} times within "
                              f"{self.settings.window_s:.0f}s (last: {description}); giving up. "
                              f"Log: {server.log_path}")
        exits = len(record.recent)  # the first exit in a while restarts at once
        delay = 0.0 if exits == 1 else min(self.settings.backoff_s * 2 ** (exits - 2), self.settings.max_backoff_s)
        record.restart_at, record.state = now + delay, "restarting"
        self.log(f"{server.name}: {description}; restarting in {delay:.0f}s "
                 f"({len(record.recent)} exits in the last {self.settings.window_s:.0f}s; log {server.log_path})")
        return True

    def _write(self) -> None:
        """The state file, replaced atomically (``recsys status`` may read it at any time)."""
        state = {"supervisor_pid": os.getpid(), "updated": _utc_now(),
                 "servers": {name: {k: v for k, v in asdict(r).items()
                                    if k not in ("recent", "restart_at", "exited_at")}
                             for name, r in self.records.items()}}
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.state_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(state, indent=2))
        os.replace(temporary, self.state_path)


def state_path(config: Config) -> Path:
    """Where ``recsys serve`` records its servers' restarts (read by ``recsys status``)."""
    return config.workdir / "triton" / "supervisor.json"


def read_state(path: Path) -> dict | None:
    """The state a running ``recsys serve`` wrote, ``None`` if there is none or its process is
    gone (a stale file of an earlier run)."""
    try:
        state = json.loads(Path(path).read_text())
        os.kill(int(state["supervisor_pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return state


def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
