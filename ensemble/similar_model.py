"""The ``similar_items`` model for Triton's Python backend (see :mod:`ensemble.similar`)."""
import logging
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

LOG = logging.getLogger("similar_items")


class TritonPythonModel:
    def initialize(self, args):
        from ensemble.similar import SimilarItemsRunner

        model_dir = Path(args["model_repository"])
        if model_dir.suffix == ".py":
            model_dir = model_dir.parent.parent
        self.runner = SimilarItemsRunner.load(model_dir / str(args["model_version"]) / "ensemble")

    def execute(self, requests):
        return [self._answer(request) for request in requests]

    def _answer(self, request):
        from ensemble.errors import error_response

        try:
            item_ids = pb_utils.get_input_tensor_by_name(request, "item_id").as_numpy()
            item_filter = self.runner.compile_filter(_text_input(request, "filter"),
                                                     _text_input(request, "filter_values"))
            result = self.runner.similar(item_ids, item_filter)
        except Exception as exc:  # keep serving: the caller gets the error, with its code
            return error_response(pb_utils, exc, LOG)
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("item_ids", result["item_ids"].astype(np.int64)),
            pb_utils.Tensor("scores", result["scores"].astype(np.float32)),
            pb_utils.Tensor("found", result["found"].astype(np.bool_)),
        ])


def _text_input(request, name):
    from ensemble.request_inputs import optional_text
    from ensemble.similar import BadItemRequest

    return optional_text(pb_utils.get_input_tensor_by_name(request, name), name, BadItemRequest)
