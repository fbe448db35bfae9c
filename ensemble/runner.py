"""Run an exported ensemble in-process: what the Triton model does per request, also used by
jobs and tests that need exactly the served graph without a server.

One base (:class:`GraphRunner`: load, validate the ids, compile the request's filter, run the
graph, return the contract's outputs) and one subclass per served model (:data:`RUNNERS`).
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
from merlin.dag import postorder_iter_nodes
from merlin.dag.runtime import Runtime
from merlin.systems.dag import Ensemble
from merlin.table import TensorTable

from core.contract import (FILTER_INPUTS, RECENT_ITEMS, RECOMMENDER, RELEASE, SIMILAR_ITEMS, BadRequest,
                           ModelContract)
from ensemble.events import EventsRunner
from ensemble.executor import ServingExecutor
from operators.feast_lookup import QueryFeatures
from operators.filters import FeatureKinds, FilterError, compile_filter
from operators.query_milvus import QueryMilvus
from operators.settings import serving_config


MAX_RECENT = 1000  # clicks per user in one request


class GraphRunner:
    """The loaded graph of one exported ensemble directory, answering its contract."""

    contract: ModelContract
    exports_metrics = False  # the Triton model exports its stage times and outcomes

    def __init__(self, ensemble: Ensemble, max_batch: int, release: int = 0):
        self.ensemble = ensemble
        self.max_batch = max_batch
        self.release = release
        self.executor = ServingExecutor()
        self.runtime = Runtime(executor=self.executor)
        self.operators = [node.op for node in postorder_iter_nodes(ensemble.graph.output_node,
                                                                   flatten_subgraphs=True)]
        self.filters = FilterScope(self.operators)

    @classmethod
    def load(cls, ensemble_dir: str | Path) -> "GraphRunner":
        """Load the pickled graph and every operator's artifacts from ``ensemble_dir``."""
        ensemble_dir = str(ensemble_dir)
        ensemble = Ensemble.load(ensemble_dir)
        for node in postorder_iter_nodes(ensemble.graph.output_node, flatten_subgraphs=True):
            node.op.load_artifacts(ensemble_dir)
        serving = serving_config(ensemble_dir).serving
        return cls(ensemble, serving.max_batch_users, serving.release)

    def validate(self, ids) -> np.ndarray:
        """Check the request's ids (shape, dtype, count); :class:`BadRequest` with a clear message."""
        name = self.contract.id_input
        array = np.asarray(ids)
        if array.dtype.kind not in "iu":
            raise BadRequest(f"{name} must be INT64, got {array.dtype}")
        if array.ndim != 1:
            raise BadRequest(f"{name} must be a 1-D batch of ids, got shape {list(array.shape)}")
        if array.size == 0:
            raise BadRequest(f"{name} is empty: send at least one {name.replace('_', ' ')}")
        if array.size > self.max_batch:
            raise BadRequest(f"{name} has {array.size} ids; at most {self.max_batch} per request")
        return array.astype(np.int64)

    def compile_filter(self, expression: str | None, values=None):
        """The request's filter (:mod:`operators.filters`) checked against this catalogue's
        item features, or ``None`` without one; :class:`BadRequest` if malformed."""
        return self.filters.compile(expression, values)

    def answer(self, inputs: dict) -> dict[str, np.ndarray]:
        """A request's answer from its inputs by name (the Triton model's entry): the filter
        inputs compiled, the contract's other inputs passed on as request columns."""
        item_filter = self.compile_filter(inputs.get("filter"), inputs.get("filter_values"))
        columns = {spec.name: inputs.get(spec.name) for spec in self.contract.inputs[1:]
                   if spec.name not in FILTER_INPUTS}
        return self.run(inputs[self.contract.id_input], item_filter, **columns)

    def run(self, ids, item_filter=None, **columns) -> dict[str, np.ndarray]:
        """The contract's outputs for each id, within ``item_filter`` (a compiled filter,
        :meth:`compile_filter`) if given; ``columns``: other request columns of the graph."""
        ids = self.validate(ids)
        with self.filters.applied(item_filter):
            table = TensorTable({self.contract.id_input: ids, **self.request_columns(len(ids), **columns)})
            result = self.ensemble.transform(table, runtime=self.runtime)
        answer = {output.name: np.asarray(result[output.name].values) for output in self.contract.graph_outputs}
        answer[RELEASE.name] = np.full(len(ids), self.release, dtype=np.int64)
        return answer

    def request_columns(self, rows: int, **columns) -> dict[str, np.ndarray]:
        """The graph's request columns besides the ids (none here)."""
        if columns:
            raise BadRequest(f"{self.contract.kind} takes no {', '.join(columns)}")
        return {}

    @property
    def last_timings(self) -> dict[str, float]:
        """Seconds spent in each operator during the last :meth:`run`."""
        return dict(self.executor.timings)


class Recommender(GraphRunner):
    """The ``recommender`` cascade (:func:`ensemble.graph.build_recommender`)."""

    contract = RECOMMENDER
    exports_metrics = True

    def __init__(self, ensemble: Ensemble, max_batch: int, release: int = 0):
        super().__init__(ensemble, max_batch, release)
        self._feature_lookups = [op for op in self.operators if isinstance(op, QueryFeatures)]

    def recommend(self, user_ids, item_filter=None, recent_items=None) -> dict[str, np.ndarray]:
        """Top-k raw item ids and scores (sorted) for each user id, the fallback flags, which
        path answered each user (``source``) and how many items are popular fill-ins
        (``filled``). ``item_filter``: a compiled filter (:meth:`compile_filter`) or ``None``;
        ``recent_items``: each user's clicks of this session (``[users, clicks]``, -1 padded)."""
        return self.run(user_ids, item_filter, recent_items=recent_items)

    def request_columns(self, rows: int, recent_items=None) -> dict[str, np.ndarray]:
        """``recent_items`` checked: ``[rows, clicks]`` integer ids (-1 pads), at most
        ``MAX_RECENT`` per row; none given is a row of padding."""
        none = {RECENT_ITEMS: np.full((rows, 1), -1, dtype=np.int64)}
        if recent_items is None:
            return none
        recent = np.asarray(recent_items)
        if recent.ndim == 1 and rows == 1:
            recent = recent.reshape(1, -1)
        if recent.dtype.kind not in "iu":
            raise BadRequest(f"{RECENT_ITEMS} must be INT64 item ids, got {recent.dtype}")
        if recent.ndim != 2 or recent.shape[0] != rows:
            raise BadRequest(f"{RECENT_ITEMS} must be [users, clicks] with one row per user id ({rows}), "
                             f"got shape {list(recent.shape)}")
        if recent.shape[1] > MAX_RECENT:
            raise BadRequest(f"{RECENT_ITEMS} has {recent.shape[1]} clicks per user; at most {MAX_RECENT}")
        if (recent < -1).any():
            raise BadRequest(f"{RECENT_ITEMS} holds item ids >= 0, padded with -1")
        return none if recent.shape[1] == 0 else {RECENT_ITEMS: recent.astype(np.int64)}

    @property
    def feature_store_failures(self) -> dict[str, int]:
        """Per feature view, ids served as missing rows because Feast could not be read."""
        totals: dict[str, int] = {}
        for op in self._feature_lookups:
            totals[op.feature_view] = totals.get(op.feature_view, 0) + op.failures
        return totals


class SimilarItemsRunner(GraphRunner):
    """The ``similar_items`` graph (:func:`ensemble.graph.build_similar_items`)."""

    contract = SIMILAR_ITEMS

    def similar(self, item_ids, item_filter=None) -> dict[str, np.ndarray]:
        """The nearest items of each item id, the item itself excluded, within ``item_filter``."""
        return self.run(item_ids, item_filter)


RUNNERS: dict[str, type] = {runner.contract.kind: runner for runner in (Recommender, SimilarItemsRunner, EventsRunner)}


class FilterScope:
    """The operators of a loaded graph that take a request's filter (``request_filter``:
    retrieval pushdown, post-ranking filter, popular fill) and what a filter may reference
    there (the item features the graph reads from Feast)."""

    def __init__(self, ops):
        self.operators = [op for op in ops if hasattr(op, "request_filter")]
        lookup = next((op for op in ops if isinstance(op, QueryFeatures) and op.feature_view == "item_features"), None)
        category = next((op.category_feature for op in ops if isinstance(op, QueryMilvus)), None)
        self.kinds = FeatureKinds.from_feast(dict(lookup.features) if lookup else {}, category)

    def compile(self, expression: str | None, values):
        """The compiled filter, ``None`` without an expression; ``BadRequest("filter: ...")`` if malformed."""
        if expression is None:
            if values is not None:
                raise BadRequest("filter: filter_values given without a filter")
            return None
        try:
            return compile_filter(expression, values, self.kinds)
        except FilterError as exc:
            raise BadRequest(f"filter: {exc}") from None

    @contextmanager
    def applied(self, item_filter):
        """Set ``item_filter`` on the operators for one request (a model instance serves one
        request at a time), and clear it afterwards whatever happens."""
        for op in self.operators:
            op.request_filter = item_filter
        try:
            yield
        finally:
            for op in self.operators:
                op.request_filter = None
