"""What the served models promise their callers, and the names the layers agree on.

Each Triton model of the project is described once here (:class:`ModelContract`): its id
input, the optional filter inputs, and its outputs with their types. The export writes the
model configuration from it, the runner and the Triton model return exactly these outputs,
and the client asks for them.
"""
from __future__ import annotations

from dataclasses import dataclass

CATEGORY_FEATURE = "item_category"  # the item feature stored in the index's category field (filter pushdown)
FILTER_INPUTS = ("filter", "filter_values")  # optional BYTES [1] inputs of every model
# How a model's error message starts when a dependency (Milvus, Feast) is down: the model
# answered (its replica is up), so a client does not take the replica for unreachable.
DEPENDENCY_PREFIX = "dependency unavailable:"


class BadRequest(ValueError):
    """The request itself is wrong (the caller can fix it): HTTP 400, gRPC INVALID_ARGUMENT."""


@dataclass(frozen=True)
class Output:
    """One output tensor: its Triton type, the numpy dtype it is sent as, and whether it has
    one value per answered item (``[batch, top_k]``) or per request row (``[batch]``)."""

    name: str
    triton_type: str
    dtype: str
    per_item: bool = False


@dataclass(frozen=True)
class ModelContract:
    """The request/response contract of one served model."""

    kind: str  # what the model does; also its default name (ServingConfig)
    id_input: str  # the INT64 [batch] input: one row per id
    outputs: tuple[Output, ...]

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(output.name for output in self.outputs)


RECOMMENDER = ModelContract("recommender", "user_id", (
    Output("item_ids", "TYPE_INT64", "int64", per_item=True),
    Output("scores", "TYPE_FP32", "float32", per_item=True),
    Output("fallback", "TYPE_BOOL", "bool"),  # the user got the popular list (unknown / no history)
    Output("source", "TYPE_STRING", "object"),  # which path answered the user
    Output("filled", "TYPE_INT32", "int32"),  # how many of the items are popular fill-ins
))
SIMILAR_ITEMS = ModelContract("similar_items", "item_id", (
    Output("item_ids", "TYPE_INT64", "int64", per_item=True),
    Output("scores", "TYPE_FP32", "float32", per_item=True),
    Output("found", "TYPE_BOOL", "bool"),  # the item is in the index (else: the popular list)
))
CONTRACTS = {contract.kind: contract for contract in (RECOMMENDER, SIMILAR_ITEMS)}
