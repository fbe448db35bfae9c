"""Start and stop the two real servers the project runs: Milvus (PyPI ``milvus``) and Triton
(the ``tritonserver`` binary shipped in PyPI ``nvidia-pytriton``, Python backend only).

Both are child processes in their own process group, bound to the configured host
(127.0.0.1 by default), and stopped by PID with SIGINT (then SIGKILL of the group).
"""
from __future__ import annotations

import filecmp
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from core.config import Config
from vector_index.client import quiet_pymilvus

MILVUS_DEFAULT_ROOT = "root:Milvus"  # what a new Milvus with authentication accepts
TRITON_ADMIN_HEADER = "recsys-admin-key"
TRITON_GRPC_ADMIN_HEADER = "triton-grpc-protocol-" + TRITON_ADMIN_HEADER  # Triton's gRPC prefix
# Everything but inference, metadata and health needs the admin key.
TRITON_RESTRICTED_APIS = "model-repository,model-config,shared-memory,statistics,trace,logging"


class ServerError(RuntimeError):
    """A server did not start or stopped unexpectedly."""


class StopRequest:
    """Set by SIGINT / SIGTERM, polled by a foreground loop. A plain attribute on purpose: a
    handler that takes a lock (``threading.Event.set`` does) deadlocks when the signal lands
    while the main thread holds that lock inside ``Event.wait``."""

    def __init__(self, signals=(signal.SIGINT, signal.SIGTERM)):
        self.requested = False
        for sig in signals:
            signal.signal(sig, self._handle)

    def _handle(self, *_) -> None:
        self.requested = True

    def sleep(self, seconds: float) -> bool:
        """Sleep (a signal cuts it short) and tell whether a stop was requested."""
        if not self.requested:
            time.sleep(seconds)
        return self.requested


_PORTS_GIVEN: set[int] = set()  # ports handed out by this process, possibly not bound yet
_LOWEST_PORT = 22_000  # above the fixed ports of the servers we run (Milvus' 2112x among them)


def free_port() -> int:
    """An unused TCP port on 127.0.0.1, below the kernel's ephemeral range when there is room:
    a port the kernel hands out (bind to 0) comes from that range, which outgoing connections
    also draw from, so one of them could take it before the server binds it (seen in CI:
    Milvus "set proxy_port=52849, but bind failed")."""
    import random

    low = _ephemeral_low()
    for _ in range(200):
        port = random.randint(_LOWEST_PORT, low - 1) if low - _LOWEST_PORT >= 1_000 else 0
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = sock.getsockname()[1]
        if port not in _PORTS_GIVEN:
            _PORTS_GIVEN.add(port)
            return port
    raise ServerError("no free TCP port found on 127.0.0.1")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _detach_but_die_with_parent() -> None:
    """In the child: own process group (a terminal's Ctrl-C reaches only us, and we stop the
    servers in order), and SIGTERM when the parent dies, so a killed ``recsys`` leaves no
    server behind (Linux; elsewhere only the process group)."""
    os.setsid()
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


class ManagedProcess:
    """A child process in its own process group, with its output in a log file."""

    def __init__(self, name: str, command: list[str], log_path: Path, env: dict | None = None):
        self.name = name
        self.command = command
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen | None = None

    startup_timeout_s: float = 120.0

    def start(self) -> None:
        """Spawn the process and wait until it is ready (:class:`ServerError` if it exits or
        is not ready in ``startup_timeout_s``)."""
        self.spawn()
        _wait_until(self.ready, self.startup_timeout_s, self)

    def spawn(self, append_log: bool = False) -> None:
        """Start the process without waiting; ``append_log`` keeps the previous run's log
        (a restart after a crash must not erase the crash's last lines)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab" if append_log else "wb")
        if append_log:
            log.write(f"\n==== restarted at {time.strftime('%Y-%m-%d %H:%M:%S')} ====\n".encode())
            log.flush()
        self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=self.env,
                                        preexec_fn=_detach_but_die_with_parent)
        log.close()

    def ready(self) -> bool:
        """Whether the server answers (each server says what that means)."""
        return self.alive()

    def exit_status(self) -> int | None:
        """The exit status of a process that has ended (negative: killed by that signal)."""
        return None if self.process is None else self.process.poll()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGINT, wait, then SIGKILL the whole process group."""
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGINT)
                self.process.wait(timeout=timeout_s)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=timeout_s)
        self.process = None

    def reap(self) -> None:
        """After the process exited: kill what is left of its process group and forget it."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)
        self.process = None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _wait_until(check, timeout_s: float, proc: ManagedProcess) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise ServerError(f"{proc.name} exited during start-up; log {proc.log_path}:\n{proc.tail()}")
        if check():
            return
        time.sleep(0.25)
    raise ServerError(f"{proc.name} not ready after {timeout_s:.0f}s; log {proc.log_path}:\n{proc.tail()}")


class MilvusProcess(ManagedProcess):
    """The embedded Milvus standalone server, listening on ``config.milvus.host:port``."""

    def __init__(self, config: Config):
        cfg = config.milvus
        self.host, self.port = cfg.host, cfg.port
        data_dir = config.milvus_data_dir
        command = [sys.executable, "-m", "recsys.runtime.milvus_launcher", "--data", str(data_dir),
                   "--port", str(cfg.port), "--host", cfg.host]
        command += ["--private-network"] if cfg.private_network else []
        command += ["--auth"] if cfg.auth else []
        self.token = cfg.token if cfg.auth else ""
        super().__init__("milvus", command, data_dir / "launcher.log")

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    def ready(self) -> bool:
        return "READY" in self.tail(5) and self.serving()

    def serving(self) -> bool:
        """True once a client can connect and list collections (health alone is not enough).
        With authentication, the first successful start replaces the default root password
        with the configured one."""
        if self._answers(self.token):
            return True
        if self.token and self._answers(MILVUS_DEFAULT_ROOT):
            from pymilvus import MilvusClient

            client = MilvusClient(uri=self.uri, token=MILVUS_DEFAULT_ROOT, timeout=5)
            client.update_password("root", MILVUS_DEFAULT_ROOT.split(":", 1)[1],
                                   self.token.split(":", 1)[1])
            client.close()
            return self._answers(self.token)
        return False

    def _answers(self, token: str) -> bool:
        from pymilvus import MilvusClient

        try:
            with quiet_pymilvus():
                client = MilvusClient(uri=self.uri, token=token, timeout=2)
                client.list_collections()
                client.close()
            return True
        except Exception:
            return False


def _site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def prepare_triton_backends(target: Path) -> Path:
    """Assemble a backend directory from nvidia-pytriton's Python backend and the stub built
    for this interpreter's Python version."""
    triton_root = _site_packages() / "pytriton" / "tritonserver"
    if not (triton_root / "bin" / "tritonserver").is_file():
        raise ServerError(f"tritonserver binary not found under {triton_root}; run `make setup`")
    python_backend = target / "python"
    python_backend.mkdir(parents=True, exist_ok=True)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for source in (triton_root / "backends" / "python" / "libtriton_python.so",
                   triton_root / "backends" / "python" / "triton_python_backend_utils.py",
                   triton_root / "python_backend_stubs" / version / "triton_python_backend_stub"):
        copy = python_backend / source.name
        if copy.is_file() and copy.stat().st_size == source.stat().st_size and filecmp.cmp(source, copy, shallow=False):
            continue  # in place already (and maybe running: a busy stub cannot be overwritten)
        shutil.copy2(source, copy)
    return target


class TritonProcess(ManagedProcess):
    """``tritonserver`` serving ``model_repository`` over HTTP, gRPC and metrics ports."""

    def __init__(self, config: Config, model_repository: Path | None = None):
        cfg = config.triton
        self.host, self.http_port, self.grpc_port, self.metrics_port = (
            cfg.host, cfg.http_port, cfg.grpc_port, cfg.metrics_port)
        # With the HTTP guard, Triton's own HTTP endpoint is private (loopback, a free port) and
        # the guard serves http_port; it is started and stopped with Triton but supervised on
        # its own (it keeps holding requests while Triton restarts).
        http_host, self.upstream_http_port = (("127.0.0.1", free_port()) if cfg.http_guard
                                              else (cfg.host, cfg.http_port))
        self.front = (HttpGuardProcess(cfg, f"127.0.0.1:{self.upstream_http_port}",
                                       config.workdir / "triton" / "http-guard.log")
                      if cfg.http_guard else None)
        self.startup_timeout_s = cfg.startup_timeout_s
        self.model_name = config.serving.model_name
        triton_root = _site_packages() / "pytriton" / "tritonserver"
        backends = prepare_triton_backends(config.workdir / "triton" / "backends")
        repository = model_repository or config.model_repository
        self.admin_key = admin_key(config)
        command = [
            str(triton_root / "bin" / "tritonserver"),
            f"--model-repository={repository}",
            f"--backend-directory={backends}",
            f"--cache-directory={triton_root / 'caches'}",
            f"--http-address={http_host}", f"--http-port={self.upstream_http_port}",
            f"--grpc-address={cfg.host}", f"--grpc-port={cfg.grpc_port}",
            f"--metrics-address={cfg.host}", f"--metrics-port={cfg.metrics_port}",
            f"--http-restricted-api={TRITON_RESTRICTED_APIS}:{TRITON_ADMIN_HEADER}={self.admin_key}",
            f"--grpc-restricted-protocol={TRITON_RESTRICTED_APIS}:{TRITON_ADMIN_HEADER}={self.admin_key}",
            "--allow-gpu-metrics=false",
            # explicit: every model at start, then new versions (releases) on request, without restart
            "--model-control-mode=explicit", "--load-model=*",
            "--exit-on-error=true",
            "--exit-timeout-secs=5",
            "--log-verbose=0",
        ]
        env = triton_environment()
        if config.milvus.token:
            env["RECSYS_MILVUS_TOKEN"] = config.milvus.token
        super().__init__("tritonserver", command, config.workdir / "triton" / "tritonserver.log",
                         env=env)

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def start(self) -> None:
        """The HTTP guard (if not running), then Triton, until the model is ready."""
        if self.front is not None and not self.front.alive():
            self.front.start()
        super().start()

    def stop(self, timeout_s: float = 30.0) -> None:
        super().stop(timeout_s)
        if self.front is not None:
            self.front.stop(timeout_s)

    def ready(self) -> bool:
        url = f"http://127.0.0.1:{self.upstream_http_port}/v2/models/{self.model_name}/ready" \
            if self.front is not None else f"http://{self.http_url}/v2/models/{self.model_name}/ready"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False



class HttpGuardProcess(ManagedProcess):
    """The checking front of Triton's HTTP endpoint (:mod:`recsys.runtime.http_guard`) on
    ``triton.host:http_port``, forwarding to ``upstream``."""

    startup_timeout_s = 30.0

    def __init__(self, cfg, upstream: str, log_path: Path):
        self.listen = f"{cfg.host}:{cfg.http_port}"
        command = [sys.executable, "-m", "recsys.runtime.http_guard", "--listen", self.listen,
                   "--upstream", upstream, "--max-body-bytes", str(cfg.max_request_bytes),
                   "--upstream-wait", str(cfg.http_guard_wait_s)]
        super().__init__("http-guard", command, log_path)

    def ready(self) -> bool:
        if "READY" not in self.tail(3):
            return False
        host, port = self.listen.rsplit(":", 1)
        try:
            with socket.create_connection((host, int(port)), timeout=1):
                return True
        except OSError:
            return False


def admin_key(config: Config) -> str:
    """The key of Triton's administrative APIs: configured, or made at random and written to
    ``<workdir>/triton/admin-key`` (readable by the owner only)."""
    cfg = config.triton
    if cfg.admin_key:
        return cfg.admin_key
    if cfg.admin_key_file:
        return Path(cfg.admin_key_file).read_text().strip()
    import secrets

    path = config.workdir / "triton" / "admin-key"
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key


def running_admin_key(config: Config) -> str:
    """The key the running Triton was started with (configured, or the one its start wrote)."""
    cfg = config.triton
    if cfg.admin_key:
        return cfg.admin_key
    path = Path(cfg.admin_key_file) if cfg.admin_key_file else config.workdir / "triton" / "admin-key"
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise RuntimeError(f"no Triton admin key in {path} ({exc.strerror}): is `recsys serve` running "
                           f"with this work directory?") from None


def triton_environment() -> dict[str, str]:
    """Environment for tritonserver: its bundled libraries and this interpreter's libpython
    on ``LD_LIBRARY_PATH``, and this venv's ``bin`` first on ``PATH`` (the Python backend stub
    finds the project's packages through the ``python3`` it finds there)."""
    env = dict(os.environ)
    libs = [sysconfig.get_config_var("LIBDIR"), str(_site_packages() / "nvidia_pytriton.libs")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs + [env.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


@contextmanager
def running(*servers: ManagedProcess):
    """Start servers in order, yield, and stop them in reverse order whatever happens."""
    started: list[ManagedProcess] = []
    try:
        for server in servers:
            server.start()
            started.append(server)
        yield servers
    finally:
        for server in reversed(started):
            server.stop()
        for server in servers:
            if server not in started:
                server.stop()
