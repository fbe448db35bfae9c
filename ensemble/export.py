"""Export the served models as a Triton model repository, every model the same way:

    model_repository/
      recommender/            (and similar_items/, events/, each named in config.serving)
        config.pbtxt          the contract's inputs and outputs (core.contract), Python backend,
                              the version (release) Triton serves
        <n>/                  one version per release (recsys.jobs.releases)
          model.py            ensemble/triton_model.py
          ensemble/           pickled graph + operator artifacts + serving.json (events: serving.json)
"""
from __future__ import annotations

import shutil
from pathlib import Path

from merlin.dag import postorder_iter_nodes

from core.artifacts import Artifacts
from core.config import Config
from core.contract import RECOMMENDER, ModelContract
from ensemble.graph import GRAPHS
from operators.settings import serving_config, write_serving_config

TRITON_MODEL = Path(__file__).with_name("triton_model.py")


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


def export_version(config: Config, artifacts: Artifacts, name: str, contract: ModelContract, version: int) -> Path:
    """Write version ``version`` of model ``name`` (its graph and ``model.py``), replacing that
    version only; ``config.pbtxt``, which says what Triton serves, is left as it is."""
    version_dir = config.model_repository / name / str(version)
    if contract.kind in GRAPHS:
        write_ensemble(config, artifacts, version_dir / "ensemble", contract)
    else:  # a model without a graph (events) reads only the serving settings
        target = version_dir / "ensemble"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        write_serving_config(config, target)
    shutil.copyfile(TRITON_MODEL, version_dir / "model.py")
    return version_dir
