"""QueryFeatures: fetch online features from Feast for a column of entity ids.

The entity column may be ``[batch]`` (users) or ``[batch, k]`` (the candidates of each user);
every feature comes back in the same shape. The Feast repo is found at model start from the
serving configuration (never frozen into the pickle), and nothing is materialized here:
materialization is a job (``recsys features``), not a side effect of building a graph.

Feast's ``get_online_features`` costs about 0.1 ms per entity in Python, so a request's 100
candidates per user would dominate the latency. Lookups therefore go through a small
read-through cache: an id seen for the first time is fetched from Feast in the request; once
its entry is older than ``cache_ttl_s`` it is still served, and re-read from Feast by a
background thread (so values are at most about ``cache_ttl_s`` stale and requests do not stall
on refreshes). Ids Feast does not know are cached as missing too. ``cache_ttl_s = 0`` reads
Feast on every request. Writers of the online store (the ``events`` model) record the ids they
changed in an update log (:mod:`operators.feature_updates`); before each request the cache
reads what was appended and drops those ids (``on_update="drop"``: the request reads them
from Feast, so a user's next request sees their last event) or marks them stale
(``on_update="refresh"``: re-read in the background, for item counts).

When the online store cannot be read, ``on_failure="missing"`` (the default) serves the ids it
could not read as missing rows - the cold-start path for users, default features for items -
without caching them, counts them in :attr:`QueryFeatures.failures` and logs a warning (at most
one per ``WARN_EVERY_S``); ``on_failure="error"`` fails the request instead.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Dict

import numpy as np
from merlin.dag import BaseOperator, ColumnSelector, DataFormats
from merlin.schema import ColumnSchema, Schema
from merlin.table import TensorTable

from operators.feature_updates import ALL, UpdateLog, log_path
from operators.settings import serving_config

LOG = logging.getLogger(__name__)
WARN_EVERY_S = 10.0


class FeatureStoreUnavailable(RuntimeError):
    """The Feast online store could not be read."""


class QueryFeatures(BaseOperator):
    """Look up ``features`` of ``feature_view`` for the ids in ``entity_column``.

    Parameters
    ----------
    feature_view : name of the Feast feature view.
    join_key : the entity's join key in Feast (e.g. ``item_id``).
    features : feature name -> value type (``"string"``, ``"int64"``, ``"float32"``,
        ``"string_list"``, ``"int64_list"``; list values come out as an object column of arrays).
    entity_column : the input column holding raw entity ids (default: ``join_key``).
    found_column : if set, also output a boolean column telling which ids Feast knows.
    cache_ttl_s, cache_max_entries : the read-through cache (see the module docstring).
    warm_ids : ids whose features are read into the cache at model start (e.g. the catalogue),
        so that the first requests do not pay for cold lookups.
    on_failure : ``"missing"`` (serve unreadable ids as missing rows, counted and logged) or
        ``"error"`` (raise :class:`FeatureStoreUnavailable`).
    on_update : what a cached id recorded in the update log gets: ``"drop"`` or ``"refresh"``.
    """

    def __init__(self, feature_view: str, join_key: str, features: Dict[str, str],
                 entity_column: str | None = None, found_column: str | None = None,
                 cache_ttl_s: float = 60.0, cache_max_entries: int = 200_000, warm_ids=None,
                 on_failure: str = "missing", on_update: str = "drop"):
        super().__init__()
        if on_failure not in ("missing", "error"):
            raise ValueError(f"on_failure must be 'missing' or 'error', got {on_failure!r}")
        if on_update not in ("drop", "refresh"):
            raise ValueError(f"on_update must be 'drop' or 'refresh', got {on_update!r}")
        self.on_failure = on_failure
        self.on_update = on_update
        self._updates = None
        self.failures = 0  # ids served as missing because the store could not be read
        self._last_warning = float("-inf")
        self.feature_view = feature_view
        self.join_key = join_key
        self.features = dict(features)
        self.entity_column = entity_column or join_key
        self.found_column = found_column
        self.cache_ttl_s = float(cache_ttl_s)
        self.cache_max_entries = int(cache_max_entries)
        self._store = None
        self._cache: dict = {}
        self._feast_lock = threading.Lock()
        self._refreshing = False
        self.warm_ids = None if warm_ids is None else np.asarray(warm_ids, dtype=np.int64)
        self._feature_refs = [f"{feature_view}:{name}" for name in self.features]

    def load_artifacts(self, artifact_path: str | None = None) -> None:
        if artifact_path:  # Merlin also calls this with "" while building a graph
            self._open(artifact_path)

    def _open(self, artifact_path: str) -> None:
        settings = serving_config(artifact_path)
        self._updates = UpdateLog(log_path(settings.feature_data_dir, self.feature_view))  # before warming
        try:
            self._store = settings.open_feature_store()
        except Exception as exc:  # Feast raises many types for a bad repo
            raise FeatureStoreUnavailable(
                f"cannot open the Feast repo at {settings.feature_store_file}: {exc}") from exc
        if self.warm_ids is not None and self.cache_ttl_s > 0:
            ids = self.warm_ids.tolist()[: self.cache_max_entries]
            for start in range(0, len(ids), 5000):
                self._rows(ids[start:start + 5000])

    def __getstate__(self) -> dict:
        # Clients, models and workflows are artifacts: loaded at model start, never pickled.
        return {**self.__dict__, "_store": None, "_cache": {}, "_feast_lock": None, "_refreshing": False,
                "_updates": None}

    def __setstate__(self, state: dict) -> None:
        state = {"on_failure": "missing", "on_update": "drop", "_updates": None, "failures": 0,
                 "_last_warning": float("-inf"), **state}
        self.__dict__.update(state)
        self._cache, self._feast_lock, self._refreshing = {}, threading.Lock(), False

    def transform(self, col_selector: ColumnSelector, transformable: TensorTable) -> TensorTable:
        if self._store is None:
            self._open("")
        ids = np.asarray(transformable[self.entity_column].values)
        flat = ids.reshape(-1).tolist()
        rows = self._rows(flat)
        output = {self.join_key: ids.astype(np.int64)}
        for position, (name, dtype) in enumerate(self.features.items()):
            output[name] = _column([row[position] if row else None for row in rows], dtype).reshape(ids.shape)
        if self.found_column:
            output[self.found_column] = np.array([row is not None for row in rows]).reshape(ids.shape)
        return TensorTable(output)

    def _rows(self, ids: list) -> list:
        """One tuple of feature values per id (``None`` where Feast has no row)."""
        cache = self._cache
        if self.cache_ttl_s <= 0:
            return self._fetch_or_missing(ids)
        self._apply_updates()
        missing = list({i for i in ids if i not in cache})
        unread: dict = {}
        if missing:
            if len(cache) + len(missing) > self.cache_max_entries:
                cache.clear()
            try:
                self._store_rows(missing, self._fetch(missing))
            except FeatureStoreUnavailable as exc:
                self._degrade(exc, len(missing))
                unread = dict.fromkeys(missing)
        rows = [unread[i] if i in unread else cache[i][1] for i in ids]
        now = time.monotonic()
        stale = [i for i in set(ids) if i not in unread and cache[i][0] < now]
        if stale and not self._refreshing:
            self._refreshing = True
            threading.Thread(target=self._refresh, args=(stale,), daemon=True).start()
        return rows

    def _apply_updates(self) -> None:
        """Drop (or mark stale) the cached ids whose online rows changed since the last request."""
        if self._updates is None:
            return
        changed = self._updates.changed()
        if changed is ALL:
            changed = list(self._cache)
        for entity_id in np.asarray(changed).tolist():
            if self.on_update == "drop":
                self._cache.pop(entity_id, None)
            elif entity_id in self._cache:
                self._cache[entity_id] = (0.0, self._cache[entity_id][1])

    def _fetch_or_missing(self, ids: list) -> list:
        try:
            return self._fetch(ids)
        except FeatureStoreUnavailable as exc:
            self._degrade(exc, len(ids))
            return [None] * len(ids)

    def _degrade(self, exc: FeatureStoreUnavailable, count: int) -> None:
        """Count ``count`` ids served as missing (or re-raise with ``on_failure="error"``)."""
        if self.on_failure == "error":
            raise exc
        self.failures += count
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY_S:
            self._last_warning = now
            LOG.warning("%s; serving %d ids as missing rows (%d so far)", exc, count, self.failures)

    def _store_rows(self, ids: list, rows: list) -> None:
        expires = time.monotonic() + self.cache_ttl_s
        for entity_id, row in zip(ids, rows):
            self._cache[entity_id] = (expires, row)

    def _refresh(self, ids: list, chunk: int = 500) -> None:
        try:
            for start in range(0, len(ids), chunk):
                part = ids[start:start + chunk]
                self._store_rows(part, self._fetch(part))
        except FeatureStoreUnavailable:
            pass  # keep serving the cached rows; the next stale hit retries
        finally:
            self._refreshing = False

    def _fetch(self, ids: list) -> list:
        try:
            with self._feast_lock:
                found = self._store.get_online_features(
                    features=self._feature_refs,
                    entity_rows=[{self.join_key: i} for i in ids]).to_dict()
        except Exception as exc:
            raise FeatureStoreUnavailable(
                f"Feast online store lookup for {self.feature_view} failed: {exc}") from exc
        columns = [found[name] for name in self.features]
        rows = []
        for values in zip(*columns):
            rows.append(None if all(v is None for v in values) else values)
        return rows

    def compute_output_schema(self, input_schema: Schema, col_selector: ColumnSelector,
                              prev_output_schema: Schema = None) -> Schema:
        entity = input_schema[self.entity_column]
        dims = entity.shape.dims
        columns = [ColumnSchema(self.join_key, dtype=np.int64, dims=dims)]
        columns += [ColumnSchema(name, dtype=_schema_dtype(dtype), dims=dims)
                    for name, dtype in self.features.items()]
        if self.found_column:
            columns.append(ColumnSchema(self.found_column, dtype=np.bool_, dims=dims))
        return Schema(columns)

    @property
    def supported_formats(self) -> DataFormats:
        return DataFormats.NUMPY_TENSOR_TABLE


def _schema_dtype(dtype: str):
    return np.dtype("O") if dtype in ("string", "string_list", "int64_list") else np.dtype(dtype)


def _column(values: list, dtype: str) -> np.ndarray:
    """Feast values as a numpy column; missing entries become "", 0 or empty lists (the row
    is flagged as not found)."""
    if dtype == "string":
        return np.array(["" if v is None else str(v) for v in values], dtype=object)
    if dtype.endswith("_list"):
        kind = np.int64 if dtype == "int64_list" else object
        column = np.empty(len(values), dtype=object)
        column[:] = [np.asarray([] if v is None else v, dtype=kind) for v in values]
        return column
    return np.array([0 if v is None else v for v in values], dtype=dtype)
