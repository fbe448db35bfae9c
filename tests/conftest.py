"""Shared fixtures: a tiny configuration in a temporary directory with free ports, a trained
set of artifacts, and (for integration tests) a real Milvus + Triton stack serving them."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from recsys.config import PROJECT_ROOT, Config, load_config
from recsys.servers import free_port

TINY = {
    "data": {"source": "synthetic", "num_sessions": 3000, "num_items": 600, "seed": 11},
    "training": {"retrieval_epochs": 3, "ranking_epochs": 2, "batch_size": 512, "validation_users": 300},
    "serving": {"top_k": 10, "retrieval_k": 50, "max_batch_users": 64},
}


def make_config(root: Path, **extra) -> Config:
    """A configuration whose every path and port is private to this test run."""
    repo = root / "feature_repo"
    repo.mkdir(parents=True, exist_ok=True)
    for name in ("feature_store.yaml", "definitions.py"):
        shutil.copy(PROJECT_ROOT / "feature_repo" / name, repo / name)
    overrides = {
        "workdir": str(root / "work"),
        "feature_repo": str(repo),
        "milvus": {"port": free_port(), "collection": "test_items"},
        "triton": {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()},
    }
    for section, values in {**TINY, **extra}.items():
        overrides[section] = {**overrides.get(section, {}), **values}
    return load_config(base={}, overrides=overrides, environ={})


@pytest.fixture(scope="session")
def trained_config(tmp_path_factory) -> Config:
    """A tiny data set, trained end to end (about half a minute on 2 cores)."""
    from training import pipeline

    config = make_config(tmp_path_factory.mktemp("recsys"))
    pipeline.run(config)
    return config


@pytest.fixture(scope="session")
def serving_stack(trained_config):
    """Feast applied + materialized, model repository exported, real Milvus and Triton up."""
    from recsys import stack

    stack.load_features(trained_config)
    stack.export(trained_config)
    with stack.local_stack(trained_config, reindex=True) as (milvus, triton):
        yield trained_config, milvus, triton
