"""The last two steps of the cascade.

* :class:`OrderCandidates` sorts each user's candidates by the final score (descending) and
  keeps the best ``top_k``, as raw catalogue ids. The final score blends the per-user
  standardized ranking and retrieval scores with the weight training chose on validation
  (:func:`core.scoring.blend_scores`).
* :class:`PopularFallback` answers users Feast does not know with the most popular items
  (flagged in the ``fallback`` output), fills rows that retrieval or a filter left short
  (counted in ``filled``), and says which path answered each user in ``source``:
  ``personalized`` (the user has interactions), ``features`` (Feast knows the user's features
  but no interaction: a cold user answered from features), ``session`` (Feast does not know
  the user, the request brought their recent clicks) or ``popular`` (unknown user).

Before them, :class:`FilterCandidates` applies the request's business filter
(:mod:`operators.filters`) to the ranked candidates. The filter is request-scoped: the runner
sets ``request_filter`` on the operators that take one for the duration of a request.
"""
from __future__ import annotations

import numpy as np
from merlin.dag import BaseOperator, ColumnSelector, DataFormats
from merlin.schema import ColumnSchema, Schema
from merlin.table import TensorTable

from core.contract import RECOMMENDER, SIMILAR_ITEMS
from core.scoring import blend_scores
from operators.schemas import contract_schema

MISSING_ID = -1


class FilterCandidates(BaseOperator):
    """``candidate_ids`` ``[batch, k]`` + the candidates' raw item features (Feast) in;
    ``candidate_ids`` out, with the candidates the request's filter rejects replaced by -1
    (they sort last and are filled from the popular items). Without a filter: unchanged."""

    def __init__(self, id_column: str = "candidate_ids"):
        super().__init__()
        self.id_column = id_column
        self.request_filter = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "request_filter": None}

    def transform(self, col_selector: ColumnSelector, transformable: TensorTable) -> TensorTable:
        ids = np.asarray(transformable[self.id_column].values, dtype=np.int64)
        item_filter = self.request_filter
        if item_filter is None:
            return TensorTable({self.id_column: ids})
        columns = {name: np.asarray(transformable[name].values, dtype=object).reshape(-1)
                   for name in item_filter.features}
        keep = item_filter.keep(ids.reshape(-1), columns).reshape(ids.shape)
        return TensorTable({self.id_column: np.where(keep, ids, MISSING_ID)})

    def compute_output_schema(self, input_schema: Schema, col_selector: ColumnSelector,
                              prev_output_schema: Schema = None) -> Schema:
        return Schema([input_schema[self.id_column].with_name(self.id_column)])

    @property
    def supported_formats(self) -> DataFormats:
        return DataFormats.NUMPY_TENSOR_TABLE


class OrderCandidates(BaseOperator):
    """``candidate_ids`` + ``ranking_score`` ``[batch, k]`` -> ``item_ids`` + ``scores``
    ``[batch, top_k]``, sorted by score; padded candidates (id -1) sort last."""

    def __init__(self, top_k: int = 10, retrieval_weight: float = 0.0, id_column: str = "candidate_ids",
                 score_column: str = "ranking_score", retrieval_column: str = "candidate_scores"):
        super().__init__()
        self.top_k = int(top_k)
        self.retrieval_weight = float(retrieval_weight)
        self.id_column = id_column
        self.score_column = score_column
        self.retrieval_column = retrieval_column

    def transform(self, col_selector: ColumnSelector, transformable: TensorTable) -> TensorTable:
        ids = np.asarray(transformable[self.id_column].values, dtype=np.int64)
        ranking = np.asarray(transformable[self.score_column].values, dtype=np.float32)
        retrieval = np.asarray(transformable[self.retrieval_column].values, dtype=np.float32)
        ranking = np.where(ids == MISSING_ID, -np.inf, ranking)
        retrieval = np.where(ids == MISSING_ID, -np.inf, retrieval)  # removed ones do not weigh
        scores = blend_scores(retrieval, ranking, self.retrieval_weight)
        width = min(self.top_k, ids.shape[1])
        order = np.argsort(-scores, axis=1, kind="stable")[:, :width]
        top_ids = np.take_along_axis(ids, order, axis=1)
        top_scores = np.take_along_axis(scores, order, axis=1)
        if width < self.top_k:
            pad = self.top_k - width
            top_ids = np.pad(top_ids, ((0, 0), (0, pad)), constant_values=MISSING_ID)
            top_scores = np.pad(top_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        return TensorTable({"item_ids": top_ids, "scores": top_scores})

    def compute_output_schema(self, input_schema: Schema, col_selector: ColumnSelector,
                              prev_output_schema: Schema = None) -> Schema:
        dims = (None, self.top_k)
        return Schema([ColumnSchema("item_ids", dtype=np.int64, dims=dims),
                       ColumnSchema("scores", dtype=np.float32, dims=dims)])

    @property
    def supported_formats(self) -> DataFormats:
        return DataFormats.NUMPY_TENSOR_TABLE


class PopularFallback(BaseOperator):
    """Serve the most popular items to unknown users, and fill short rows.

    Inputs ``item_ids``, ``scores`` ``[batch, top_k]`` and ``found_column`` ``[batch]``.
    Outputs the same two columns plus ``fallback`` (BOOL ``[batch]``, true where the row is the
    popularity list), ``source`` and ``filled`` (INT32 ``[batch]``: how many of the row's items
    are popular fill-ins). Fallback scores are each item's share of training clicks; fill-ins
    of a short row get scores just below the row's last real score, so rows stay sorted.

    With a request filter, only popular items that pass it are used (``popular_features``
    holds their raw features); a row that even those cannot fill keeps -1 ids (score -inf)
    at its end.
    """

    session_column = None  # graphs exported before sessions have none

    def __init__(self, popular_ids, popular_scores, top_k: int = 10,
                 found_column: str = "user_found", history_column: str = "history",
                 popular_features: dict | None = None, session_column: str | None = None):
        super().__init__()
        self.session_column = session_column
        self.top_k = int(top_k)
        self.found_column = found_column
        self.history_column = history_column
        self.popular_ids = np.asarray(popular_ids, dtype=np.int64)
        self.popular_scores = np.asarray(popular_scores, dtype=np.float32)
        self.popular_features = {name: list(values) for name, values in (popular_features or {}).items()}
        self.request_filter = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "request_filter": None}

    def _allowed(self) -> tuple[np.ndarray, np.ndarray]:
        """The popular ids and scores the request's filter lets through, most popular first."""
        item_filter = self.request_filter
        if item_filter is None:
            return self.popular_ids, self.popular_scores
        unknown = [name for name in item_filter.features if name not in self.popular_features]
        columns = {name: self.popular_features.get(name, [None] * len(self.popular_ids))
                   for name in item_filter.features}
        keep = item_filter.keep(self.popular_ids, columns)
        if unknown:
            keep[:] = False
        return self.popular_ids[keep], self.popular_scores[keep]

    def transform(self, col_selector: ColumnSelector, transformable: TensorTable) -> TensorTable:
        ids = np.array(transformable["item_ids"].values, dtype=np.int64)
        scores = np.array(transformable["scores"].values, dtype=np.float32)
        known = np.asarray(transformable[self.found_column].values, dtype=bool).reshape(-1)
        popular_ids, popular_scores = self._allowed()
        head = min(self.top_k, len(popular_ids))
        filled = np.zeros(len(ids), dtype=np.int32)
        ids[~known] = MISSING_ID
        scores[~known] = -np.inf
        ids[~known, :head] = popular_ids[:head]
        scores[~known, :head] = popular_scores[:head]
        filled[~known] = head
        history = transformable[self.history_column].values
        for row in np.flatnonzero((ids == MISSING_ID).any(axis=1) & known):
            filled[row] = self._fill_row(ids[row], scores[row], set(np.asarray(history[row]).tolist()),
                                         popular_ids)
        has_history = np.array([len(h) > 0 for h in history], dtype=bool)
        source = np.where(~known, "popular", np.where(has_history, "personalized", "features")).astype(object)
        if self.session_column and self.session_column in transformable.columns:
            source[np.asarray(transformable[self.session_column].values, dtype=bool).reshape(-1)] = "session"
        return TensorTable({"item_ids": ids, "scores": scores, "fallback": ~known, "source": source,
                            "filled": filled})

    @staticmethod
    def _fill_row(ids: np.ndarray, scores: np.ndarray, seen: set, popular_ids: np.ndarray) -> int:
        slots = np.flatnonzero(ids == MISSING_ID)
        present = set(ids.tolist()) | seen
        extra = [i for i in popular_ids.tolist() if i not in present][: len(slots)]
        last = scores[slots[0] - 1] if slots[0] > 0 else np.float32(1.0)
        for slot, item in zip(slots, extra):
            last = np.nextafter(np.float32(last), np.float32(-np.inf))
            ids[slot], scores[slot] = item, last
        return len(extra)

    def compute_output_schema(self, input_schema: Schema, col_selector: ColumnSelector,
                              prev_output_schema: Schema = None) -> Schema:
        return contract_schema(RECOMMENDER, self.top_k)

    @property
    def supported_formats(self) -> DataFormats:
        return DataFormats.NUMPY_TENSOR_TABLE


class TopSimilar(PopularFallback):
    """The last step of ``similar_items``: ``item_ids`` / ``scores`` ``[batch, depth]`` (nearest
    first, -1 where the request's filter rejected an item), ``found`` and the requested
    ``item_id`` ``[batch]`` in; the first ``top_k`` remaining items per row out, filled from the
    popular items that pass the filter (never the item itself), then -1 / -inf."""

    def __init__(self, popular_ids, top_k: int = 10, popular_features: dict | None = None):
        super().__init__(popular_ids, np.zeros(len(popular_ids), dtype=np.float32), top_k,
                         popular_features=popular_features)

    def transform(self, col_selector: ColumnSelector, transformable: TensorTable) -> TensorTable:
        ids = np.asarray(transformable["item_ids"].values, dtype=np.int64)
        scores = np.asarray(transformable["scores"].values, dtype=np.float32)
        asked = np.asarray(transformable["item_id"].values, dtype=np.int64).reshape(-1)
        popular_ids, _ = self._allowed()
        out_ids = np.full((len(ids), self.top_k), MISSING_ID, dtype=np.int64)
        out_scores = np.full((len(ids), self.top_k), -np.inf, dtype=np.float32)
        for row in range(len(ids)):
            kept = np.flatnonzero(ids[row] != MISSING_ID)[: self.top_k]
            out_ids[row, : len(kept)] = ids[row, kept]
            out_scores[row, : len(kept)] = scores[row, kept]
            if len(kept) < self.top_k:
                self._fill_row(out_ids[row], out_scores[row], {int(asked[row])}, popular_ids)
        return TensorTable({"item_ids": out_ids, "scores": out_scores,
                            "found": np.asarray(transformable["found"].values, dtype=bool)})

    def compute_output_schema(self, input_schema: Schema, col_selector: ColumnSelector,
                              prev_output_schema: Schema = None) -> Schema:
        return contract_schema(SIMILAR_ITEMS, self.top_k)
