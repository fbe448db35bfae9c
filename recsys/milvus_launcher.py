"""Run the embedded Milvus standalone server (PyPI ``milvus``) in the foreground.

``python -m recsys.milvus_launcher --data DIR --port 19530`` starts it on 127.0.0.1, prints
``READY <port>`` once its health check passes, and stops it (and its ``milvus`` child) on
SIGINT/SIGTERM. Unlike ``milvus-server``, only the client port is fixed; the internal ports
are picked free, so several instances (demo, tests) can run side by side.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading

_COMPONENTS = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True, help="data directory of this server")
    parser.add_argument("--port", type=int, default=19530, help="client (proxy) port")
    parser.add_argument("--host", default="127.0.0.1", help="address its components advertise")
    args = parser.parse_args(argv)

    from milvus import MilvusServer

    server = MilvusServer(wait_for_started=True)
    server.set_base_dir(args.data)
    server.config.set("proxy_port", args.port)
    for component in _COMPONENTS:
        server.config.set(f"{component}.ip", args.host)
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
    server.stop()
    return 0 if code in (None, 0) else 1


if __name__ == "__main__":
    sys.exit(main())
