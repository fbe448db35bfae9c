"""PredictSavedModel: run a TensorFlow SavedModel in-process (the only Triton installable here
has just the Python backend).

The SavedModel is copied beside the ensemble at export and loaded at model start; it is never
part of the pickle. Inputs of shape ``[batch]`` are repeated to match inputs of shape
``[batch, k]``, so one call ranks every candidate of every user and the output comes back as
``[batch, k]``; with only ``[batch]`` inputs (the user tower) the output is ``[batch, dim]``.
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
    output_dim : width of the output per row (``None`` for a scalar score per row/candidate).
    """

    def __init__(self, model_path: str | Path, name: str, output_column: str,
                 output_dim: int | None = None):
        super().__init__()
        self.source_path = str(model_path)
        self.name = name
        self.output_column = output_column
        self.output_dim = output_dim
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
        arrays = {name: np.asarray(transformable[name].values) for name in self.input_specs}
        batch = next(iter(arrays.values())).shape[0]
        k = max((a.shape[1] for a in arrays.values() if a.ndim == 2), default=None)
        inputs = {}
        for name, values in arrays.items():
            if k is not None and values.ndim == 1:
                values = np.repeat(values, k)
            inputs[name] = tf.constant(values.reshape(-1), dtype=self.input_specs[name])
        outputs = self._signature(**inputs)
        result = next(iter(outputs.values())).numpy().astype(np.float32)
        shape = (batch, k) if k is not None else (batch, -1)
        result = result.reshape(shape)
        if self.output_dim is None and k is None:
            result = result.reshape(batch)
        return TensorTable({self.output_column: result})

    def compute_input_schema(self, root_schema, parents_schema, deps_schema, selector) -> Schema:
        return parents_schema.select_by_name(list(self.input_specs))

    def compute_output_schema(self, input_schema: Schema, col_selector: ColumnSelector,
                              prev_output_schema: Schema = None) -> Schema:
        candidate_dims = [c.shape.dims for c in input_schema if c.shape.dims and len(c.shape.dims) == 2]
        if candidate_dims:
            dims = candidate_dims[0]
        elif self.output_dim is not None:
            dims = (None, self.output_dim)
        else:
            dims = (None,)
        return Schema([ColumnSchema(self.output_column, dtype=np.float32, dims=dims)])

    @property
    def supported_formats(self) -> DataFormats:
        return DataFormats.NUMPY_TENSOR_TABLE


def _load_signature(path: str):
    import tensorflow as tf

    return tf.saved_model.load(path).signatures["serving_default"]
