"""The last two steps of the cascade.

* :class:`OrderCandidates` sorts each user's candidates by the final score (descending) and
  keeps the best ``top_k``, as raw catalogue ids. The final score blends the per-user
  standardized ranking and retrieval scores with the weight training chose on validation
  (:func:`training.scoring.blend_scores`).
* :class:`PopularFallback` answers users Feast does not know with the most popular items
  (flagged in the ``fallback`` output), fills rows that retrieval left short, and says which
  path answered each user in ``source``: ``personalized`` (the user has interactions),
  ``features`` (Feast knows the user's features but no interaction: a cold user answered
  from features) or ``popular`` (unknown user).
"""
from __future__ import annotations

import numpy as np
from merlin.dag import BaseOperator, ColumnSelector, DataFormats
from merlin.schema import ColumnSchema, Schema
from merlin.table import TensorTable

from training.scoring import blend_scores

MISSING_ID = -1


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
    popularity list). Fallback scores are each item's share of training clicks; fill-ins of a
    short row get scores just below the row's last real score, so rows stay sorted.
    """

    def __init__(self, popular_ids, popular_scores, top_k: int = 10,
                 found_column: str = "user_found", history_column: str = "history"):
        super().__init__()
        self.top_k = int(top_k)
        self.found_column = found_column
        self.history_column = history_column
        self.popular_ids = np.asarray(popular_ids, dtype=np.int64)
        self.popular_scores = np.asarray(popular_scores, dtype=np.float32)

    def transform(self, col_selector: ColumnSelector, transformable: TensorTable) -> TensorTable:
        ids = np.array(transformable["item_ids"].values, dtype=np.int64)
        scores = np.array(transformable["scores"].values, dtype=np.float32)
        known = np.asarray(transformable[self.found_column].values, dtype=bool).reshape(-1)
        head = min(self.top_k, len(self.popular_ids))
        ids[~known] = MISSING_ID
        scores[~known] = -np.inf
        ids[~known, :head] = self.popular_ids[:head]
        scores[~known, :head] = self.popular_scores[:head]
        history = transformable[self.history_column].values
        for row in np.flatnonzero((ids == MISSING_ID).any(axis=1)):
            self._fill_row(ids[row], scores[row], set(np.asarray(history[row]).tolist()))
        has_history = np.array([len(h) > 0 for h in history], dtype=bool)
        source = np.where(~known, "popular", np.where(has_history, "personalized", "features")).astype(object)
        return TensorTable({"item_ids": ids, "scores": scores, "fallback": ~known, "source": source})

    def _fill_row(self, ids: np.ndarray, scores: np.ndarray, seen: set) -> None:
        slots = np.flatnonzero(ids == MISSING_ID)
        present = set(ids.tolist()) | seen
        extra = [i for i in self.popular_ids if i not in present][: len(slots)]
        last = scores[slots[0] - 1] if slots[0] > 0 else np.float32(1.0)
        for slot, item in zip(slots, extra):
            last = np.nextafter(np.float32(last), np.float32(-np.inf))
            ids[slot], scores[slot] = item, last

    def compute_output_schema(self, input_schema: Schema, col_selector: ColumnSelector,
                              prev_output_schema: Schema = None) -> Schema:
        dims = (None, self.top_k)
        return Schema([ColumnSchema("item_ids", dtype=np.int64, dims=dims),
                       ColumnSchema("scores", dtype=np.float32, dims=dims),
                       ColumnSchema("fallback", dtype=np.bool_, dims=(None,)),
                       ColumnSchema("source", dtype=np.dtype("O"), dims=(None,))])

    @property
    def supported_formats(self) -> DataFormats:
        return DataFormats.NUMPY_TENSOR_TABLE
