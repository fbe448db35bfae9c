"""A checking front for Triton's HTTP endpoint: ``python -m recsys.runtime.http_guard``.

``tritonserver`` 2.51 (the binary on PyPI) sizes an input's buffer from the ``shape`` a KServe
v2 JSON request declares before it reads ``data``: ``"shape": [1000000000000]`` in a 90-byte
request aborts the whole server (``std::bad_alloc``), and ``[2147483648]`` makes it allocate
16 GiB for 20 s. Upstream fixed this in releases not available here (README, Security). This
front owns the public HTTP port, forwards every request to Triton on a private loopback port
unchanged, and refuses with HTTP 400 an inference request whose declared shapes cannot be
backed by its body: more JSON elements than the body has bytes, a binary input smaller than
its shape, a malformed or ambiguous (duplicate key) JSON header. Bodies are capped in size
(413). gRPC needs no front (Triton's gRPC frontend checks sizes itself).

While Triton restarts (``recsys serve`` supervises it) a request that cannot be delivered is
held for up to ``--upstream-wait`` seconds and then sent, so callers see a slow answer, not
a lost one; a request that was delivered and lost its connection (it may be what crashed the
server) is never sent again: the caller gets 502.
"""
from __future__ import annotations

import argparse
import http.client
import json
import math
import re
import select
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

INFER_PATH = re.compile(r"^/v2/models/[^/?]+(/versions/[^/?]+)?/infer(\?.*)?$")
HEADER_LENGTH = "Inference-Header-Content-Length"
ELEMENT_BYTES = {"BOOL": 1, "UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "FP16": 2, "BF16": 2,
                 "UINT32": 4, "INT32": 4, "FP32": 4, "UINT64": 8, "INT64": 8, "FP64": 8}
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
              "upgrade", "content-length", "host"}


class Refused(ValueError):
    """The request is refused before it reaches Triton, with this HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def check_infer_request(body: bytes, header_length: int | None = None) -> None:
    """Raise :class:`Refused` (400) unless every input's ``shape`` of this KServe v2 inference
    request is a list of non-negative integers whose element count the request can back:
    JSON ``data`` has at least one byte per element; binary data (``binary_data_size``) holds
    the elements' bytes (4 per ``BYTES`` element at least); shared memory is left to Triton."""
    header = body if header_length is None else body[:header_length]
    if header_length is not None and not 0 <= header_length <= len(body):
        raise Refused(400, f"{HEADER_LENGTH} {header_length} is outside the body ({len(body)} bytes)")
    try:
        request = json.loads(header, object_pairs_hook=_unique_keys)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refused(400, f"the request's JSON is malformed: {exc}") from None
    inputs = request.get("inputs") if isinstance(request, dict) else None
    if not isinstance(inputs, list):
        raise Refused(400, "the request has no 'inputs' list")
    for position, tensor in enumerate(inputs):
        if not isinstance(tensor, dict):
            raise Refused(400, f"input {position} is not a JSON object")
        name = str(tensor.get("name", position))[:64]
        shape = tensor.get("shape")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise Refused(400, f"input '{name}': shape must be a list of non-negative integers, got "
                               f"{json.dumps(shape)[:80]}")
        elements = math.prod(shape)
        parameters = tensor.get("parameters") if isinstance(tensor.get("parameters"), dict) else {}
        if "shared_memory_region" in parameters:
            continue
        if "binary_data_size" in parameters:
            size = parameters["binary_data_size"]
            per_element = ELEMENT_BYTES.get(str(tensor.get("datatype")), 4)
            if type(size) is not int or not 0 <= size <= len(body) or elements * per_element > size:
                raise Refused(400, f"input '{name}': shape {shape} needs {elements * per_element} bytes "
                                   f"of binary data, the request declares {size}")
        elif elements > len(header):
            raise Refused(400, f"input '{name}': shape {shape} declares {elements} elements, more than "
                               f"the request's {len(header)} bytes can hold")


def _unique_keys(pairs):
    keys = [key for key, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError(f"duplicate key {next(k for k in keys if keys.count(k) > 1)!r}")
    return dict(pairs)


class GuardHandler(BaseHTTPRequestHandler):
    """One client connection; it keeps one connection to Triton of its own."""

    protocol_version = "HTTP/1.1"
    upstream: tuple[str, int] = ("127.0.0.1", 8000)
    max_body_bytes = 16 * 1024 * 1024
    upstream_wait_s = 30.0
    timeout_s = 60.0
    timeout = 300  # seconds an idle client connection is kept
    _connection: http.client.HTTPConnection | None = None

    def do_GET(self):  # noqa: N802 - the http.server naming
        self._forward()

    do_POST = do_PUT = do_DELETE = do_HEAD = do_GET  # noqa: N815

    def _forward(self) -> None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._refuse(Refused(411, "chunked request bodies are not accepted; send Content-Length"))
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return self._refuse(Refused(400, "Content-Length is not a number"))
        if not 0 <= length <= self.max_body_bytes:
            return self._refuse(Refused(413, f"the request body has {length} bytes; at most "
                                             f"{self.max_body_bytes} are accepted"))
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            return
        if self.command == "POST" and INFER_PATH.match(self.path):
            try:
                header_length = self.headers.get(HEADER_LENGTH)
                check_infer_request(body, int(header_length) if header_length is not None else None)
            except ValueError as exc:
                return self._refuse(exc if isinstance(exc, Refused) else Refused(400, f"{HEADER_LENGTH}: {exc}"))
        try:
            status, reason, headers, data = self._exchange(body)
        except _Undelivered as exc:
            return self._refuse(Refused(503, f"Triton is not reachable (restarting?): {exc}"))
        except (OSError, http.client.HTTPException) as exc:
            return self._refuse(Refused(502, f"Triton closed the connection during the request "
                                             f"({type(exc).__name__}); it is not retried"))
        self.send_response_only(status, reason)
        for key, value in headers:
            if key.lower() not in HOP_BY_HOP:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _exchange(self, body: bytes):
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        deadline = time.monotonic() + self.upstream_wait_s
        while True:
            try:
                connection = self._upstream_connection()
                connection.request(self.command, self.path, body=body, headers=headers)
            except OSError as exc:  # nothing was delivered: safe to send again
                self._drop_connection()
                if time.monotonic() >= deadline:
                    raise _Undelivered(str(exc)) from None
                time.sleep(0.2)
                continue
            try:
                response = connection.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException):
                self._drop_connection()
                raise
            if response.will_close:
                self._drop_connection()
            return response.status, response.reason, response.getheaders(), data

    def _upstream_connection(self) -> http.client.HTTPConnection:
        if self._connection is not None and self._connection.sock is not None and \
                select.select([self._connection.sock], [], [], 0)[0]:
            self._drop_connection()  # an idle connection Triton closed (it restarted): not reused
        if self._connection is None:
            self._connection = http.client.HTTPConnection(*self.upstream, timeout=self.timeout_s)
            self._connection.connect()  # raises OSError while Triton is down
            self._connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self._connection

    def _drop_connection(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _refuse(self, refusal: Refused) -> None:
        data = json.dumps({"error": str(refusal)}).encode()
        self.send_response_only(refusal.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if refusal.status in (411, 413):  # the body was not read: the connection cannot go on
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def finish(self) -> None:
        super().finish()
        self._drop_connection()

    def log_message(self, format, *args) -> None:  # noqa: A002 - http.server's signature
        pass  # one line per request would be Triton's access log; refusals are in the answers


class _Undelivered(OSError):
    """Triton could not be reached within the wait; nothing was sent."""


class GuardServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def server_bind(self):
        super().server_bind()
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recsys.runtime.http_guard", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", required=True, help="host:port to serve clients on")
    parser.add_argument("--upstream", required=True, help="host:port of Triton's HTTP endpoint")
    parser.add_argument("--max-body-bytes", type=int, default=GuardHandler.max_body_bytes)
    parser.add_argument("--upstream-wait", type=float, default=GuardHandler.upstream_wait_s,
                        help="seconds to hold a request while Triton cannot be reached")
    args = parser.parse_args(argv)
    host, port = args.listen.rsplit(":", 1)
    up_host, up_port = args.upstream.rsplit(":", 1)

    class Handler(GuardHandler):
        upstream = (up_host, int(up_port))
        max_body_bytes = args.max_body_bytes
        upstream_wait_s = args.upstream_wait

    server = GuardServer((host, int(port)), Handler)
    print(f"READY http guard on {args.listen} -> Triton {args.upstream}", flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
