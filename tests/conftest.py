"""Shared fixtures: a tiny configuration in a temporary directory with free ports, a trained
set of artifacts, and (for integration tests) a real Milvus + Triton stack serving them.

The data is bring-your-own files written from a reduced MovieLens-100K: 300 users with their
ratings, ids shifted so that raw ids cannot be mistaken for encoded ones, plus a few users that
only the users file knows (cold users with features)."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from core.config import PROJECT_ROOT, Config, load_config
from recsys.runtime.servers import free_port

USER_OFFSET, ITEM_OFFSET = 900_000, 500_000
COLD_USERS = [990_001, 990_002, 990_003]
TINY = {
    "data": {"source": "files", "max_users": 0},
    "training": {"retrieval_epochs": 3, "ranking_epochs": 2, "batch_size": 512, "validation_users": 300},
    "serving": {"top_k": 10, "retrieval_k": 50, "max_batch_users": 64},
}


def write_data_files(folder: Path, n_users: int = 300, seed: int = 3) -> dict[str, str]:
    """Interactions, users, items and schema files in the documented input format."""
    from training.sources import movielens_100k, sample_users

    folder.mkdir(parents=True, exist_ok=True)
    data = sample_users(movielens_100k(), n_users, seed)
    interactions = data.interactions.assign(user_id=data.interactions["user_id"] + USER_OFFSET,
                                            item_id=data.interactions["item_id"] + ITEM_OFFSET)
    interactions["timestamp"] = pd.to_datetime(interactions["timestamp"], unit="s", utc=True).dt.strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    users = data.users.assign(user_id=data.users["user_id"] + USER_OFFSET)
    cold = users.head(len(COLD_USERS)).assign(user_id=COLD_USERS)
    users = pd.concat([users, cold], ignore_index=True)
    # item_category (the feature the Milvus collection stores for filter pushdown): the
    # first genre, so category filters are exercised on every path that writes item rows.
    items = data.items.assign(item_id=data.items["item_id"] + ITEM_OFFSET,
                              genres=data.items["genres"].apply("|".join),
                              item_category=data.items["genres"].apply(lambda g: g[0] if len(g) else "none"))
    paths = {"interactions_path": folder / "interactions.csv", "users_path": folder / "users.csv",
             "items_path": folder / "items.parquet", "schema_path": folder / "schema.json"}
    interactions.to_csv(paths["interactions_path"], index=False)
    users.to_csv(paths["users_path"], index=False)
    items.to_parquet(paths["items_path"], index=False)
    paths["schema_path"].write_text(json.dumps({"users": {"zip_prefix": "categorical", "age": "continuous"},
                                                "items": {"genres": "list", "release_year": "categorical",
                                                          "item_category": "categorical"}}))
    return {key: str(value) for key, value in paths.items()}


def make_config(root: Path, **extra) -> Config:
    """A configuration whose every path and port is private to this test run."""
    repo = root / "feature_repo"
    repo.mkdir(parents=True, exist_ok=True)
    for name in ("feature_store.yaml", "feature_store.redis.yaml", "definitions.py"):
        shutil.copy(PROJECT_ROOT / "feature_repo" / name, repo / name)
    overrides = {
        "data": write_data_files(root / "input"),
        "workdir": str(root / "work"),
        "feature_repo": str(repo),
        "milvus": {"port": free_port(), "collection": "test_items"},
        "triton": {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()},
    }
    for section, values in {**TINY, **extra}.items():
        overrides[section] = {**overrides.get(section, {}), **values}
    return load_config(base={}, overrides=overrides, environ={})


@pytest.fixture(scope="session")
def cold_users() -> list[int]:
    """Users only the users file knows (features, no interactions)."""
    return list(COLD_USERS)


@pytest.fixture(scope="session")
def trained_config(tmp_path_factory) -> Config:
    """A tiny data set, trained end to end (under a minute on 2 cores)."""
    from training import pipeline

    root = tmp_path_factory.mktemp("recsys")
    # The serving stack runs with Milvus authentication on, the token read from a file.
    token_file = root / "milvus-token"
    token_file.write_text(f"root:{secrets.token_urlsafe(16)}\n")
    token_file.chmod(0o600)
    config = make_config(root, milvus={"auth": True, "token_file": str(token_file)})
    pipeline.run(config)
    return config


@pytest.fixture(scope="session")
def serving_stack(trained_config):
    """Feast applied + materialized, model repository exported, real Milvus and Triton up."""
    from recsys.jobs import stack

    stack.load_features(trained_config)
    stack.export(trained_config)
    with stack.local_stack(trained_config, reindex=True) as (milvus, triton):
        yield trained_config, milvus, triton


@pytest.fixture(scope="session")
def clients(serving_stack):
    """HTTP and gRPC clients of the served ``recommender``."""
    from recsys.client import RecommenderClient

    _, _, triton = serving_stack
    made = {"http": RecommenderClient(triton.http_url, "http"),
            "grpc": RecommenderClient(triton.grpc_url, "grpc")}
    yield made
    for client in made.values():
        client.close()


@pytest.fixture(scope="session")
def catalogue(serving_stack):
    """Known user ids, the set of item ids, and the popular items, all raw ids."""
    from core.artifacts import Artifacts

    artifacts = Artifacts.of(serving_stack[0])
    users = pd.read_parquet(artifacts.users)["user_id"].to_numpy()
    items = set(pd.read_parquet(artifacts.items)["item_id"].tolist())
    popular = pd.read_parquet(artifacts.popular_items)["item_id"].to_numpy()
    return users, items, popular


@dataclass
class ServeRun:
    """A running ``recsys serve``: its process, ports and what it printed up to "Ctrl-C"."""

    process: subprocess.Popen
    ports: dict[str, int]
    output: str
    config_path: Path


@contextmanager
def recsys_serve(trained_config: Config, root: Path, collection: str, triton_toml: str = ""):
    """``recsys serve`` in a subprocess on a copy of ``trained_config``'s artifacts (its Feast
    repo), free ports, its own Milvus, ``triton_toml`` lines added to its [triton] table; stopped (SIGTERM, then SIGKILL of its group) on exit."""
    workdir = root / "work"
    for name in ("data", "workflows", "models"):
        shutil.copytree(trained_config.workdir / name, workdir / name)
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port(), "milvus": free_port()}
    config_path = root / "recsys.toml"
    config_path.write_text(f"""
workdir = "{workdir}"
feature_repo = "{trained_config.feature_repo}"
[milvus]
port = {ports['milvus']}
collection = "{collection}"
[triton]
http_port = {ports['http']}
grpc_port = {ports['grpc']}
metrics_port = {ports['metrics']}
{triton_toml}
[serving]
retrieval_k = {trained_config.serving.retrieval_k}
""")
    recsys = str(Path(sys.executable).parent / "recsys")
    process = subprocess.Popen([recsys, "--config", str(config_path), "serve"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        lines = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C to stop" in line:
                break
        yield ServeRun(process, ports, "".join(lines), config_path)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def config_factory():
    """:func:`make_config`, for test modules that need a configuration of their own."""
    return make_config


@pytest.fixture(scope="session")
def serve_command():
    """:func:`recsys_serve`, for test modules (they cannot import this conftest)."""
    return recsys_serve


# Modules that must see a fresh serving stack: test_faults asks for users whose features are
# not yet in the model's feature cache (any other module may warm it). Modules that change
# the session stack's online features (events) run last, so no other module sees them.
RUN_FIRST = ("test_faults.py",)
RUN_LAST = ("test_events.py",)


def pytest_collection_modifyitems(config, items):
    """Run the RUN_FIRST modules before the others and RUN_LAST after (stable order otherwise)."""
    items.sort(key=lambda item: 0 if item.path.name in RUN_FIRST else 2 if item.path.name in RUN_LAST else 1)
