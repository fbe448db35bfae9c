"""A small tritonclient wrapper for the served models (``recommender``, ``similar_items``), over HTTP or gRPC."""
from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Sequence

import numpy as np

from core.contract import DEPENDENCY_PREFIX, EVENTS, RECENT_ITEMS, RECOMMENDER, SIMILAR_ITEMS


class RecommendError(RuntimeError):
    """Triton answered the request with an error (the message says what is wrong).
    ``status``: the HTTP status ("400": the request is wrong, "503": a dependency is down,
    "500": a server bug) or gRPC code ("StatusCode.INVALID_ARGUMENT", ...)."""

    def __init__(self, message: str, status: str | None = None):
        super().__init__(message)
        self.status = status


class TritonUnreachable(ConnectionError):
    """No configured Triton endpoint could be reached (each one's error is in the message)."""


class RecommenderClient:
    """Send batches of raw user ids to the ``recommender`` model.

    ``url`` is ``host:port`` of Triton's HTTP (default 8000) or gRPC (default 8001) endpoint,
    or several of them (a list, or comma-separated): replicas serving the same model
    repository, used in round robin. A replica that cannot be reached is skipped (the request
    goes to the next one) and rested for ``rest_s`` seconds; an error the model answers with is
    not retried elsewhere (every replica would give it). When no endpoint accepts the
    connection at all (a restart), the request is sent again for up to ``wait_s`` seconds; a
    request that reached a server and lost its connection is never sent again (it may be what
    stopped the server). One client per thread.
    """

    def __init__(self, url: str | Sequence[str], protocol: str = "http", model_name: str = "recommender",
                 timeout_s: float = 30.0, rest_s: float = 5.0, wait_s: float = 0.0):
        if protocol not in ("http", "grpc"):
            raise ValueError("protocol must be 'http' or 'grpc'")
        self.endpoints = _endpoints(url)
        self.protocol = protocol
        self.model_name = model_name
        self.timeout_s = timeout_s
        self.rest_s = rest_s
        self.wait_s = wait_s
        if protocol == "http":
            import tritonclient.http as module

            self._clients = [module.InferenceServerClient(e, connection_timeout=timeout_s,
                                                          network_timeout=timeout_s) for e in self.endpoints]
        else:
            import tritonclient.grpc as module

            self._clients = [self._connect(module, e) for e in self.endpoints]
        self._module = module
        self._turn = 0
        self._resting_until = [0.0] * len(self.endpoints)
        self.answered = [0] * len(self.endpoints)  # requests each endpoint answered

    def recommend(self, user_ids, dtype: str = "INT64", filter: str | None = None,
                  filter_values: dict | str | None = None, recent_items=None) -> dict[str, np.ndarray]:
        """Top-k raw item ids, scores, fallback flags, the answering path (``source``:
        personalized / features / session / popular) and the number of popular fill-ins
        (``filled``) for each user id (row i = user i). ``filter``: a filter expression (README,
        Filters) with its ``$PARAMETER`` values in ``filter_values`` (a dict or a JSON object).
        ``recent_items``: per user, the item ids they clicked this session, most recent first
        (lists of any lengths; sent padded with -1)."""
        extra = []
        if recent_items is not None:
            width = max([len(row) for row in recent_items] + [1])
            padded = np.full((len(recent_items), width), -1, dtype=np.int64)
            for row, clicks in enumerate(recent_items):
                padded[row, :len(clicks)] = clicks
            extra.append(self._tensor(RECENT_ITEMS, padded, "INT64"))
        answer = self._infer(self.model_name, RECOMMENDER.id_input, user_ids, RECOMMENDER.output_names, dtype,
                             _filter_inputs(filter, filter_values), extra)
        answer["source"] = np.array([s.decode() if isinstance(s, bytes) else str(s)
                                     for s in answer["source"]], dtype=object)
        return answer

    def similar(self, item_ids, model_name: str = "similar_items", filter: str | None = None,
                filter_values: dict | str | None = None) -> dict[str, np.ndarray]:
        """The ``similar_items`` model: nearest raw item ids and scores per item id, and
        ``found`` (false: the id is not in the collection, the row is the popular items);
        ``filter`` / ``filter_values`` as in :meth:`recommend`."""
        return self._infer(model_name, SIMILAR_ITEMS.id_input, item_ids, SIMILAR_ITEMS.output_names, "INT64",
                           _filter_inputs(filter, filter_values))

    def infer(self, model: str, input_name: str, ids, outputs) -> dict[str, np.ndarray]:
        """Any model of the repository that takes one tensor of int64 ids: ``outputs`` by name
        (e.g. the benchmark's stock-operator graph, ``ordered_ids`` / ``ordered_scores``)."""
        return self._infer(model, input_name, ids, tuple(outputs))

    def put_events(self, user_ids, item_ids, timestamps=None, event_types=None, event_values=None,
                   model_name: str = "events") -> dict[str, np.ndarray]:
        """Send interactions to the ``events`` model; the user's next answer reflects them.
        ``timestamps``: epoch seconds (0 or omitted: now). Returns per event ``accepted`` and
        ``error`` (why an event was rejected; the others are applied)."""
        users = np.asarray(user_ids, dtype=np.int64).reshape(-1)
        tensors = [self._tensor("user_id", users, "INT64"),
                   self._tensor("item_id", np.asarray(item_ids, dtype=np.int64).reshape(-1), "INT64")]
        if timestamps is not None:
            tensors.append(self._tensor("timestamp", np.asarray(timestamps, dtype=np.int64).reshape(-1), "INT64"))
        if event_types is not None:
            tensors.append(self._tensor("event_type", np.array([str(t).encode() for t in event_types],
                                                               dtype=np.object_), "BYTES"))
        if event_values is not None:
            tensors.append(self._tensor("event_value", np.asarray(event_values, dtype=np.float32).reshape(-1),
                                        "FP32"))
        answer = self._send(model_name, tensors, EVENTS.output_names, idempotent=False)
        answer["error"] = np.array([e.decode() if isinstance(e, bytes) else str(e) for e in answer["error"]],
                                   dtype=object)
        return answer

    def _tensor(self, name: str, values: np.ndarray, dtype: str):
        tensor = self._module.InferInput(name, list(values.shape), dtype)
        tensor.set_data_from_numpy(values)
        return tensor

    def _infer(self, model: str, input_name: str, ids, outputs, dtype: str = "INT64",
               text_inputs: dict[str, str] | None = None, extra: list | None = None) -> dict:
        values = np.asarray(ids)
        if dtype == "INT64":
            values = values.astype(np.int64)
        tensors = [self._tensor(input_name, values, dtype)] + list(extra or [])
        for name, text in (text_inputs or {}).items():
            tensors.append(self._tensor(name, np.array([text.encode("utf-8")], dtype=np.object_), "BYTES"))
        return self._send(model, tensors, outputs)

    def _send(self, model: str, tensors: list, outputs, idempotent: bool = True) -> dict:
        """The request to the first endpoint that answers (see :class:`RecommenderClient`); a
        request that is not ``idempotent`` goes to the next endpoint only if no endpoint got it."""
        requested = [self._module.InferRequestedOutput(name) for name in outputs]
        deadline = time.monotonic() + self.wait_s
        while True:
            answer, unreachable, never_sent = self._try_endpoints(model, tensors, requested, outputs, idempotent)
            if answer is not None:
                return answer
            if not never_sent or time.monotonic() >= deadline:
                raise TritonUnreachable(f"no Triton endpoint answered ({self.protocol}): " + "; ".join(unreachable))
            time.sleep(0.2)  # every endpoint refused the connection: it may be restarting

    def _try_endpoints(self, model, tensors, requested, outputs, idempotent: bool = True):
        """One round over the endpoints: ``(answer, [], _)`` from the first that answers, else
        ``(None, what each said, whether no endpoint got the request at all)``."""
        from tritonclient.utils import InferenceServerException

        unreachable, never_sent = [], True
        for index in self._rotation():
            client = self._clients[index]
            try:
                if self.protocol == "grpc":
                    result = client.infer(model, tensors, outputs=requested, client_timeout=self.timeout_s)
                else:
                    result = client.infer(model, tensors, outputs=requested)
            except (InferenceServerException, OSError) as exc:
                if not _unreachable(exc):
                    raise RecommendError(exc.message(), str(exc.status())) from exc
                self._resting_until[index] = time.monotonic() + self.rest_s
                if self.protocol == "grpc":  # a new channel connects at once when it is back
                    self._clients[index].close()
                    self._clients[index] = self._connect(self._module, self.endpoints[index])
                unreachable.append(f"{self.endpoints[index]}: {_describe(exc)}")
                never_sent = never_sent and _never_sent(exc)
                if not (idempotent or never_sent):  # it may have been applied: never twice
                    break
                continue
            self.answered[index] += 1
            return {name: result.as_numpy(name) for name in outputs}, [], False
        return None, unreachable, never_sent

    @staticmethod
    def _connect(module, endpoint: str):
        """A gRPC client of one endpoint."""
        return module.InferenceServerClient(endpoint, channel_args=_grpc_channel_args())

    def _rotation(self) -> list[int]:
        """Endpoint indexes in round-robin order from the next turn, rested ones last."""
        count = len(self.endpoints)
        order = [(self._turn + step) % count for step in range(count)]
        self._turn = (self._turn + 1) % count
        now = time.monotonic()
        return sorted(order, key=lambda i: self._resting_until[i] > now)  # stable: keeps the turn order

    def ready(self) -> bool:
        """Whether at least one endpoint has the model ready."""
        return any(self.ready_endpoints().values())

    def ready_endpoints(self) -> dict[str, bool]:
        """Per endpoint: is the model loaded and ready there."""
        states = {}
        for endpoint, client in zip(self.endpoints, self._clients):
            try:
                states[endpoint] = bool(client.is_model_ready(self.model_name))
            except Exception:
                states[endpoint] = False
        return states

    def close(self) -> None:
        for client in self._clients:
            client.close()


def _grpc_channel_args() -> list[tuple]:
    """tritonclient's own channel options, with gRPC's reconnect backoff capped at 2 s: its
    default grows to 120 s, so a client kept failing for minutes after a Triton restart."""
    from tritonclient.grpc import KeepAliveOptions
    from tritonclient.grpc._client import MAX_GRPC_MESSAGE_SIZE

    keepalive = KeepAliveOptions()
    return [("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
            ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
            ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
            ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
            ("grpc.initial_reconnect_backoff_ms", 250),
            ("grpc.min_reconnect_backoff_ms", 250),
            ("grpc.max_reconnect_backoff_ms", 2000)]


def _endpoints(url: str | Sequence[str]) -> list[str]:
    parts = url.split(",") if isinstance(url, str) else list(url)
    endpoints = [p.strip() for p in parts if p and p.strip()]
    if not endpoints:
        raise ValueError("no Triton endpoint given (host:port, or several separated by commas)")
    return endpoints


def _unreachable(exc: Exception) -> bool:
    """A failure to reach the server (try another replica), not an answer from the model."""
    if isinstance(exc, OSError):  # tritonclient.http: refused, reset, timed out
        return True
    # tritonclient.grpc: UNAVAILABLE is also what the model answers when Milvus or Feast is
    # down (its message says so); that replica is up and every other would answer the same.
    return str(exc.status()) == "StatusCode.UNAVAILABLE" and DEPENDENCY_PREFIX not in str(exc.message())


def _never_sent(exc: Exception) -> bool:
    """The connection was refused: the request cannot have reached a server."""
    if isinstance(exc, ConnectionRefusedError):
        return True
    text = str(exc.message() if hasattr(exc, "message") and callable(exc.message) else exc).lower()
    return not isinstance(exc, OSError) and ("connection refused" in text or "failed to connect" in text)


def _describe(exc: Exception) -> str:
    text = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    return " ".join(str(text or type(exc).__name__).split())[:200]


def _filter_inputs(expression: str | None, values: dict | str | None) -> dict[str, str]:
    """The optional ``filter`` / ``filter_values`` text inputs of a request."""
    inputs = {}
    if expression is not None:
        inputs["filter"] = expression
    if values is not None:
        inputs["filter_values"] = values if isinstance(values, str) else json.dumps(values)
    return inputs


def stage_seconds(metrics_url: str) -> dict[str, float]:
    """Cumulative per-stage seconds from Triton's metrics endpoint (our custom counters)."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    pattern = re.compile(r'^recsys_stage_seconds_total\{stage="([^"]+)"\} ([0-9.eE+-]+)$', re.M)
    return {stage: float(value) for stage, value in pattern.findall(text)}
