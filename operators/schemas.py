"""The Merlin schema of a served model's outputs, from its contract (:mod:`core.contract`):
what the last operator of each graph produces."""
from __future__ import annotations

import numpy as np
from merlin.schema import ColumnSchema, Schema

from core.contract import ModelContract


def contract_schema(contract: ModelContract, top_k: int) -> Schema:
    """The outputs the graph computes: ``[batch, top_k]`` columns for the per-item ones,
    ``[batch]`` for the others."""
    return Schema([ColumnSchema(output.name, dtype=np.dtype(output.dtype),
                                dims=(None, top_k) if output.per_item else (None,))
                   for output in contract.graph_outputs])
