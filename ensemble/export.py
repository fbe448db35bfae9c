"""Export the ensemble as a Triton model repository:

    model_repository/
      recommender/
        config.pbtxt          named, typed inputs and outputs (Python backend)
        1/
          model.py            ensemble/triton_model.py
          ensemble/           pickled graph + artifacts (workflows, SavedModels, serving.json)
"""
from __future__ import annotations

import shutil
from pathlib import Path

from merlin.dag import postorder_iter_nodes

from ensemble.graph import build_ensemble
from operators.settings import write_serving_config
from core.config import Config
from core.artifacts import Artifacts

MODEL_VERSION = 1

_CONFIG_TEMPLATE = """name: "{name}"
backend: "python"
max_batch_size: 0
input [
  {{ name: "user_id" data_type: TYPE_INT64 dims: [ -1 ] }},
  {{ name: "filter" data_type: TYPE_STRING dims: [ 1 ] optional: true }},
  {{ name: "filter_values" data_type: TYPE_STRING dims: [ 1 ] optional: true }}
]
output [
  {{ name: "item_ids" data_type: TYPE_INT64 dims: [ -1, {k} ] }},
  {{ name: "scores" data_type: TYPE_FP32 dims: [ -1, {k} ] }},
  {{ name: "fallback" data_type: TYPE_BOOL dims: [ -1 ] }},
  {{ name: "source" data_type: TYPE_STRING dims: [ -1 ] }},
  {{ name: "filled" data_type: TYPE_INT32 dims: [ -1 ] }}
]
instance_group [
  {{ kind: KIND_CPU count: 1 }}
]
"""


def write_ensemble(config: Config, artifacts: Artifacts, target: Path) -> Path:
    """Write the serving ensemble (pickled graph, every operator's artifacts, serving.json)
    into ``target``, replacing what was there; ``config.serving`` fixes its contract (top_k,
    retrieval_k, ...). What the Triton model, the offline evaluation and the batch job load
    (:meth:`ensemble.runner.Recommender.load`)."""
    from operators.settings import serving_config

    target = Path(target)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    ensemble = build_ensemble(config, artifacts)
    for node in postorder_iter_nodes(ensemble.graph.output_node, flatten_subgraphs=True):
        node.op.save_artifacts(str(target))
    ensemble.save(str(target))
    write_serving_config(config, target)
    serving_config.cache_clear()  # a directory written again may carry other settings
    return target


def export_model_repository(config: Config, artifacts: Artifacts) -> Path:
    """Build the graph from the artifacts and write the model repository; returns its path."""
    repository = config.model_repository
    model_dir = repository / config.serving.model_name
    if model_dir.exists():
        shutil.rmtree(model_dir)
    write_ensemble(config, artifacts, model_dir / str(MODEL_VERSION) / "ensemble")
    shutil.copyfile(Path(__file__).with_name("triton_model.py"),
                    model_dir / str(MODEL_VERSION) / "model.py")
    (model_dir / "config.pbtxt").write_text(
        _CONFIG_TEMPLATE.format(name=config.serving.model_name, k=config.serving.top_k))
    from ensemble.similar import export_similar_items

    export_similar_items(config, artifacts)
    return repository
