"""Run the embedded Milvus standalone server (PyPI ``milvus``) in the foreground.

``python -m recsys.runtime.milvus_launcher --data DIR --port 19530`` starts it, prints ``READY <port>``
once its health check passes, and stops it (and its ``milvus`` child) on SIGINT/SIGTERM.
Unlike ``milvus-server``, only the client port is fixed; the internal ports are picked free, so
several instances (demo, tests) can run side by side.

With ``--private-network`` (what the project uses by default) Milvus runs in a network
namespace of its own (:mod:`recsys.runtime.netns`): every port it opens exists only there, and the one
client port is forwarded from ``--host:--port`` of the machine. Without it, Milvus 2.3 listens
on every interface.
"""
from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
from pathlib import Path

from recsys.runtime.netns import Bridge, IsolationError, enter_private_network
from recsys.runtime.servers import StopRequest, free_port

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
    parser.add_argument("--host", default="127.0.0.1", help="address clients connect to")
    parser.add_argument("--private-network", action="store_true",
                        help="run Milvus in its own network namespace, reachable only at --host:--port")
    parser.add_argument("--auth", action="store_true",
                        help="enable Milvus authentication (user:password tokens)")
    args = parser.parse_args(argv)

    bridge = None
    if args.private_network:
        # Bound before the move: this socket stays in the machine's namespace.
        listener = socket.create_server((args.host, args.port))
        try:
            enter_private_network()
        except IsolationError as exc:
            print(f"milvus failed to start: {exc}", file=sys.stderr, flush=True)
            return 1
        bridge = Bridge(listener, args.port)
        advertise = "127.0.0.1"
    else:
        advertise = args.host

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
        server.config.set(f"{component}.ip", advertise)
    if args.auth:
        server.config.set("authorization_enabled", True)
    server.config.set("common.session.ttl", SESSION_TTL_S)
    _pin_embedded_etcd(server, etcd_config)
    stop = StopRequest()
    try:
        server.start()
    except (TimeoutError, RuntimeError) as exc:
        print(f"milvus failed to start: {exc}", file=sys.stderr, flush=True)
        server.stop()
        return 1
    if bridge is not None:
        bridge.start()
    print(f"READY {args.port}", flush=True)
    while server.server_proc.poll() is None and not stop.sleep(0.2):
        pass
    code = server.server_proc.poll()
    if code is None:
        # A graceful stop releases Milvus' etcd sessions; otherwise the next start waits
        # for them to expire.
        server.server_proc.send_signal(signal.SIGINT)
        try:
            server.server_proc.wait(timeout=GRACEFUL_STOP_S)
        except subprocess.TimeoutExpired:
            pass
    if bridge is not None:
        bridge.stop()
    server.stop()
    return 0 if code in (None, 0) else 1


if __name__ == "__main__":
    sys.exit(main())
