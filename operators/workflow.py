"""TransformFeatures: run a fitted NVTabular workflow on request data.

Unlike the stock ``TransformWorkflow`` it accepts ``[batch]`` and ``[batch, k]`` columns alike
(the candidates of every user are encoded in one call and reshaped back), and it keeps the
workflow as an artifact beside the ensemble instead of inside the pickle. The workflow is only
ever loaded and applied here, never fitted.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from merlin.dag import BaseOperator, ColumnSelector, DataFormats
from merlin.schema import Schema
from merlin.table import TensorTable


class TransformFeatures(BaseOperator):
    """Apply the saved workflow ``name`` (a directory written by ``Workflow.save``)."""

    def __init__(self, workflow_path: str | Path, name: str):
        super().__init__()
        import nvtabular as nvt

        self.name = name
        self.source_path = str(workflow_path)
        self._workflow = nvt.Workflow.load(self.source_path)
        self.workflow_input_schema = self._workflow.input_schema
        self.workflow_output_schema = self._workflow.output_schema
        self.float_columns = [c.name for c in self.workflow_output_schema
                              if c.dtype.element_type.value == "float"]

    def __getstate__(self) -> dict:
        # Clients, models and workflows are artifacts: loaded at model start, never pickled.
        return {**self.__dict__, "_workflow": None}

    def save_artifacts(self, artifact_path: str) -> None:
        target = Path(artifact_path) / f"workflow_{self.name}"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(self.source_path, target)

    def load_artifacts(self, artifact_path: str | None = None) -> None:
        import nvtabular as nvt

        if artifact_path:  # Merlin also calls this with "" while building a graph
            self._workflow = nvt.Workflow.load(str(Path(artifact_path) / f"workflow_{self.name}"))

    def transform(self, col_selector: ColumnSelector, transformable: TensorTable) -> TensorTable:
        inputs = {name: np.asarray(transformable[name].values)
                  for name in self.workflow_input_schema.column_names}
        shape = next(iter(inputs.values())).shape
        frame = pd.DataFrame({name: values.reshape(-1) for name, values in inputs.items()})
        encoded = self._workflow._transform_df(frame)
        output = {}
        for name in self.workflow_output_schema.column_names:
            values = encoded[name].to_numpy()
            if name in self.float_columns:
                values = values.astype(np.float32)
            output[name] = values.reshape(shape)
        return TensorTable(output)

    def compute_input_schema(self, root_schema, parents_schema, deps_schema, selector) -> Schema:
        return self.workflow_input_schema

    def compute_output_schema(self, input_schema: Schema, col_selector: ColumnSelector,
                              prev_output_schema: Schema = None) -> Schema:
        dims = input_schema[self.workflow_input_schema.column_names[0]].shape.dims
        columns = []
        for col in self.workflow_output_schema:
            dtype = np.float32 if col.name in self.float_columns else col.dtype
            columns.append(col.with_dtype(dtype).with_shape(dims))
        return Schema(columns)

    @property
    def supported_formats(self) -> DataFormats:
        return DataFormats.NUMPY_TENSOR_TABLE
