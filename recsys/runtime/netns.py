"""Keep a server that listens on every interface off the machine's network.

Milvus 2.3 binds all its ports (client, metrics, etcd, one per component) on every interface,
whatever its configuration says. :func:`enter_private_network` moves the calling process into a
new network namespace that has only a loopback interface, so those ports exist only there;
:class:`Bridge` then forwards one listening socket, created *before* the move and therefore
still in the machine's namespace on 127.0.0.1, to the server's client port inside.

Linux only; needs root (CAP_SYS_ADMIN) or unprivileged user namespaces.
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import threading

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


class IsolationError(OSError):
    """The process could not be moved into a private network namespace."""


def _unshare(flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(flags) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def _map_current_user(uid: int, gid: int) -> None:
    """Inside a new user namespace: be ``uid``/``gid`` outside, root inside."""
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"0 {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"0 {gid} 1")


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | _IFF_UP))


def enter_private_network() -> None:
    """Move this process (call it before starting threads) into a new network namespace with
    only ``lo``, up. Children started afterwards are in it too."""
    uid, gid = os.getuid(), os.getgid()
    try:
        _unshare(CLONE_NEWNET)
    except OSError as privileged:
        try:
            _unshare(CLONE_NEWUSER | CLONE_NEWNET)
            _map_current_user(uid, gid)
        except OSError as unprivileged:
            raise IsolationError(
                f"cannot create a private network namespace ({privileged.strerror}; with a user "
                f"namespace: {unprivileged.strerror}). Run as root, enable unprivileged user "
                f"namespaces, or set milvus.private_network = false to let Milvus listen on "
                f"every interface") from unprivileged
    _loopback_up()


class Bridge:
    """Accept connections on ``listener`` (a socket of the outer namespace) and forward each to
    ``127.0.0.1:port`` of the namespace this process is in."""

    def __init__(self, listener: socket.socket, port: int, buffer_size: int = 1 << 16):
        self.listener = listener
        self.port = port
        self.buffer_size = buffer_size
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="bridge", daemon=True)

    def start(self) -> "Bridge":
        self.listener.settimeout(0.2)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.listener.close()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                outer, _ = self.listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            try:
                inner = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            except OSError:
                outer.close()
                continue
            for sock in (outer, inner):
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for source, target in ((outer, inner), (inner, outer)):
                threading.Thread(target=self._pipe, args=(source, target), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(self.buffer_size):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
