"""Serving-time configuration of the operators.

The export writes the serving part of the project configuration (Milvus URI and collection,
Feast repo location, ...) as ``serving.json`` beside the ensemble; at model start each operator
reads it through :func:`serving_config`, with ``RECSYS_*`` environment variables on top (so a
deployment can point the same model repository at another Milvus or Feast without
re-exporting). Secrets (the Milvus token) are never written to the file.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

from core.config import Config, load_config

SETTINGS_FILE = "serving.json"


def write_serving_config(config: Config, artifact_path: str | Path) -> None:
    """Write the parts of ``config`` that serving needs next to the ensemble."""
    plain = config.to_dict()
    milvus = {k: v for k, v in plain["milvus"].items() if k != "token"}
    settings = {"workdir": plain["workdir"], "feature_repo": plain["feature_repo"],
                "feature_store_yaml": plain["feature_store_yaml"], "milvus": milvus, "serving": plain["serving"],
                "training": {"max_history": plain["training"]["max_history"]}}
    (Path(artifact_path) / SETTINGS_FILE).write_text(json.dumps(settings, indent=2))


@functools.lru_cache(maxsize=4)
def serving_config(artifact_path: str) -> Config:
    """The configuration the operators of one exported ensemble run with (read once)."""
    path = Path(artifact_path) / SETTINGS_FILE
    base = json.loads(path.read_text()) if path.is_file() else {}
    return load_config(base=base)
