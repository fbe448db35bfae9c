"""QueryMilvus: approximate nearest-neighbour retrieval of candidate items in Milvus."""
from __future__ import annotations

import logging
import threading
import time

import numpy as np
from merlin.dag import BaseOperator, ColumnSelector, DataFormats
from merlin.schema import ColumnSchema, Schema
from merlin.table import TensorTable

from core.config import MilvusConfig
from operators.settings import serving_config
from vector_index.client import (CATEGORY_FIELD, ID_FIELD, WARM_UP_QUERIES, MilvusUnavailable, brief, connect,
                                 rpc_timeout, sample_vectors, search_arrays, search_limit, search_params,
                                 warm_up_search)

LOG = logging.getLogger(__name__)
MISSING_ID = -1


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
                                    f"{self._cfg.collection!r}: {brief(exc)}") from exc
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
                            brief(exc))

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
        limits = np.array([search_limit(self.top_k + len(e), cap) for e in excluded])
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
                                    f"failed after {waited:.1f}s: {brief(exc)}") from exc

    def compute_output_schema(self, input_schema: Schema, col_selector: ColumnSelector,
                              prev_output_schema: Schema = None) -> Schema:
        dims = (None, self.top_k)
        return Schema([ColumnSchema("candidate_ids", dtype=np.int64, dims=dims),
                       ColumnSchema("candidate_scores", dtype=np.float32, dims=dims)])

    @property
    def supported_formats(self) -> DataFormats:
        return DataFormats.NUMPY_TENSOR_TABLE
