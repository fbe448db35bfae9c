"""The HTTP guard in front of Triton: what it refuses, and that it forwards the rest unchanged."""
from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from recsys.runtime.http_guard import GuardHandler, GuardServer, Refused, check_infer_request
from recsys.runtime.servers import free_port


def _body(shape, data=(1,), **extra):
    return json.dumps({"inputs": [{"name": "user_id", "datatype": "INT64", "shape": shape,
                                   "data": list(data), **extra}]}).encode()


@pytest.mark.parametrize("shape", [[10 ** 12], [2 ** 31], [2 ** 40], [2 ** 32, 2 ** 32],
                                   [3037000500, 3037000500], [2 ** 64 + 1]])
def test_shapes_the_body_cannot_back_are_refused(shape):
    with pytest.raises(Refused, match="declares .* elements, more than the request's"):
        check_infer_request(_body(shape))


@pytest.mark.parametrize("shape, message", [([-1], "non-negative"), ([1.5], "non-negative"), ("3", "list"),
                                            ([True], "non-negative"), (None, "list")])
def test_shapes_that_are_not_lists_of_counts_are_refused(shape, message):
    with pytest.raises(Refused, match=message):
        check_infer_request(_body(shape))


def test_requests_that_fit_pass():
    check_infer_request(_body([3], [1, 2, 3]))
    check_infer_request(_body([0], []))
    check_infer_request(_body([2, 2], [[1, 2], [3, 4]]))


def test_binary_inputs_must_declare_the_bytes_of_their_shape():
    header = json.dumps({"inputs": [{"name": "user_id", "datatype": "INT64", "shape": [2],
                                     "parameters": {"binary_data_size": 16}}]}).encode()
    check_infer_request(header + b"\0" * 16, len(header))
    huge = header.replace(b"[2]", b"[4294967296]")
    with pytest.raises(Refused, match="needs 34359738368 bytes of binary data, the request declares 16"):
        check_infer_request(huge + b"\0" * 16, len(huge))
    with pytest.raises(Refused, match="outside the body"):
        check_infer_request(header, len(header) + 1)


def test_malformed_and_ambiguous_json_is_refused():
    with pytest.raises(Refused, match="malformed"):
        check_infer_request(b"{not json")
    with pytest.raises(Refused, match="duplicate key 'shape'"):  # rapidjson reads the first one
        check_infer_request(b'{"inputs":[{"name":"u","shape":[1000000000000],"shape":[1],"data":[1]}]}')
    with pytest.raises(Refused, match="no 'inputs' list"):
        check_infer_request(b'{"outputs": []}')


class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Upstream.seen.append((self.path, body, self.headers.get("Inference-Header-Content-Length")))
        if b"die" in body:  # the connection drops mid-request, as when Triton aborts
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        answer = json.dumps({"echo": len(body)}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_GET = do_POST  # noqa: N815

    def log_message(self, *args):
        pass


def _serve(server):
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    return server


@pytest.fixture
def guard():
    upstream_port, port = free_port(), free_port()

    class Handler(GuardHandler):
        upstream = ("127.0.0.1", upstream_port)
        upstream_wait_s = 5.0
        max_body_bytes = 4096

    front = _serve(GuardServer(("127.0.0.1", port), Handler))
    yield port, upstream_port
    front.shutdown()
    front.server_close()


def _post(port, path, body, headers=None):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_the_guard_forwards_refuses_holds_and_does_not_resend(guard):
    port, upstream_port = guard
    infer = "/v2/models/recommender/infer"

    # Triton is down at first: the request is held, then delivered once it is up.
    def start_later():
        time.sleep(1.0)
        _serve(ThreadingHTTPServer(("127.0.0.1", upstream_port), _Upstream))

    threading.Thread(target=start_later, daemon=True).start()
    started = time.monotonic()
    body = _body([1])
    assert _post(port, infer, body) == (200, json.dumps({"echo": len(body)}).encode())
    assert time.monotonic() - started >= 0.9
    assert _Upstream.seen[-1][:2] == (infer, body)

    status, answer = _post(port, infer, _body([10 ** 12]))
    assert status == 400 and b"more than the request's" in answer
    assert len(_Upstream.seen) == 1  # never reached Triton

    binary = b'{"inputs":[]}' + b"\x01\x02"
    assert _post(port, infer, binary, {"Inference-Header-Content-Length": "13"})[0] == 200
    assert _Upstream.seen[-1][1:] == (binary, "13")  # body and header unchanged

    assert _post(port, "/v2/health/ready", None)[0] == 200  # other paths pass through

    status, answer = _post(port, infer, b"x" * 5000)
    assert status == 413 and b"at most 4096" in answer

    seen = len(_Upstream.seen)
    status, answer = _post(port, infer, _body([3], [1, 2, 3]) .replace(b'"user_id"', b'"die"'))
    assert status == 502 and b"not retried" in answer
    assert len(_Upstream.seen) == seen + 1  # delivered once, never again
