"""Run an exported ensemble in-process: what the Triton model does per request, also used by
jobs and tests that need exactly the served cascade without a server."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
from merlin.dag import postorder_iter_nodes
from merlin.dag.runtime import Runtime
from merlin.systems.dag import Ensemble
from merlin.table import TensorTable

from ensemble.errors import BadRequest
from ensemble.executor import ServingExecutor

OUTPUTS = ("item_ids", "scores", "fallback", "source", "filled")


class Recommender:
    """The loaded cascade of one exported ensemble directory."""

    def __init__(self, ensemble: Ensemble, max_batch_users: int):
        from operators.feast_lookup import QueryFeatures

        self.ensemble = ensemble
        self.max_batch_users = max_batch_users
        self.executor = ServingExecutor()
        self.runtime = Runtime(executor=self.executor)
        ops = [node.op for node in postorder_iter_nodes(ensemble.graph.output_node, flatten_subgraphs=True)]
        self._feature_lookups = [op for op in ops if isinstance(op, QueryFeatures)]
        self.filters = FilterScope(ops)

    @classmethod
    def load(cls, ensemble_dir: str | Path) -> "Recommender":
        """Load the pickled graph and every operator's artifacts from ``ensemble_dir``."""
        from operators.settings import serving_config

        ensemble_dir = str(ensemble_dir)
        ensemble = Ensemble.load(ensemble_dir)
        for node in postorder_iter_nodes(ensemble.graph.output_node, flatten_subgraphs=True):
            node.op.load_artifacts(ensemble_dir)
        return cls(ensemble, serving_config(ensemble_dir).serving.max_batch_users)

    def validate(self, user_ids) -> np.ndarray:
        """Check the request shape and dtype; raise :class:`BadRequest` with a clear message."""
        array = np.asarray(user_ids)
        if array.dtype.kind not in "iu":
            raise BadRequest(f"user_id must be INT64, got {array.dtype}")
        if array.ndim != 1:
            raise BadRequest(f"user_id must be a 1-D batch of ids, got shape {list(array.shape)}")
        if array.size == 0:
            raise BadRequest("user_id is empty: send at least one user id")
        if array.size > self.max_batch_users:
            raise BadRequest(f"user_id has {array.size} ids; at most {self.max_batch_users} per request")
        return array.astype(np.int64)

    def compile_filter(self, expression: str | None, values=None):
        """The request's filter (:mod:`operators.filters`) checked against this catalogue's
        item features, or ``None`` without one; :class:`BadRequest` if malformed."""
        return self.filters.compile(expression, values, BadRequest)

    def recommend(self, user_ids, item_filter=None) -> dict[str, np.ndarray]:
        """Top-k raw item ids and scores (sorted) for each user id, the fallback flags, which
        path answered each user (``source``) and how many items are popular fill-ins
        (``filled``). ``item_filter``: a compiled filter (:meth:`compile_filter`) or ``None``."""
        request = TensorTable({"user_id": self.validate(user_ids)})
        with self.filters.applied(item_filter):
            result = self.ensemble.transform(request, runtime=self.runtime)
        return {name: np.asarray(result[name].values) for name in OUTPUTS}

    @property
    def feature_store_failures(self) -> dict[str, int]:
        """Per feature view, ids served as missing rows because Feast could not be read."""
        totals: dict[str, int] = {}
        for op in self._feature_lookups:
            totals[op.feature_view] = totals.get(op.feature_view, 0) + op.failures
        return totals

    @property
    def last_timings(self) -> dict[str, float]:
        """Seconds spent in each operator during the last :meth:`recommend` call."""
        return dict(self.executor.timings)


class FilterScope:
    """The operators of a loaded graph that take a request's filter (``request_filter``:
    retrieval pushdown, post-ranking filter, popular fill) and what a filter may reference
    there (the item features the graph reads from Feast)."""

    def __init__(self, ops):
        from operators.feast_lookup import QueryFeatures
        from operators.filters import FeatureKinds
        from operators.query_milvus import QueryMilvus

        self.operators = [op for op in ops if hasattr(op, "request_filter")]
        lookup = next((op for op in ops if isinstance(op, QueryFeatures) and op.feature_view == "item_features"), None)
        category = next((op.category_feature for op in ops if isinstance(op, QueryMilvus)), None)
        self.kinds = FeatureKinds.from_feast(dict(lookup.features) if lookup else {}, category)

    def compile(self, expression: str | None, values, error: type[Exception]):
        """The compiled filter, ``None`` without an expression; ``error("filter: ...")`` if malformed."""
        from operators.filters import FilterError, compile_filter

        if expression is None:
            if values is not None:
                raise error("filter: filter_values given without a filter")
            return None
        try:
            return compile_filter(expression, values, self.kinds)
        except FilterError as exc:
            raise error(f"filter: {exc}") from None

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
