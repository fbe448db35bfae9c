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
class Input:
    """One input tensor of a model: its Triton type, its dims in config.pbtxt and whether a
    request may leave it out."""

    name: str
    triton_type: str
    dims: str = "-1"
    optional: bool = False


@dataclass(frozen=True)
class Output:
    """One output tensor: its Triton type, the numpy dtype it is sent as, and whether it has
    one value per answered item (``[batch, top_k]``) or per request row (``[batch]``)."""

    name: str
    triton_type: str
    dtype: str
    per_item: bool = False
    from_graph: bool = True  # computed by the graph (else added by the runner)


@dataclass(frozen=True)
class ModelContract:
    """The request/response contract of one served model."""

    kind: str  # what the model does; also its default name (ServingConfig)
    id_input: str  # the INT64 [batch] input: one row per id
    outputs: tuple[Output, ...]
    # Inputs besides the ids; None: the optional filter inputs of the retrieval models.
    extra_inputs: tuple[Input, ...] | None = None

    @property
    def inputs(self) -> tuple[Input, ...]:
        """Every input: the ids, then the others."""
        extra = self.extra_inputs if self.extra_inputs is not None else FILTERS
        return (Input(self.id_input, "TYPE_INT64"), *extra)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(output.name for output in self.outputs)

    @property
    def graph_outputs(self) -> tuple[Output, ...]:
        return tuple(output for output in self.outputs if output.from_graph)


# which release computed the answer (recsys.jobs.releases): one model version computes a whole request
RELEASE = Output("release", "TYPE_INT64", "int64", from_graph=False)


FILTERS = tuple(Input(name, "TYPE_STRING", "1", optional=True) for name in FILTER_INPUTS)
RECENT_ITEMS = "recent_items"  # per user row, the session's clicks, most recent first, padded with -1

RECOMMENDER = ModelContract("recommender", "user_id", (
    Output("item_ids", "TYPE_INT64", "int64", per_item=True),
    Output("scores", "TYPE_FP32", "float32", per_item=True),
    Output("fallback", "TYPE_BOOL", "bool"),  # the user got the popular list (unknown / no history)
    Output("source", "TYPE_STRING", "object"),  # which path answered the user
    Output("filled", "TYPE_INT32", "int32"),  # how many of the items are popular fill-ins
    RELEASE,
), extra_inputs=(*FILTERS, Input(RECENT_ITEMS, "TYPE_INT64", "-1, -1", optional=True)))
SIMILAR_ITEMS = ModelContract("similar_items", "item_id", (
    Output("item_ids", "TYPE_INT64", "int64", per_item=True),
    Output("scores", "TYPE_FP32", "float32", per_item=True),
    Output("found", "TYPE_BOOL", "bool"),  # the item is in the index (else: the popular list)
    RELEASE,
))
# Interactions that change the next answer (ensemble/events.py): one row per event.
EVENTS = ModelContract("events", "user_id", (
    Output("accepted", "TYPE_BOOL", "bool"),  # the event was applied
    Output("error", "TYPE_STRING", "object"),  # why it was not ("" when accepted)
), extra_inputs=(
    Input("item_id", "TYPE_INT64"),
    Input("timestamp", "TYPE_INT64", optional=True),  # epoch seconds; 0 or absent: now
    Input("event_type", "TYPE_STRING", optional=True),
    Input("event_value", "TYPE_FP32", optional=True),
))
CONTRACTS = {contract.kind: contract for contract in (RECOMMENDER, SIMILAR_ITEMS, EVENTS)}


def model_names(config) -> dict[str, ModelContract]:
    """The served models by their configured names (``config.serving``)."""
    return {config.serving.model_name: RECOMMENDER, config.serving.similar_model_name: SIMILAR_ITEMS,
            config.serving.events_model_name: EVENTS}


def model_config(contract: ModelContract, name: str, top_k: int, version: int | None = None) -> str:
    """The ``config.pbtxt`` of a model: the contract's inputs and outputs, which contract ``ensemble/triton_model.py`` serves and, given a
    ``version``, that Triton serves that version only."""
    inputs = [f'{{ name: "{i.name}" data_type: {i.triton_type} dims: [ {i.dims} ]'
              + (" optional: true }" if i.optional else " }") for i in contract.inputs]
    outputs = [f'{{ name: "{o.name}" data_type: {o.triton_type} dims: [ {"-1, " + str(top_k) if o.per_item else "-1"} ] }}'
               for o in contract.outputs]
    return (f'name: "{name}"\nbackend: "python"\nmax_batch_size: 0\n'
            "input [\n  " + ",\n  ".join(inputs) + "\n]\n"
            "output [\n  " + ",\n  ".join(outputs) + "\n]\n"
            "instance_group [\n  { kind: KIND_CPU count: 1 }\n]\n"
            f'parameters {{ key: "contract" value: {{ string_value: "{contract.kind}" }} }}\n'
            + (f"version_policy: {{ specific: {{ versions: [ {version} ] }} }}\n" if version is not None else ""))
