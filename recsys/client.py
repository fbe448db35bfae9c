"""A small tritonclient wrapper for the ``recommender`` model, over HTTP or gRPC."""
from __future__ import annotations

import json

import numpy as np

OUTPUTS = ("item_ids", "scores", "fallback", "source", "filled")


class RecommendError(RuntimeError):
    """Triton answered the request with an error (the message says what is wrong)."""


class RecommenderClient:
    """Send batches of raw user ids to the ``recommender`` model.

    ``url`` is ``host:port`` of Triton's HTTP (default 8000) or gRPC (default 8001) endpoint.
    """

    def __init__(self, url: str, protocol: str = "http", model_name: str = "recommender",
                 timeout_s: float = 30.0):
        if protocol not in ("http", "grpc"):
            raise ValueError("protocol must be 'http' or 'grpc'")
        self.protocol = protocol
        self.model_name = model_name
        self.timeout_s = timeout_s
        if protocol == "http":
            import tritonclient.http as module

            self._client = module.InferenceServerClient(url, connection_timeout=timeout_s,
                                                        network_timeout=timeout_s)
        else:
            import tritonclient.grpc as module

            self._client = module.InferenceServerClient(url)
        self._module = module

    def recommend(self, user_ids, dtype: str = "INT64", filter: str | None = None,
                  filter_values: dict | str | None = None) -> dict[str, np.ndarray]:
        """Top-k raw item ids, scores, fallback flags, the answering path (``source``:
        personalized / features / popular) and the number of popular fill-ins (``filled``)
        for each user id (row i = user i). ``filter``: a filter expression (README, Filters)
        with its ``$PARAMETER`` values in ``filter_values`` (a dict or a JSON object)."""
        answer = self._infer(self.model_name, "user_id", user_ids, OUTPUTS, dtype,
                             _filter_inputs(filter, filter_values))
        answer["source"] = np.array([s.decode() if isinstance(s, bytes) else str(s)
                                     for s in answer["source"]], dtype=object)
        return answer

    def similar(self, item_ids, model_name: str = "similar_items", filter: str | None = None,
                filter_values: dict | str | None = None) -> dict[str, np.ndarray]:
        """The ``similar_items`` model: nearest raw item ids and scores per item id, and
        ``found`` (false: the id is not in the collection, the row is the popular items);
        ``filter`` / ``filter_values`` as in :meth:`recommend`."""
        return self._infer(model_name, "item_id", item_ids, ("item_ids", "scores", "found"), "INT64",
                           _filter_inputs(filter, filter_values))

    def _infer(self, model: str, input_name: str, ids, outputs, dtype: str = "INT64",
               text_inputs: dict[str, str] | None = None) -> dict:
        from tritonclient.utils import InferenceServerException

        values = np.asarray(ids)
        if dtype == "INT64":
            values = values.astype(np.int64)
        tensor = self._module.InferInput(input_name, list(values.shape), dtype)
        tensor.set_data_from_numpy(values)
        tensors = [tensor]
        for name, text in (text_inputs or {}).items():
            extra = self._module.InferInput(name, [1], "BYTES")
            extra.set_data_from_numpy(np.array([text.encode("utf-8")], dtype=np.object_))
            tensors.append(extra)
        requested = [self._module.InferRequestedOutput(name) for name in outputs]
        try:
            if self.protocol == "grpc":
                result = self._client.infer(model, tensors, outputs=requested, client_timeout=self.timeout_s)
            else:
                result = self._client.infer(model, tensors, outputs=requested)
        except InferenceServerException as exc:
            raise RecommendError(exc.message()) from exc
        return {name: result.as_numpy(name) for name in outputs}

    def ready(self) -> bool:
        try:
            return bool(self._client.is_model_ready(self.model_name))
        except Exception:
            return False

    def close(self) -> None:
        self._client.close()


def _filter_inputs(expression: str | None, values: dict | str | None) -> dict[str, str]:
    """The optional ``filter`` / ``filter_values`` text inputs of a request."""
    inputs = {}
    if expression is not None:
        inputs["filter"] = expression
    if values is not None:
        inputs["filter_values"] = values if isinstance(values, str) else json.dumps(values)
    return inputs
