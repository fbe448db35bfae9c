"""MergeSession: a visitor's clicks of this session, given with the request, as their history.

The ``recommender`` takes an optional ``recent_items`` input: per user row, the item ids the
caller saw the visitor click, most recent first, padded with -1. Here they go in front of the
user's stored ``history`` (deduplicated, at most ``max_history``), and the interaction count
grows by their number, for this request only: the user tower and the ranker read the merged
history, retrieval excludes it. A user Feast does not know who brings clicks is answered from
them: ``user_found`` becomes true and ``session_user`` says so (``source = "session"``).
"""
from __future__ import annotations

import numpy as np
from merlin.dag import BaseOperator, ColumnSelector, DataFormats
from merlin.schema import ColumnSchema, Schema
from merlin.table import TensorTable

from core.contract import RECENT_ITEMS

SESSION_USER = "session_user"


class MergeSession(BaseOperator):
    """Merge ``recent_items`` into ``history_column`` (see the module docstring)."""

    def __init__(self, max_history: int, history_column: str = "history", found_column: str = "user_found",
                 count_column: str | None = None):
        super().__init__()
        self.max_history = int(max_history)
        self.history_column = history_column
        self.found_column = found_column
        self.count_column = count_column

    def transform(self, col_selector: ColumnSelector, transformable: TensorTable) -> TensorTable:
        recent = np.asarray(transformable[RECENT_ITEMS].values, dtype=np.int64)
        stored = transformable[self.history_column].values
        found = np.asarray(transformable[self.found_column].values, dtype=bool).reshape(-1)
        output = {name: transformable[name].values for name in transformable.columns if name != RECENT_ITEMS}
        clicks = [row[row >= 0] for row in recent]
        if not any(len(c) for c in clicks):
            output[SESSION_USER] = np.zeros(len(found), dtype=bool)
            return TensorTable(output)
        history = np.empty(len(stored), dtype=object)
        history[:] = [np.fromiter(dict.fromkeys(np.concatenate([c, np.asarray(h, dtype=np.int64)]).tolist()),
                                  dtype=np.int64)[: self.max_history] if len(c) else np.asarray(h, dtype=np.int64)
                      for c, h in zip(clicks, stored)]
        counts = np.array([len(c) for c in clicks])
        output[self.history_column] = history
        output[SESSION_USER] = ~found & (counts > 0)
        output[self.found_column] = found | (counts > 0)
        if self.count_column and self.count_column in output:
            output[self.count_column] = (np.asarray(output[self.count_column]) + counts).astype(
                np.asarray(output[self.count_column]).dtype)
        return TensorTable(output)

    def compute_output_schema(self, input_schema: Schema, col_selector: ColumnSelector,
                              prev_output_schema: Schema = None) -> Schema:
        columns = [column for column in input_schema if column.name != RECENT_ITEMS]
        rows = input_schema[self.found_column].shape.dims
        return Schema(columns + [ColumnSchema(SESSION_USER, dtype=np.bool_, dims=rows)])

    @property
    def supported_formats(self) -> DataFormats:
        return DataFormats.NUMPY_TENSOR_TABLE
