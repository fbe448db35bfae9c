"""The ``recommender`` model for Triton's Python backend.

One request = a batch of raw user ids (and optionally a ``filter`` expression with its
``filter_values``, see :mod:`operators.filters`); the whole cascade runs in this process
(:class:`ensemble.runner.Recommender`). Mistakes of the caller come back as a clear error
for that request (INVALID_ARG: HTTP 400); failures of a dependency (Milvus, Feast) come back as
an error naming the dependency (UNAVAILABLE: HTTP 503), see :mod:`ensemble.errors`; the model
keeps serving in both cases. An unreadable Feast online store is not an
error: those users take the cold-start path and items get default features, counted in
``recsys_feature_store_failures_total{feature_view=...}``. Per-stage time is exported as Triton
custom metrics (``recsys_stage_seconds_total{stage=...}``) on the metrics port.
"""
import logging
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

LOG = logging.getLogger("recommender")


class TritonPythonModel:
    def initialize(self, args):
        from ensemble.runner import Recommender

        model_dir = Path(args["model_repository"])
        if model_dir.suffix == ".py":  # some Triton versions pass the path of model.py
            model_dir = model_dir.parent.parent
        ensemble_dir = model_dir / str(args["model_version"]) / "ensemble"
        self.recommender = Recommender.load(ensemble_dir)
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

    def execute(self, requests):
        return [self._answer(request) for request in requests]

    def _answer(self, request):
        from ensemble.errors import classify, error_response

        try:
            user_ids = pb_utils.get_input_tensor_by_name(request, "user_id").as_numpy()
            item_filter = self.recommender.compile_filter(_text_input(request, "filter"),
                                                          _text_input(request, "filter_values"))
            result = self.recommender.recommend(user_ids, item_filter)
        except Exception as exc:  # keep serving: the caller gets the error, with its code
            outcome = {"INVALID_ARG": "bad_request", "UNAVAILABLE": "dependency_error"}.get(classify(exc)[0])
            if outcome:
                self._outcome_metrics[outcome].increment(1)
            return error_response(pb_utils, exc, LOG)
        self._record(result)
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("item_ids", result["item_ids"].astype(np.int64)),
            pb_utils.Tensor("scores", result["scores"].astype(np.float32)),
            pb_utils.Tensor("fallback", result["fallback"].astype(np.bool_)),
            pb_utils.Tensor("source", result["source"].astype(np.object_)),
            pb_utils.Tensor("filled", result["filled"].astype(np.int32)),
        ])

    def _record(self, result):
        self._outcome_metrics["ok"].increment(1)
        for view, total in self.recommender.feature_store_failures.items():
            new = total - self._failures_seen.get(view, 0)
            if new:
                metric = self._failure_metrics.get(view)
                if metric is None:
                    metric = self._failure_metrics[view] = self.feature_failures.Metric(
                        labels={"feature_view": view})
                metric.increment(new)
                self._failures_seen[view] = total
        self._outcome_metrics["fallback_users"].increment(int(result["fallback"].sum()))
        for stage, seconds in self.recommender.last_timings.items():
            metric = self._stage_metrics.get(stage)
            if metric is None:
                metric = self._stage_metrics[stage] = self.stage_seconds.Metric(labels={"stage": stage})
            metric.increment(seconds)


def _text_input(request, name):
    from ensemble.request_inputs import optional_text
    from ensemble.runner import BadRequest

    return optional_text(pb_utils.get_input_tensor_by_name(request, name), name, BadRequest)
