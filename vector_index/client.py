"""The project's Milvus client: connecting (bounded, one connection per client), the item
collection's fields, searches that read the reply's arrays, the warm-up search, and the one
error every caller sees when Milvus cannot answer (:class:`MilvusUnavailable`).

The collection's primary key is the raw catalogue item id, so retrieval never exposes an
encoded id. Scores are inner products, exactly what the Two-Tower model was trained with.
"""
from __future__ import annotations

import contextlib
import logging
import math
import uuid

import numpy as np

from core.config import MilvusConfig

LOG = logging.getLogger(__name__)
ID_FIELD = "item_id"
VECTOR_FIELD = "embedding"
CATEGORY_FIELD = "category"
METRIC = "IP"


class MilvusUnavailable(RuntimeError):
    """Milvus could not be reached or refused the request."""


def rpc_timeout(seconds: float) -> int:
    """pymilvus bounds its retries by ``timeout`` only when it is an ``int``; a float timeout
    silently falls back to 75 retries (minutes against a stopped server)."""
    return max(1, int(math.ceil(seconds)))


@contextlib.contextmanager
def quiet_pymilvus():
    """Silence pymilvus' own error log lines (for probes whose failure is expected or reported
    by us in a clearer message)."""
    import pymilvus.milvus_client._utils  # noqa: F401 - its loggers exist once imported

    loggers = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if n.startswith("pymilvus")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def connect(cfg: MilvusConfig, timeout_s: float | None = None):
    """A ``MilvusClient`` for ``cfg.uri`` (and token), failing with a clear message.

    Each client gets a connection of its own: pymilvus otherwise shares one connection
    between all clients of the same address and token, and closing any of them closes it
    for the others in the process (the batch runner's retrieval, a status probe, ...)."""
    from pymilvus import MilvusClient

    timeout = timeout_s or cfg.timeout_s
    try:
        return MilvusClient(uri=cfg.endpoint, token=cfg.token, timeout=rpc_timeout(timeout),
                            alias=f"recsys-{uuid.uuid4().hex}")
    except Exception as exc:
        raise MilvusUnavailable(f"cannot connect to Milvus at {cfg.endpoint} within {timeout:.0f}s: "
                                f"{brief(exc)}") from exc


def brief(exc: Exception) -> str:
    """The useful part of a pymilvus/gRPC error (they embed whole debug strings)."""
    text = getattr(exc, "message", None) or str(exc)
    details = getattr(exc, "details", None)
    if callable(details):
        text = details() or text
    return " ".join(str(text).split())[:240]


def search_params(cfg: MilvusConfig, limit: int) -> dict:
    """Search parameters for the configured index, with HNSW's ``ef`` kept >= ``limit``."""
    params = dict(cfg.search_params)
    if cfg.index_type.upper() == "HNSW":
        params["ef"] = max(int(params.get("ef", limit)), limit)
    return {"metric_type": METRIC, "params": params}


WARM_UP_QUERIES = 1024


def warm_up_search(client, collection: str, vectors: np.ndarray, limit: int, params: dict, timeout: float) -> None:
    """Spend the first large search of a freshly loaded collection on ``vectors`` (up to
    ``WARM_UP_QUERIES`` of its own): measured on Milvus 2.3.5 with HNSW, the first search of
    300 queries after a load returned different hits for up to 9% of them (a search of 5
    queries before it did not prevent that), every later search the same ones. Serving must
    not see that, neither at model start nor after an alias switch."""
    client.search(collection, data=np.asarray(vectors[:WARM_UP_QUERIES], dtype=np.float32).tolist(),
                  limit=max(limit, 1), search_params=params, timeout=timeout)


def sample_vectors(client, collection: str, count: int, timeout: float) -> np.ndarray:
    """Up to ``count`` item vectors stored in ``collection``."""
    rows = client.query(collection, filter=f"{ID_FIELD} >= {-np.iinfo(np.int64).max}", output_fields=[VECTOR_FIELD],
                        limit=count, timeout=timeout)
    return np.array([row[VECTOR_FIELD] for row in rows], dtype=np.float32)


def search_arrays(client, collection: str, vectors: np.ndarray, limit: int, params: dict,
                  expression: str = "", timeout: float | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """The top ``limit`` hits of each vector as ``(ids int64, scores float32)`` arrays.

    pymilvus 2.5's ``MilvusClient.search`` turns every hit into a Python dict: measured at
    1,024 vectors x 128 hits, that took two thirds of the whole search call. This sends the
    request ``MilvusClient.search`` sends (same builder, same authenticated channel) and reads
    the reply's id and score arrays. Falls back to ``client.search`` when pymilvus' internals
    are not the pinned version's (or ``client`` is not a ``MilvusClient``)."""
    try:
        from pymilvus.client.prepare import Prepare
        from pymilvus.client.utils import check_status

        stub = client._get_connection()._stub
    except (ImportError, AttributeError):
        hits = client.search(collection, data=vectors.tolist(), limit=limit,
                             **({"filter": expression} if expression else {}),
                             search_params=params, timeout=timeout)
        return [(np.array([h["id"] for h in row], dtype=np.int64),
                 np.array([h["distance"] for h in row], dtype=np.float32)) for row in hits]
    request = Prepare.search_requests_with_expr(collection, vectors.tolist(), "", params, limit,
                                                expression or "", None, None, -1)
    response = stub.Search(request, timeout=timeout)
    check_status(response.status)
    results = response.results
    ids = np.array(results.ids.int_id.data, dtype=np.int64)
    scores = np.array(results.scores, dtype=np.float32)
    bounds = np.cumsum(np.asarray(results.topks, dtype=np.int64))[:-1]
    if len(results.topks) != len(vectors):
        raise RuntimeError(f"Milvus answered {len(results.topks)} result lists for {len(vectors)} vectors")
    return list(zip(np.split(ids, bounds), np.split(scores, bounds)))


def search_limit(needed: int, cap: int) -> int:
    """The search limit for ``needed`` hits: rounded up to a power of two, at most ``cap``."""
    return int(min(1 << max(int(needed) - 1, 1).bit_length(), cap))
