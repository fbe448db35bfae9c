"""SimilarItems: the items nearest to given items in the Milvus collection serving uses."""
from __future__ import annotations

import numpy as np
from merlin.dag import ColumnSelector
from merlin.schema import Schema
from merlin.table import TensorTable

from core.contract import SIMILAR_ITEMS
from operators.query_milvus import QueryMilvus
from operators.schemas import contract_schema
from vector_index.client import ID_FIELD, VECTOR_FIELD, MilvusUnavailable, brief, rpc_timeout, search_limit


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
                             search_limit(self.top_k + 1, cap)) if len(rows) else [])
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
                                    f"failed: {brief(exc)}") from exc
        return {int(row[ID_FIELD]): np.asarray(row[VECTOR_FIELD], dtype=np.float32) for row in rows}

    def compute_output_schema(self, input_schema: Schema, col_selector: ColumnSelector,
                              prev_output_schema: Schema = None) -> Schema:
        return contract_schema(SIMILAR_ITEMS, self.top_k)
