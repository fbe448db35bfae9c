"""QueryFeatures: fetch online features from Feast for a column of entity ids.

The entity column may be ``[batch]`` (users) or ``[batch, k]`` (the candidates of each user);
every feature comes back in the same shape. The Feast repo is found at model start from the
serving configuration (never frozen into the pickle), and nothing is materialized here:
materialization is a job (``recsys features``), not a side effect of building a graph.
"""
from __future__ import annotations

from typing import Dict

import numpy as np
from merlin.dag import BaseOperator, ColumnSelector, DataFormats
from merlin.schema import ColumnSchema, Schema
from merlin.table import TensorTable

from operators.settings import serving_config


class FeatureStoreUnavailable(RuntimeError):
    """The Feast online store could not be read."""


class QueryFeatures(BaseOperator):
    """Look up ``features`` of ``feature_view`` for the ids in ``entity_column``.

    Parameters
    ----------
    feature_view : name of the Feast feature view.
    join_key : the entity's join key in Feast (e.g. ``item_id``).
    features : feature name -> numpy dtype string (``"str"``, ``"int64"``, ``"float32"``).
    entity_column : the input column holding raw entity ids (default: ``join_key``).
    found_column : if set, also output a boolean column telling which ids Feast knows.
    """

    def __init__(self, feature_view: str, join_key: str, features: Dict[str, str],
                 entity_column: str | None = None, found_column: str | None = None):
        super().__init__()
        self.feature_view = feature_view
        self.join_key = join_key
        self.features = dict(features)
        self.entity_column = entity_column or join_key
        self.found_column = found_column
        self._store = None
        self._feature_refs = [f"{feature_view}:{name}" for name in self.features]

    def load_artifacts(self, artifact_path: str | None = None) -> None:
        if artifact_path:  # Merlin also calls this with "" while building a graph
            self._open(artifact_path)

    def _open(self, artifact_path: str) -> None:
        from feast import FeatureStore

        repo = serving_config(artifact_path).feature_repo
        try:
            self._store = FeatureStore(repo_path=str(repo))
        except Exception as exc:  # Feast raises many types for a bad repo
            raise FeatureStoreUnavailable(f"cannot open the Feast repo at {repo}: {exc}") from exc

    def __getstate__(self) -> dict:
        # Clients, models and workflows are artifacts: loaded at model start, never pickled.
        return {**self.__dict__, "_store": None}

    def transform(self, col_selector: ColumnSelector, transformable: TensorTable) -> TensorTable:
        if self._store is None:
            self._open("")
        ids = np.asarray(transformable[self.entity_column].values)
        flat = ids.reshape(-1)
        rows = [{self.join_key: int(v)} for v in flat]
        try:
            found = self._store.get_online_features(features=self._feature_refs,
                                                    entity_rows=rows).to_dict()
        except Exception as exc:
            raise FeatureStoreUnavailable(
                f"Feast online store lookup for {self.feature_view} failed: {exc}") from exc
        present = np.ones(len(flat), dtype=bool)
        output = {self.join_key: ids.astype(np.int64)}
        for name, dtype in self.features.items():
            values = found[name]
            missing = np.fromiter((v is None for v in values), dtype=bool, count=len(values))
            present &= ~missing
            output[name] = _column(values, missing, dtype).reshape(ids.shape)
        if self.found_column:
            output[self.found_column] = present.reshape(ids.shape)
        return TensorTable(output)

    def compute_output_schema(self, input_schema: Schema, col_selector: ColumnSelector,
                              prev_output_schema: Schema = None) -> Schema:
        entity = input_schema[self.entity_column]
        dims = entity.shape.dims
        columns = [ColumnSchema(self.join_key, dtype=np.int64, dims=dims)]
        columns += [ColumnSchema(name, dtype=_schema_dtype(dtype), dims=dims)
                    for name, dtype in self.features.items()]
        if self.found_column:
            columns.append(ColumnSchema(self.found_column, dtype=np.bool_, dims=dims))
        return Schema(columns)

    @property
    def supported_formats(self) -> DataFormats:
        return DataFormats.NUMPY_TENSOR_TABLE


def _schema_dtype(dtype: str):
    return np.dtype("O") if dtype == "str" else np.dtype(dtype)


def _column(values: list, missing: np.ndarray, dtype: str) -> np.ndarray:
    """Feast values as a numpy column; missing entries become "" or 0 (they are flagged)."""
    if dtype == "str":
        return np.array(["" if v is None else str(v) for v in values], dtype=object)
    filled = [0 if m else v for v, m in zip(values, missing)]
    return np.asarray(filled, dtype=dtype)
