"""Run the embedded Milvus standalone server (PyPI ``milvus``) in the foreground.

``python -m recsys.milvus_launcher --data DIR --port 19530`` starts it on 127.0.0.1, prints
``READY <port>`` once its health check passes, and stops it (and its ``milvus`` child) on
SIGINT/SIGTERM. Unlike ``milvus-server``, only the client port is fixed; the internal ports
are picked free, so several instances (demo, tests) can run side by side.
"""
from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from recsys.servers import free_port

GRACEFUL_STOP_S = 10.0
# A stopped (or killed) server's etcd sessions must expire before the next start completes.
SESSION_TTL_S = 10
_COMPONENTS = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode")


def _pin_embedded_etcd(server, config: Path) -> None:
    """Give the embedded etcd its own client and peer ports on 127.0.0.1 (its peer port is
    otherwise always 2380, so a second Milvus on the machine cannot start)."""
    client, peer = free_port(), free_port()
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(
        f"name: default\n"
        f"listen-client-urls: http://127.0.0.1:{client}\n"
        f"advertise-client-urls: http://127.0.0.1:{client}\n"
        f"listen-peer-urls: http://127.0.0.1:{peer}\n"
        f"initial-advertise-peer-urls: http://127.0.0.1:{peer}\n"
        f"initial-cluster: default=http://127.0.0.1:{peer}\n")
    server.config.update(etcd_port=client)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True, help="data directory of this server")
    parser.add_argument("--port", type=int, default=19530, help="client (proxy) port")
    parser.add_argument("--host", default="127.0.0.1", help="address its components advertise")
    args = parser.parse_args(argv)

    from milvus import MilvusServer, MilvusServerConfig

    etcd_config = Path(args.data).resolve() / "embedded-etcd.yaml"

    class _Config(MilvusServerConfig):
        def load_template(self):
            super().load_template()
            # The template has no key for the embedded etcd's own config file; add it.
            anchor = "  data:\n    dir: {{ etcd_data_dir }}\n"
            assert anchor in self.template_text, "unexpected milvus config template"
            self.template_text = self.template_text.replace(
                anchor, anchor + f"  config:\n    path: {etcd_config}\n", 1)

        def try_bind_port(self, port):
            # The package probes ports without SO_REUSEADDR, so a port in TIME_WAIT after a
            # restart looks taken; Milvus itself (Go) binds it fine.
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
                sock.listen()
                return sock
            except OSError:
                sock.close()
                return None

    server = MilvusServer(config=_Config(), wait_for_started=True)
    server.set_base_dir(args.data)
    server.config.update(proxy_port=args.port)  # pinned: fail rather than drift to another port
    for component in _COMPONENTS:
        server.config.set(f"{component}.ip", args.host)
    server.config.set("common.session.ttl", SESSION_TTL_S)
    _pin_embedded_etcd(server, etcd_config)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        server.start()
    except (TimeoutError, RuntimeError) as exc:
        print(f"milvus failed to start: {exc}", file=sys.stderr, flush=True)
        server.stop()
        return 1
    print(f"READY {args.port}", flush=True)
    while not stop.is_set() and server.server_proc.poll() is None:
        stop.wait(0.2)
    code = server.server_proc.poll()
    if code is None:
        # A graceful stop releases Milvus' etcd sessions; otherwise the next start waits
        # for them to expire.
        server.server_proc.send_signal(signal.SIGINT)
        try:
            server.server_proc.wait(timeout=GRACEFUL_STOP_S)
        except subprocess.TimeoutExpired:
            pass
    server.stop()
    return 0 if code in (None, 0) else 1


if __name__ == "__main__":
    sys.exit(main())
