"""QueryMilvus: approximate nearest-neighbour retrieval of candidate items in Milvus, plus
:func:`build_item_index`, the offline step that loads the item vectors into a collection.

The collection's primary key is the raw catalogue item id, so retrieval never exposes an
encoded id. Scores are inner products, exactly what the Two-Tower model was trained with.
"""
from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
import uuid

import numpy as np
from merlin.dag import BaseOperator, ColumnSelector, DataFormats
from merlin.schema import ColumnSchema, Schema
from merlin.table import TensorTable

from operators.settings import serving_config
from recsys.config import MilvusConfig
from training.progress import bar

LOG = logging.getLogger(__name__)
ID_FIELD = "item_id"
VECTOR_FIELD = "embedding"
CATEGORY_FIELD = "category"
CATEGORY_FEATURE = "item_category"  # the item feature stored in CATEGORY_FIELD (filter pushdown)
METRIC = "IP"
MISSING_ID = -1


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
                                f"{_brief(exc)}") from exc


def _brief(exc: Exception) -> str:
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


def build_item_index(cfg: MilvusConfig, item_ids: np.ndarray, vectors: np.ndarray, items=None,
                     progress: bool = False) -> int:
    """Build a new collection with the item vectors (inserted in chunks, the configured index
    with the IP metric, loaded), then point the alias ``cfg.collection`` - the name serving
    searches - at it and drop the collection it pointed at before. Serving never sees a
    half-built index: until the switch it searches the previous collection. ``items``: the
    item features (for each row's category, :func:`item_rows`). Returns the row count."""
    client = connect(cfg, timeout_s=max(cfg.timeout_s, 60.0))
    try:
        physical = f"{cfg.collection}{GENERATION_SEPARATOR}{time.time_ns() // 1_000_000}"
        _create_item_collection(client, physical, int(vectors.shape[1]))
        chunks = range(0, len(item_ids), cfg.insert_chunk_size)
        for start in bar(chunks, len(chunks), f"inserting {len(item_ids):,} item vectors", progress):
            stop = start + cfg.insert_chunk_size
            client.insert(physical, item_rows(item_ids[start:stop], vectors[start:stop], items))
        client.flush(physical)
        index_params = client.prepare_index_params()
        index_params.add_index(field_name=VECTOR_FIELD, index_type=cfg.index_type, metric_type=METRIC,
                               params=index_build_params(cfg.index_params))
        try:
            client.create_index(physical, index_params)
            _wait_for_index(client, physical, timeout_s=max(600.0, cfg.timeout_s))
            client.load_collection(physical)
            warm_up_search(client, physical, vectors[:WARM_UP_QUERIES], limit=min(len(item_ids), 100),
                           params=search_params(cfg, 100), timeout=rpc_timeout(max(cfg.timeout_s, 60.0)))
        except Exception:
            client.drop_collection(physical)  # nothing half-built is left behind; the alias is untouched
            raise
        count = int(client.get_collection_stats(physical)["row_count"])
        previous = switch_alias(client, cfg.collection, physical)
        if previous:
            time.sleep(DROP_GRACE_S)  # searches already routed to it finish first
            client.drop_collection(previous)
        return count
    finally:
        client.close()


GENERATION_SEPARATOR = "__g"


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


def index_build_params(params: dict) -> dict:
    """Index parameters as Milvus parses them: pymilvus sends every value as ``str(value)``
    and Milvus reads it as JSON, so a Python ``True`` ("True") fails the build with "type
    conflict in json" - and Milvus 2.3 retries a failed build forever instead of reporting it."""
    return {key: (str(value).lower() if isinstance(value, bool) else value) for key, value in params.items()}
DROP_GRACE_S = 2.0


def _create_item_collection(client, name: str, dim: int) -> None:
    from pymilvus import DataType

    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field(ID_FIELD, DataType.INT64, is_primary=True)
    schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field(CATEGORY_FIELD, DataType.VARCHAR, max_length=64)
    client.create_collection(name, schema=schema)


def item_rows(item_ids, vectors, items=None) -> list[dict]:
    """Rows of the item collection: id, vector, and the item's category (its
    :data:`CATEGORY_FEATURE` in ``items``, a frame with an ``item_id`` column or index; empty
    when ``items`` has none). Every path that writes items into Milvus builds its rows here,
    so a category filter pushed into Milvus sees the same categories after a build, a rebuild
    or an upsert."""
    categories = item_categories(items, item_ids)
    return [{ID_FIELD: int(i), VECTOR_FIELD: np.asarray(v, dtype=np.float32).tolist(), CATEGORY_FIELD: c}
            for i, v, c in zip(item_ids, vectors, categories)]


def item_categories(items, item_ids) -> list[str]:
    """The category text of each id (``""`` where unknown), as the filters compare it: a
    number read from a CSV as ``3`` or ``3.0`` is the category ``"3"``."""
    if items is None:
        return [""] * len(item_ids)
    frame = items.set_index("item_id") if "item_id" in getattr(items, "columns", ()) else items
    if CATEGORY_FEATURE not in frame.columns:
        return [""] * len(item_ids)
    values = frame[CATEGORY_FEATURE].reindex(np.asarray(item_ids, dtype=np.int64))
    return [_category_text(v) for v in values]


def _category_text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def switch_alias(client, alias: str, collection: str) -> str | None:
    """Point ``alias`` at ``collection``; returns the collection it pointed at before (a plain
    collection named like the alias, from an older layout, is dropped first)."""
    previous = aliased_collection(client, alias)
    if previous is None:
        if client.has_collection(alias):
            client.drop_collection(alias)
        client.create_alias(collection, alias)
    else:
        client.alter_alias(collection, alias)
    return previous if previous != collection else None


def aliased_collection(client, alias: str) -> str | None:
    """The collection ``alias`` points at, or ``None`` if it is not an alias."""
    try:
        return client.describe_alias(alias).get("collection_name") or None
    except Exception:  # pymilvus raises when the alias does not exist
        return None


def _wait_for_index(client, collection: str, timeout_s: float = 600.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = client.describe_index(collection, VECTOR_FIELD)
        if info.get("state") == "Finished" and int(info.get("pending_index_rows", 0)) == 0:
            return
        if info.get("state") == "Failed":
            raise MilvusUnavailable(f"index build failed on {collection}: {info}")
        time.sleep(0.5)
    raise MilvusUnavailable(f"index on {collection} not built after {timeout_s:.0f}s")


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


def _search_limit(needed: int, cap: int) -> int:
    return int(min(1 << max(int(needed) - 1, 1).bit_length(), cap))


class QueryMilvus(BaseOperator):
    """Search the item collection with each user's vector: ``[batch, dim]`` in,
    ``candidate_ids`` (INT64) and ``candidate_scores`` (FP32), both ``[batch, top_k]``, out.

    Rows with fewer than ``top_k`` hits are padded with id -1 and score -inf. The client is
    opened at model start (never pickled) and re-opened after a failure, so serving recovers
    by itself when Milvus comes back.
    """

    def __init__(self, top_k: int = 100, vector_column: str = "user_embedding",
                 exclude_column: str | None = None, fill_ids=None, max_limit: int = 16_384,
                 category_feature: str | None = None):
        super().__init__()
        self.top_k = int(top_k)
        self.vector_column = vector_column
        self.exclude_column = exclude_column
        self.fill_ids = np.asarray([] if fill_ids is None else fill_ids, dtype=np.int64)
        self.max_limit = int(max_limit)
        # the item feature stored in the collection's category field (filters on it are pushed down)
        self.category_feature = category_feature
        self.request_filter = None  # set by the runner for one request (operators.filters)
        self._client = None
        self._cfg: MilvusConfig | None = None
        self._warming = None  # the background warm-up after a reconnect
        self.warm_ups = 0  # background warm-ups completed

    def load_artifacts(self, artifact_path: str | None = None) -> None:
        if artifact_path:  # Merlin also calls this with "" while building a graph
            self._open(artifact_path)

    def _open(self, artifact_path: str) -> None:
        self._cfg = serving_config(artifact_path).milvus
        try:
            self._client = self._connect(max(self._cfg.timeout_s, 30.0), warm_up=True)
        except MilvusUnavailable as exc:  # serve anyway; requests report it until Milvus is up
            LOG.warning("%s", exc)
            self._client = None

    def _connect(self, timeout_s: float, warm_up: bool = False):
        """Open a client and make sure the collection is loaded for search (after a Milvus
        restart, collections come back unloaded); every call is bounded by ``timeout_s``."""
        client = connect(self._cfg, timeout_s)
        try:
            client.load_collection(self._cfg.collection, timeout=rpc_timeout(timeout_s))
            if warm_up:
                collection, timeout = self._cfg.collection, rpc_timeout(timeout_s)
                vectors = sample_vectors(client, collection, WARM_UP_QUERIES, timeout)
                if len(vectors):
                    warm_up_search(client, collection, vectors, self.top_k,
                                   search_params(self._cfg, self.top_k), timeout)
        except Exception as exc:
            client.close()
            raise MilvusUnavailable(f"Milvus at {self._cfg.endpoint} cannot load collection "
                                    f"{self._cfg.collection!r}: {_brief(exc)}") from exc
        return client

    def _warm_up_in_background(self) -> threading.Thread:
        """After a reconnect (Milvus restarted: its collection was loaded again), spend the
        first large search of the collection (:func:`warm_up_search`) on a client of its own in
        a thread, so no request waits for it or fails because of it; a failure is only logged."""
        cfg, top_k = self._cfg, self.top_k

        def warm_up():
            try:
                client = connect(cfg, cfg.timeout_s)
                try:
                    timeout = rpc_timeout(max(cfg.timeout_s, 30.0))
                    vectors = sample_vectors(client, cfg.collection, WARM_UP_QUERIES, timeout)
                    if len(vectors):
                        warm_up_search(client, cfg.collection, vectors, top_k, search_params(cfg, top_k), timeout)
                    self.warm_ups += 1
                finally:
                    client.close()
            except Exception as exc:  # noqa: BLE001 - a warm-up never fails anything
                LOG.warning("Milvus warm-up after reconnecting failed (requests are not affected): %s",
                            _brief(exc))

        thread = threading.Thread(target=warm_up, name="milvus-warm-up", daemon=True)
        thread.start()
        self._warming = thread
        return thread

    def __getstate__(self) -> dict:
        # Clients, models and workflows are artifacts: loaded at model start, never pickled.
        return {**self.__dict__, "_client": None, "_cfg": None, "request_filter": None, "_warming": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update({"category_feature": None, "request_filter": None, "warm_ups": 0,
                              "_warming": None, **state})

    def _filter_expression(self) -> str:
        """The Milvus search expression of the request's filter ("" when none or nothing of
        it can be pushed down)."""
        if self.request_filter is None:
            return ""
        return self.request_filter.milvus_expression(ID_FIELD, CATEGORY_FIELD, self.category_feature) or ""

    def transform(self, col_selector: ColumnSelector, transformable: TensorTable) -> TensorTable:
        if self._cfg is None:
            self._open("")
        vectors = np.asarray(transformable[self.vector_column].values, dtype=np.float32)
        excluded = (list(transformable[self.exclude_column].values) if self.exclude_column
                    else [()] * len(vectors))
        # Each user needs top_k hits beyond their own items. Users are searched in groups by
        # that need rounded up to a power of two, so a user's candidates do not depend on who
        # else is in the batch (the search depth grows with the limit).
        cap = min(self.max_limit, self._cfg.search_limit_cap)  # the index type may be set at run time
        limits = np.array([_search_limit(self.top_k + len(e), cap) for e in excluded])
        ids = np.empty((len(vectors), self.top_k), dtype=np.int64)
        scores = np.empty((len(vectors), self.top_k), dtype=np.float32)
        for limit in np.unique(limits):
            rows = np.flatnonzero(limits == limit)
            for row, (hit_ids, hit_scores) in zip(rows, self._search(vectors[rows], int(limit))):
                ids[row], scores[row] = self._row(hit_ids, hit_scores, np.asarray(excluded[row]))
        return TensorTable({"candidate_ids": ids, "candidate_scores": scores})

    def _row(self, hit_ids: np.ndarray, hit_scores: np.ndarray, excluded) -> tuple[np.ndarray, np.ndarray]:
        """The first ``top_k`` hits not in ``excluded``; if fewer, filled with ``fill_ids``
        (not excluded, not already there) scored just below the last hit, never -1."""
        excluded = np.asarray(excluded, dtype=np.int64).reshape(-1)
        keep = ~np.isin(hit_ids, excluded) if len(excluded) else np.ones(len(hit_ids), dtype=bool)
        ids = hit_ids[keep][: self.top_k]
        scores = hit_scores[keep][: self.top_k]
        if len(ids) == self.top_k:
            return ids.astype(np.int64), scores.astype(np.float32)
        ids, scores = ids.tolist(), scores.tolist()
        present = set(excluded.tolist()) | set(ids)
        last = scores[-1] if scores else 0.0
        for item in self.fill_ids.tolist():
            if len(ids) == self.top_k:
                break
            if item not in present:
                last = float(np.nextafter(np.float32(last), np.float32(-np.inf)))
                ids.append(item)
                scores.append(last)
        short = self.top_k - len(ids)  # only when the catalogue itself is smaller than top_k
        return (np.array(ids + [MISSING_ID] * short, dtype=np.int64),
                np.array(scores + [-np.inf] * short, dtype=np.float32))

    def _search(self, vectors: np.ndarray, limit: int) -> list:
        cfg = self._cfg
        started = time.monotonic()
        try:
            if self._client is None:
                self._client = self._connect(cfg.timeout_s)
                self._warm_up_in_background()
            expression = self._filter_expression()
            return search_arrays(self._client, cfg.collection, vectors, limit, search_params(cfg, limit),
                                 expression, rpc_timeout(cfg.timeout_s))
        except MilvusUnavailable:
            raise
        except Exception as exc:
            self._client = None  # reconnect on the next request
            waited = time.monotonic() - started
            raise MilvusUnavailable(f"Milvus search in collection {cfg.collection!r} at {cfg.endpoint} "
                                    f"failed after {waited:.1f}s: {_brief(exc)}") from exc

    def compute_output_schema(self, input_schema: Schema, col_selector: ColumnSelector,
                              prev_output_schema: Schema = None) -> Schema:
        dims = (None, self.top_k)
        return Schema([ColumnSchema("candidate_ids", dtype=np.int64, dims=dims),
                       ColumnSchema("candidate_scores", dtype=np.float32, dims=dims)])

    @property
    def supported_formats(self) -> DataFormats:
        return DataFormats.NUMPY_TENSOR_TABLE


class SimilarItems(QueryMilvus):
    """Items like the given ones: ``item_id`` ``[batch]`` in; ``item_ids`` and ``scores``
    ``[batch, top_k]`` (inner products of the item vectors, sorted) and ``found`` ``[batch]``
    out. The item itself is never in its list; ids Milvus does not hold get the fill list (the
    most popular items) and ``found = False``. Every row is searched with the same depth, so a
    batch answers exactly what each item gets alone."""

    def __init__(self, top_k: int = 10, fill_ids=None, max_limit: int = 16_384,
                 category_feature: str | None = None):
        super().__init__(top_k=top_k, vector_column="item_id", fill_ids=fill_ids, max_limit=max_limit,
                         category_feature=category_feature)

    def transform(self, col_selector: ColumnSelector, transformable: TensorTable) -> TensorTable:
        if self._cfg is None:
            self._open("")
        ids = np.asarray(transformable["item_id"].values, dtype=np.int64)
        vectors = self._vectors(sorted(set(ids.tolist())))
        found = np.array([int(i) in vectors for i in ids], dtype=bool)
        out_ids = np.empty((len(ids), self.top_k), dtype=np.int64)
        out_scores = np.empty((len(ids), self.top_k), dtype=np.float32)
        rows = np.flatnonzero(found)
        cap = min(self.max_limit, self._cfg.search_limit_cap)
        hits = (self._search(np.stack([vectors[int(ids[r])] for r in rows]),
                             _search_limit(self.top_k + 1, cap)) if len(rows) else [])
        by_row = dict(zip(rows.tolist(), hits))
        nothing = (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32))
        for row, item in enumerate(ids.tolist()):
            out_ids[row], out_scores[row] = self._row(*by_row.get(row, nothing), [item])
        return TensorTable({"item_ids": out_ids, "scores": out_scores, "found": found})

    def _vectors(self, ids: list[int]) -> dict[int, np.ndarray]:
        cfg = self._cfg
        try:
            if self._client is None:
                self._client = self._connect(cfg.timeout_s)
                self._warm_up_in_background()
            rows = []
            for start in range(0, len(ids), 1000):
                rows += self._client.query(cfg.collection, filter=f"{ID_FIELD} in {ids[start:start + 1000]}",
                                           output_fields=[ID_FIELD, VECTOR_FIELD],
                                           timeout=rpc_timeout(cfg.timeout_s))
        except MilvusUnavailable:
            raise
        except Exception as exc:
            self._client = None
            raise MilvusUnavailable(f"Milvus query in collection {cfg.collection!r} at {cfg.endpoint} "
                                    f"failed: {_brief(exc)}") from exc
        return {int(row[ID_FIELD]): np.asarray(row[VECTOR_FIELD], dtype=np.float32) for row in rows}

    def compute_output_schema(self, input_schema: Schema, col_selector: ColumnSelector,
                              prev_output_schema: Schema = None) -> Schema:
        dims = (None, self.top_k)
        return Schema([ColumnSchema("item_ids", dtype=np.int64, dims=dims),
                       ColumnSchema("scores", dtype=np.float32, dims=dims),
                       ColumnSchema("found", dtype=np.bool_, dims=(None,))])
