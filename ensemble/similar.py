"""The ``similar_items`` model: item ids in, the items nearest to each (inner product of the
trained item vectors in the Milvus collection serving uses) out, the item itself excluded,
optionally within a filter (the same ``filter`` / ``filter_values`` inputs and engine as
``recommender``).

    model_repository/similar_items/
      config.pbtxt
      1/model.py            ensemble/similar_model.py
      1/ensemble/           the one-operator graph (SimilarItems) + serving.json
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from merlin.dag import postorder_iter_nodes
from merlin.dag.runtime import Runtime
from merlin.schema import ColumnSchema, Schema
from merlin.systems.dag import Ensemble
from merlin.table import TensorTable

from ensemble.errors import BadRequest
from ensemble.executor import ServingExecutor
from operators.feast_lookup import QueryFeatures
from operators.similar_items import SimilarItems
from operators.ordering import FilterCandidates, TopSimilar
from operators.settings import serving_config, write_serving_config
from core.config import Config
from core.artifacts import Artifacts

MODEL_VERSION = 1
OUTPUTS = ("item_ids", "scores", "found")
REQUEST_SCHEMA = Schema([ColumnSchema("item_id", dtype=np.int64, dims=(None,))])

_CONFIG_TEMPLATE = """name: "{name}"
backend: "python"
max_batch_size: 0
input [
  {{ name: "item_id" data_type: TYPE_INT64 dims: [ -1 ] }},
  {{ name: "filter" data_type: TYPE_STRING dims: [ 1 ] optional: true }},
  {{ name: "filter_values" data_type: TYPE_STRING dims: [ 1 ] optional: true }}
]
output [
  {{ name: "item_ids" data_type: TYPE_INT64 dims: [ -1, {k} ] }},
  {{ name: "scores" data_type: TYPE_FP32 dims: [ -1, {k} ] }},
  {{ name: "found" data_type: TYPE_BOOL dims: [ -1 ] }}
]
instance_group [
  {{ kind: KIND_CPU count: 1 }}
]
"""


class BadItemRequest(BadRequest):
    """The ``similar_items`` request itself is wrong (the caller can fix it)."""


def build_similar_ensemble(config: Config, artifacts: Artifacts) -> Ensemble:
    """item_id -> the ``retrieval_k`` nearest items in Milvus (the request filter's Milvus part
    pushed down) -> their Feast features -> the request filter -> the first ``top_k``, filled
    from the popular items within the filter."""
    from ensemble.graph import feast_features, popular_item_features
    from core.contract import CATEGORY_FEATURE

    popular = pd.read_parquet(artifacts.popular_items)["item_id"].to_numpy()
    views = feast_features(config)["item_features"]
    nearest = ["item_id"] >> SimilarItems(
        top_k=config.serving.retrieval_k, fill_ids=popular,
        category_feature=CATEGORY_FEATURE if CATEGORY_FEATURE in views else None)
    candidates = nearest["item_ids"]
    if views:
        item_raw = nearest["item_ids"] >> QueryFeatures(
            "item_features", "item_id", views, entity_column="item_ids",
            cache_ttl_s=config.serving.feature_cache_ttl_s,
            warm_ids=pd.read_parquet(artifacts.items)["item_id"].to_numpy())
        candidates = candidates + item_raw[list(views)]
    kept = candidates >> FilterCandidates(id_column="item_ids")
    answer = (kept + nearest["scores", "found"] + ["item_id"]) >> TopSimilar(
        popular, config.serving.top_k, popular_features=popular_item_features(config, popular, views))
    return Ensemble(answer, REQUEST_SCHEMA)


def export_similar_items(config: Config, artifacts: Artifacts) -> Path:
    """Write ``<model_repository>/<similar_model_name>``; returns the model directory."""
    model_dir = config.model_repository / config.serving.similar_model_name
    if model_dir.exists():
        shutil.rmtree(model_dir)
    ensemble_dir = model_dir / str(MODEL_VERSION) / "ensemble"
    ensemble_dir.mkdir(parents=True)
    ensemble = build_similar_ensemble(config, artifacts)
    for node in postorder_iter_nodes(ensemble.graph.output_node, flatten_subgraphs=True):
        node.op.save_artifacts(str(ensemble_dir))
    ensemble.save(str(ensemble_dir))
    write_serving_config(config, ensemble_dir)
    shutil.copyfile(Path(__file__).with_name("similar_model.py"), model_dir / str(MODEL_VERSION) / "model.py")
    (model_dir / "config.pbtxt").write_text(
        _CONFIG_TEMPLATE.format(name=config.serving.similar_model_name, k=config.serving.top_k))
    return model_dir


class SimilarItemsRunner:
    """The loaded ``similar_items`` graph, run in-process (what the Triton model does)."""

    def __init__(self, ensemble: Ensemble, max_batch_items: int):
        from ensemble.runner import FilterScope

        self.ensemble = ensemble
        self.max_batch_items = max_batch_items
        self.runtime = Runtime(executor=ServingExecutor())
        self.filters = FilterScope([node.op for node in postorder_iter_nodes(ensemble.graph.output_node,
                                                                             flatten_subgraphs=True)])

    @classmethod
    def load(cls, ensemble_dir: str | Path) -> "SimilarItemsRunner":
        ensemble_dir = str(ensemble_dir)
        ensemble = Ensemble.load(ensemble_dir)
        for node in postorder_iter_nodes(ensemble.graph.output_node, flatten_subgraphs=True):
            node.op.load_artifacts(ensemble_dir)
        return cls(ensemble, serving_config(ensemble_dir).serving.max_batch_users)

    def compile_filter(self, expression: str | None, values=None):
        """The request's filter checked against the item features (:class:`BadItemRequest` if
        malformed), or ``None``."""
        return self.filters.compile(expression, values, BadItemRequest)

    def similar(self, item_ids, item_filter=None) -> dict[str, np.ndarray]:
        """The nearest items of each item id (see the module docstring), within ``item_filter``
        (a compiled filter, :meth:`compile_filter`) if given."""
        array = np.asarray(item_ids)
        if array.dtype.kind not in "iu":
            raise BadItemRequest(f"item_id must be INT64, got {array.dtype}")
        if array.ndim != 1:
            raise BadItemRequest(f"item_id must be a 1-D batch of ids, got shape {list(array.shape)}")
        if array.size == 0:
            raise BadItemRequest("item_id is empty: send at least one item id")
        if array.size > self.max_batch_items:
            raise BadItemRequest(f"item_id has {array.size} ids; at most {self.max_batch_items} per request")
        with self.filters.applied(item_filter):
            result = self.ensemble.transform(TensorTable({"item_id": array.astype(np.int64)}),
                                             runtime=self.runtime)
        return {name: np.asarray(result[name].values) for name in OUTPUTS}
