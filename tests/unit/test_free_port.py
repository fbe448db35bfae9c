"""Ports for the servers we start: free, distinct, and outside the kernel's ephemeral range
(which outgoing connections draw from, so one could take the port before the server binds)."""
from __future__ import annotations

import socket

from recsys.runtime.servers import _ephemeral_low, free_port


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range():
    ports = [free_port() for _ in range(64)]
    assert len(set(ports)) == len(ports)
    assert all(port < _ephemeral_low() for port in ports)
    for port in ports[:8]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
