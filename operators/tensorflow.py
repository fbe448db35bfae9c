"""PredictSavedModel: run a TensorFlow SavedModel in-process (the only Triton installable here
has just the Python backend).

The SavedModel is copied beside the ensemble at export and loaded at model start; it is never
part of the pickle. Columns are passed as they are: the models of this project take user
columns as ``[batch]`` and candidate columns as ``[batch, k]`` and broadcast inside, so one
call ranks every candidate of every user (``[batch, k]`` out) and the user tower gives
``[batch, dim]``.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from merlin.dag import BaseOperator, ColumnSelector, DataFormats
from merlin.schema import ColumnSchema, Schema
from merlin.table import TensorTable


class PredictSavedModel(BaseOperator):
    """Call the ``serving_default`` signature of the SavedModel at ``model_path``.

    Parameters
    ----------
    model_path : directory of the SavedModel.
    name : artifact name (the directory beside the ensemble).
    output_column : name of the produced column.
    output_dims : shape of the output column (e.g. ``(None, 64)`` or ``(None, 100)``).
    """

    def __init__(self, model_path: str | Path, name: str, output_column: str, output_dims: tuple):
        super().__init__()
        self.source_path = str(model_path)
        self.name = name
        self.output_column = output_column
        self.output_dims = tuple(output_dims)
        signature = _load_signature(self.source_path)
        self.input_specs = {k: v.dtype.name for k, v in signature.structured_input_signature[1].items()}
        self._signature = None

    def __getstate__(self) -> dict:
        # Clients, models and workflows are artifacts: loaded at model start, never pickled.
        return {**self.__dict__, "_signature": None}

    def save_artifacts(self, artifact_path: str) -> None:
        target = Path(artifact_path) / f"model_{self.name}"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(self.source_path, target)

    def load_artifacts(self, artifact_path: str | None = None) -> None:
        if artifact_path:  # Merlin also calls this with "" while building a graph
            self._signature = _load_signature(str(Path(artifact_path) / f"model_{self.name}"))

    def transform(self, col_selector: ColumnSelector, transformable: TensorTable) -> TensorTable:
        import tensorflow as tf

        if self._signature is None:
            self._signature = _load_signature(self.source_path)
        inputs = {name: tf.constant(np.asarray(transformable[name].values), dtype=dtype)
                  for name, dtype in self.input_specs.items()}
        outputs = self._signature(**inputs)
        result = next(iter(outputs.values())).numpy().astype(np.float32)
        return TensorTable({self.output_column: result})

    def compute_input_schema(self, root_schema, parents_schema, deps_schema, selector) -> Schema:
        return parents_schema.select_by_name(list(self.input_specs))

    def compute_selector(self, input_schema, selector, parents_selector=None, dependencies_selector=None):
        return ColumnSelector(list(self.input_specs))

    def compute_output_schema(self, input_schema: Schema, col_selector: ColumnSelector,
                              prev_output_schema: Schema = None) -> Schema:
        return Schema([ColumnSchema(self.output_column, dtype=np.float32, dims=self.output_dims)])

    @property
    def supported_formats(self) -> DataFormats:
        return DataFormats.NUMPY_TENSOR_TABLE


def _load_signature(path: str):
    import tensorflow as tf

    return tf.saved_model.load(path).signatures["serving_default"]
