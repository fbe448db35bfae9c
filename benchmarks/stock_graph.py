"""The reference request path built from the stock Merlin Systems operators, for the serving
benchmark's side-by-side comparison (``python -m benchmarks.serve --compare-stock``).

One user per request, as in Merlin's multi-stage example:

    user_id -> QueryFeast(user_features) -> TransformWorkflow(user) -> query tower
            -> QueryMilvus (ours: Merlin has no Milvus operator) -> QueryFeast(item_features)
            -> TransformWorkflow(item) -> DLRM -> SoftmaxSampling (top_k)

The models, workflows, Feast repository, Milvus collection and retrieval settings are the ones
our ``recommender`` model serves, so both graphs rank the same candidates. What differs is the
stock operators: ``QueryFeast`` calls ``FeatureStore.get_online_features`` per request,
``TransformWorkflow`` runs NVTabular's DataFrame executor, ``SoftmaxSampling`` orders, and
Merlin's ``LocalExecutor`` runs the graph (re-running shared nodes once per downstream path).

Three things the stock operators cannot do here are bridged, each by the smallest step:

- ``QueryFeast.from_feature_view`` knows only int/float features (our views have strings),
  so the operator is built with its own constructor and schemas written from the view.
- Merlin's in-process ``PredictTensorflow`` drops its model when pickled (and the Triton
  installable here has no TensorFlow backend), so our ``PredictSavedModel`` runs the same
  SavedModels; :class:`ModelLayout` turns NVTabular's ragged lists and flat candidate rows
  into the ``[1, k]`` / padded layout the models take.
- The export uses Merlin's ``TritonExecutorRuntime`` with an empty op table, which writes a
  single ``executor_model`` (Python backend) running every operator in-process.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from merlin.dag import BaseOperator, ColumnSelector, DataFormats
from merlin.schema import ColumnSchema, Schema
from merlin.table import TensorTable

from core.artifacts import Artifacts
from core.config import Config
from core.contract import RECOMMENDER
from ensemble.graph import feast_features, request_schema
from operators.query_milvus import QueryMilvus
from operators.settings import write_serving_config
from operators.tensorflow import PredictSavedModel
from training.features import HISTORY

STOCK_MODEL_NAME = "stock_recommender"
_FEAST_DTYPES = {"string": (np.dtype(object), False), "float32": (np.float32, False),
                 "float64": (np.float64, False), "int64": (np.int64, False), "int32": (np.int32, False),
                 "string_list": (np.dtype(object), True), "int64_list": (np.int64, True),
                 "int32_list": (np.int32, True), "float32_list": (np.float32, True)}


class ModelLayout(BaseOperator):
    """Columns as our SavedModels take them: floats as float32, ragged lists as matrices
    padded with ``pad``; with ``candidates=True`` the flat candidate rows of the one user of
    the request become ``[1, k]`` (lists ``[1, k, length]``)."""

    def __init__(self, candidates: bool = False, pad: int = 0):
        super().__init__()
        self.candidates = candidates
        self.pad = pad

    def transform(self, col_selector: ColumnSelector, transformable: TensorTable) -> TensorTable:
        out = {}
        for name in col_selector.names:
            column = transformable[name]
            if column.offsets is not None:
                offsets = np.asarray(column.offsets, dtype=np.int64)
                values = np.asarray(column.values)
                rows = [values[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
                matrix = np.full((len(rows), max([len(r) for r in rows] + [1])), self.pad, dtype=values.dtype)
                for i, row in enumerate(rows):
                    matrix[i, : len(row)] = row
                array = matrix
            else:
                array = np.asarray(column.values)
            if array.dtype.kind == "f":
                array = array.astype(np.float32)
            out[name] = array[np.newaxis] if self.candidates else array
        return TensorTable(out)

    def compute_output_schema(self, input_schema: Schema, col_selector: ColumnSelector,
                              prev_output_schema: Schema = None) -> Schema:
        columns = []
        for name in col_selector.names:
            col = input_schema[name]
            dtype = np.float32 if col.dtype.element_type.value == "float" else col.dtype.to_numpy
            dims = (None,) + ((None,) if self.candidates else ()) + ((None,) if col.is_list else ())
            columns.append(ColumnSchema(name, dtype=dtype, dims=dims))
        return Schema(columns)

    @property
    def supported_formats(self) -> DataFormats:
        return DataFormats.NUMPY_TENSOR_TABLE


class FlattenCandidates(BaseOperator):
    """``candidate_ids`` ``[1, k]`` as the ``item_id`` rows ``QueryFeast`` looks up."""

    def transform(self, col_selector: ColumnSelector, transformable: TensorTable) -> TensorTable:
        return TensorTable({"item_id": np.asarray(transformable["candidate_ids"].values).reshape(-1)})

    def compute_output_schema(self, input_schema: Schema, col_selector: ColumnSelector,
                              prev_output_schema: Schema = None) -> Schema:
        return Schema([ColumnSchema("item_id", dtype=np.int64, dims=(None,))])

    @property
    def supported_formats(self) -> DataFormats:
        return DataFormats.NUMPY_TENSOR_TABLE


def stock_query_feast(config: Config, view: str, entity: str, features: dict[str, str]):
    """Merlin's ``QueryFeast`` for ``view`` (its constructor materializes the view, as stock)."""
    from merlin.systems.dag.ops.feast import QueryFeast

    scalars = [name for name, kind in features.items() if not _FEAST_DTYPES[kind][1]]
    lists = [name for name, kind in features.items() if _FEAST_DTYPES[kind][1]]
    output = Schema([ColumnSchema(entity, dtype=np.int64)] + [
        ColumnSchema(name, dtype=_FEAST_DTYPES[kind][0], is_list=_FEAST_DTYPES[kind][1],
                     is_ragged=_FEAST_DTYPES[kind][1]) for name, kind in features.items()])
    return QueryFeast(str(config.feature_repo), entity, view, entity, scalars, lists,
                      Schema([ColumnSchema(entity, dtype=np.int64)]), output, include_id=True)


def build_stock_ensemble(config: Config, artifacts: Artifacts):
    """The stock-operator graph over the same artifacts as :func:`ensemble.graph.build_recommender`."""
    import nvtabular as nvt
    import pandas as pd
    from merlin.systems.dag import Ensemble
    from merlin.systems.dag.ops.softmax_sampling import SoftmaxSampling
    from merlin.systems.dag.ops.workflow import TransformWorkflow

    serving = config.serving
    views = feast_features(config)
    popular = pd.read_parquet(artifacts.popular_items)
    embedding_dim = int(pd.read_parquet(artifacts.item_vectors).iloc[0]["embedding"].shape[0])
    user_workflow = nvt.Workflow.load(str(artifacts.user_workflow))
    item_workflow = nvt.Workflow.load(str(artifacts.item_workflow))

    user_raw = ["user_id"] >> stock_query_feast(config, "user_features", "user_id", views["user_features"])
    user_encoded = user_raw >> TransformWorkflow(user_workflow)
    user_columns = user_encoded >> ModelLayout()
    user_vector = user_columns >> PredictSavedModel(artifacts.query_tower, "query_tower", "user_embedding",
                                                    (None, embedding_dim))
    exclude = serving.exclude_seen and HISTORY in views["user_features"]
    retrieval_input = (user_vector + (user_raw[HISTORY] >> ModelLayout(pad=-1))) if exclude else user_vector
    candidates = retrieval_input >> QueryMilvus(top_k=serving.retrieval_k, exclude_column=HISTORY if exclude else None,
                                                fill_ids=popular["item_id"].to_numpy())
    item_raw = (candidates["candidate_ids"] >> FlattenCandidates()) >> stock_query_feast(
        config, "item_features", "item_id", views["item_features"])
    item_columns = item_raw >> TransformWorkflow(item_workflow) >> ModelLayout(candidates=True)
    ranked = (user_columns + item_columns) >> PredictSavedModel(
        artifacts.ranking_model, "dlrm", "ranking_score", (None, serving.retrieval_k))
    # Merlin's multi-stage example orders with SoftmaxSampling at temperature 1e-8.
    ordered = candidates["candidate_ids"] >> SoftmaxSampling(ranked["ranking_score"], temperature=1e-8,
                                                             topk=serving.top_k)
    return Ensemble(ordered, request_schema(RECOMMENDER))


def export_stock_model(config: Config, artifacts: Artifacts, repository: Path,
                       name: str = STOCK_MODEL_NAME) -> Path:
    """Write the stock graph as the Triton model ``name`` in ``repository`` (replacing it) with
    Merlin's ``TritonExecutorRuntime`` (empty op table: one in-process ``executor_model``)."""
    from merlin.systems.dag.runtimes.triton import TritonExecutorRuntime

    class InProcessRuntime(TritonExecutorRuntime):
        def __init__(self):
            super().__init__()
            self.op_table = {}

    repository = Path(repository)
    if (repository / name).exists():
        shutil.rmtree(repository / name)
    ensemble = build_stock_ensemble(config, artifacts)
    ensemble.export(str(repository), runtime=InProcessRuntime(), name=name)
    write_serving_config(config, repository / name / "1" / "ensemble")
    return repository
