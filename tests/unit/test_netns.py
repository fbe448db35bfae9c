"""The private network namespace and the bridge into it, with a tiny echo server."""
from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

from recsys.runtime.servers import free_port

CHILD = textwrap.dedent("""
    import socket, sys, threading
    from recsys.runtime.netns import Bridge, enter_private_network

    outer_port, inner_port = int(sys.argv[1]), int(sys.argv[2])
    listener = socket.create_server(("127.0.0.1", outer_port))
    enter_private_network()
    echo = socket.create_server(("0.0.0.0", inner_port))  # every interface, as Milvus does

    def serve():
        while True:
            conn, _ = echo.accept()
            def loop(conn=conn):
                while data := conn.recv(65536):
                    conn.sendall(data)
                conn.close()
            threading.Thread(target=loop, daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    Bridge(listener, inner_port).start()
    print("READY", flush=True)
    sys.stdin.read()
""")


def test_bridge_reaches_a_server_that_the_machine_cannot_see():
    outer, inner = free_port(), free_port()
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(outer), str(inner)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "READY", child.stderr.read()
        payload = bytes(range(256)) * 2000  # larger than one buffer
        for _ in range(2):  # two connections, one after the other
            with socket.create_connection(("127.0.0.1", outer), timeout=5) as conn:
                conn.sendall(payload)
                received = b""
                while len(received) < len(payload):
                    received += conn.recv(65536)
                assert received == payload
        # The server listens on every interface, but only inside its namespace.
        try:
            socket.create_connection(("127.0.0.1", inner), timeout=2).close()
            reachable = True
        except OSError:
            reachable = False
        assert not reachable
    finally:
        child.stdin.close()
        child.wait(timeout=10)
