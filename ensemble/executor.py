"""A graph executor for serving: runs each node once per request and times it.

Merlin's ``LocalExecutor`` re-runs a node for every downstream path that reaches it (in this
graph the Feast user lookup and the Milvus search would run several times per request); this
one memoizes node outputs for the duration of one ``transform`` call and records how long each
stage took. A stage is every operator but Merlin's own column plumbing (selection, concat,
subset, subtraction, rename: what ``>>``, ``+`` and ``[...]`` add to a graph).
"""
from __future__ import annotations

import time
from collections import defaultdict

from merlin.dag.executors import LocalExecutor
from merlin.dag.ops.concat_columns import ConcatColumns
from merlin.dag.ops.rename import Rename
from merlin.dag.ops.selection import SelectionOp
from merlin.dag.ops.subset_columns import SubsetColumns
from merlin.dag.ops.subtraction import SubtractionOp

COLUMN_PLUMBING = (SelectionOp, ConcatColumns, SubsetColumns, SubtractionOp, Rename)


class ServingExecutor(LocalExecutor):
    """``LocalExecutor`` with per-request memoization and per-operator timings."""

    def __init__(self):
        super().__init__()
        self._outputs: dict[int, object] | None = None
        self.timings: dict[str, float] = defaultdict(float)

    def transform(self, transformable, graph, **kwargs):
        self._outputs = {}
        self.timings = defaultdict(float)
        try:
            return super().transform(transformable, graph, **kwargs)
        finally:
            self._outputs = None

    def _execute_node(self, node, transformable, capture_dtypes=False, strict=False):
        if self._outputs is None:
            return super()._execute_node(node, transformable, capture_dtypes, strict)
        key = id(node)
        if key not in self._outputs:
            self._outputs[key] = super()._execute_node(node, transformable, capture_dtypes, strict)
        return self._outputs[key]

    def _run_node_transform(self, node, input_data, capture_dtypes=False, strict=False):
        started = time.perf_counter()
        try:
            return super()._run_node_transform(node, input_data, capture_dtypes, strict)
        finally:
            if is_stage(node.op):
                self.timings[stage_name(node.op)] += time.perf_counter() - started


def is_stage(op) -> bool:
    """Whether ``op`` is a stage of the cascade (timed), not Merlin's column plumbing."""
    return not isinstance(op, COLUMN_PLUMBING)


def stage_name(op) -> str:
    """A readable name for an operator in timings (e.g. ``QueryFeatures[user_features]``)."""
    detail = getattr(op, "feature_view", None) or getattr(op, "name", None)
    label = type(op).__name__
    return f"{label}[{detail}]" if isinstance(detail, str) and detail else label
