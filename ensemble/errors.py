"""How a Triton model of the project answers a request that fails, the same for every model.

Three kinds, each with its Triton error code (the Python backend maps them to HTTP / gRPC):

- the caller's mistake (:class:`core.contract.BadRequest`): ``INVALID_ARG`` -> HTTP 400, gRPC INVALID_ARGUMENT;
- a dependency down (Milvus, the Feast online store): ``UNAVAILABLE`` -> HTTP 503, gRPC
  UNAVAILABLE; the message starts with :data:`core.contract.DEPENDENCY_PREFIX`, which tells a client that the
  model answered (its replica is up) rather than that the server could not be reached;
- anything else is our own bug: ``INTERNAL`` -> HTTP 500, with the traceback in Triton's log.
"""
from __future__ import annotations

import logging
import traceback

from core.contract import DEPENDENCY_PREFIX, BadRequest
from operators.feast_lookup import FeatureStoreUnavailable
from vector_index.client import MilvusUnavailable


def classify(exc: BaseException) -> tuple[str, str]:
    """``(code, message)`` for a failed request: code is the name of a ``pb_utils.TritonError``
    code (``INVALID_ARG``, ``UNAVAILABLE``, ``INTERNAL``)."""
    if isinstance(exc, BadRequest):
        return "INVALID_ARG", f"bad request: {exc}"
    if isinstance(exc, (MilvusUnavailable, FeatureStoreUnavailable)):
        return "UNAVAILABLE", f"{DEPENDENCY_PREFIX} {exc}"
    return "INTERNAL", f"internal error: {type(exc).__name__}: {exc}"


def error_response(pb_utils, exc: BaseException, log: logging.Logger):
    """The ``InferenceResponse`` of a request that raised ``exc`` (logged if it is our bug)."""
    code, message = classify(exc)
    if code == "INTERNAL":
        log.error("request failed: %s", traceback.format_exc())
    return pb_utils.InferenceResponse(output_tensors=[],
                                      error=pb_utils.TritonError(message, getattr(pb_utils.TritonError, code)))
