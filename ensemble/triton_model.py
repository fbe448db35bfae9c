"""Every model of the project for Triton's Python backend (``model.py`` of each model; which
one it serves is the ``contract`` parameter of its config.pbtxt, see :mod:`ensemble.export`).

One request = a batch of raw ids (and optionally a ``filter`` expression with its
``filter_values``, see :mod:`operators.filters`); the whole graph runs in this process
(:mod:`ensemble.runner`). The ``events`` model takes its contract's inputs the same way and
applies them (:mod:`ensemble.events`). Mistakes of the caller come back as a clear error for that request
(INVALID_ARG: HTTP 400); failures of a dependency (Milvus, Feast) come back as an error naming
the dependency (UNAVAILABLE: HTTP 503), see :mod:`ensemble.errors`; the model keeps serving in
both cases. An unreadable Feast online store is not an error: those users take the cold-start
path and items get default features, counted in
``recsys_feature_store_failures_total{feature_view=...}``. The recommender exports per-stage
time as Triton custom metrics (``recsys_stage_seconds_total{stage=...}``) on the metrics port.
"""
import json
import logging
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from core.contract import BadRequest
from ensemble.errors import classify, error_response
from ensemble.request_inputs import optional_text
from ensemble.runner import RUNNERS

LOG = logging.getLogger("recsys.triton_model")


class TritonPythonModel:
    def initialize(self, args):
        kind = json.loads(args["model_config"])["parameters"]["contract"]["string_value"]
        model_dir = Path(args["model_repository"])
        if model_dir.suffix == ".py":  # some Triton versions pass the path of model.py
            model_dir = model_dir.parent.parent
        self.runner = RUNNERS[kind].load(model_dir / str(args["model_version"]) / "ensemble")
        self.metrics = _Metrics() if self.runner.exports_metrics else None

    def execute(self, requests):
        return [self._answer(request) for request in requests]

    def _answer(self, request):
        contract = self.runner.contract
        try:
            result = self.runner.answer({i.name: _input(request, i) for i in contract.inputs})
        except Exception as exc:  # keep serving: the caller gets the error, with its code
            if self.metrics:
                self.metrics.failed(classify(exc)[0])
            return error_response(pb_utils, exc, LOG)
        if self.metrics:
            self.metrics.answered(self.runner, result)
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor(output.name, result[output.name].astype(np.dtype(output.dtype)))
            for output in contract.outputs])


class _Metrics:
    """The recommender's custom metrics: requests by outcome, seconds per stage, ids served
    as missing rows because Feast could not be read."""

    def __init__(self):
        self.stage_seconds = pb_utils.MetricFamily(
            name="recsys_stage_seconds_total",
            description="Cumulative seconds spent in each stage of the cascade",
            kind=pb_utils.MetricFamily.COUNTER)
        self.outcomes = pb_utils.MetricFamily(
            name="recsys_requests_total", description="Requests by outcome",
            kind=pb_utils.MetricFamily.COUNTER)
        self.feature_failures = pb_utils.MetricFamily(
            name="recsys_feature_store_failures_total",
            description="Ids served as missing rows (cold start / default features) because the "
                        "Feast online store could not be read",
            kind=pb_utils.MetricFamily.COUNTER)
        self._failure_metrics = {}
        self._failures_seen = {}
        self._stage_metrics = {}
        self._outcome_metrics = {o: self.outcomes.Metric(labels={"outcome": o})
                                 for o in ("ok", "bad_request", "dependency_error", "fallback_users")}

    def failed(self, code: str) -> None:
        outcome = {"INVALID_ARG": "bad_request", "UNAVAILABLE": "dependency_error"}.get(code)
        if outcome:
            self._outcome_metrics[outcome].increment(1)

    def answered(self, runner, result) -> None:
        self._outcome_metrics["ok"].increment(1)
        for view, total in runner.feature_store_failures.items():
            new = total - self._failures_seen.get(view, 0)
            if new:
                metric = self._failure_metrics.get(view)
                if metric is None:
                    metric = self._failure_metrics[view] = self.feature_failures.Metric(
                        labels={"feature_view": view})
                metric.increment(new)
                self._failures_seen[view] = total
        self._outcome_metrics["fallback_users"].increment(int(result["fallback"].sum()))
        for stage, seconds in runner.last_timings.items():
            metric = self._stage_metrics.get(stage)
            if metric is None:
                metric = self._stage_metrics[stage] = self.stage_seconds.Metric(labels={"stage": stage})
            metric.increment(seconds)


def _input(request, spec):
    """One input as numpy (a one-string input as text), ``None`` when an optional one is absent."""
    tensor = pb_utils.get_input_tensor_by_name(request, spec.name)
    if spec.dims == "1" and spec.triton_type == "TYPE_STRING":
        return optional_text(tensor, spec.name, BadRequest)
    return None if tensor is None else tensor.as_numpy()
