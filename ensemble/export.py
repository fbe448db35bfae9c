"""Export the served models as a Triton model repository, every model the same way:

    model_repository/
      recommender/            (and similar_items/, each named in config.serving)
        config.pbtxt          the contract's inputs and outputs (core.contract), Python backend
        1/
          model.py            ensemble/triton_model.py
          ensemble/           pickled graph + operator artifacts + serving.json
"""
from __future__ import annotations

import shutil
from pathlib import Path

from merlin.dag import postorder_iter_nodes

from core.artifacts import Artifacts
from core.config import Config
from core.contract import FILTER_INPUTS, RECOMMENDER, SIMILAR_ITEMS, ModelContract
from ensemble.graph import GRAPHS
from operators.settings import serving_config, write_serving_config

MODEL_VERSION = 1
TRITON_MODEL = Path(__file__).with_name("triton_model.py")


def model_names(config: Config) -> dict[str, ModelContract]:
    """The served models by their configured names."""
    return {config.serving.model_name: RECOMMENDER, config.serving.similar_model_name: SIMILAR_ITEMS}


def model_config(contract: ModelContract, name: str, top_k: int) -> str:
    """The ``config.pbtxt`` of a model: the id input, the optional filter inputs, the
    contract's outputs, and which contract ``ensemble/triton_model.py`` serves."""
    inputs = [f'{{ name: "{contract.id_input}" data_type: TYPE_INT64 dims: [ -1 ] }}']
    inputs += [f'{{ name: "{n}" data_type: TYPE_STRING dims: [ 1 ] optional: true }}' for n in FILTER_INPUTS]
    outputs = [f'{{ name: "{o.name}" data_type: {o.triton_type} dims: [ {"-1, " + str(top_k) if o.per_item else "-1"} ] }}'
               for o in contract.outputs]
    return (f'name: "{name}"\nbackend: "python"\nmax_batch_size: 0\n'
            "input [\n  " + ",\n  ".join(inputs) + "\n]\n"
            "output [\n  " + ",\n  ".join(outputs) + "\n]\n"
            "instance_group [\n  { kind: KIND_CPU count: 1 }\n]\n"
            f'parameters {{ key: "contract" value: {{ string_value: "{contract.kind}" }} }}\n')


def write_ensemble(config: Config, artifacts: Artifacts, target: Path,
                   contract: ModelContract = RECOMMENDER) -> Path:
    """Write the graph of ``contract`` (pickled graph, every operator's artifacts,
    serving.json) into ``target``, replacing what was there; ``config.serving`` fixes its
    settings (top_k, retrieval_k, ...). What the Triton model, the offline evaluation and the
    batch job load (:meth:`ensemble.runner.GraphRunner.load`)."""
    target = Path(target)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    ensemble = GRAPHS[contract.kind](config, artifacts)
    for node in postorder_iter_nodes(ensemble.graph.output_node, flatten_subgraphs=True):
        node.op.save_artifacts(str(target))
    ensemble.save(str(target))
    write_serving_config(config, target)
    serving_config.cache_clear()  # a directory written again may carry other settings
    return target


def export_model(config: Config, artifacts: Artifacts, name: str, contract: ModelContract) -> Path:
    """Write ``<model_repository>/<name>`` serving ``contract``; returns the model directory."""
    model_dir = config.model_repository / name
    if model_dir.exists():
        shutil.rmtree(model_dir)
    version_dir = model_dir / str(MODEL_VERSION)
    write_ensemble(config, artifacts, version_dir / "ensemble", contract)
    shutil.copyfile(TRITON_MODEL, version_dir / "model.py")
    (model_dir / "config.pbtxt").write_text(model_config(contract, name, config.serving.top_k))
    return model_dir


def export_model_repository(config: Config, artifacts: Artifacts) -> Path:
    """Build every served model from the artifacts and write the repository; returns its path."""
    for name, contract in model_names(config).items():
        export_model(config, artifacts, name, contract)
    return config.model_repository
