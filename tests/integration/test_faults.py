"""Faults of a dependency while Triton serves. (Runs first among the integration tests,
``RUN_FIRST`` in tests/conftest.py: the users it asks for are not yet in the model's feature
cache.)"""
from __future__ import annotations

import re
import sqlite3
import urllib.request
from contextlib import contextmanager

import numpy as np
import pytest

pytestmark = pytest.mark.integration


@contextmanager
def unreadable_feature_view(config, view: str):
    """Make one feature view of the SQLite online store unreadable (its table renamed away),
    then put it back."""
    database = config.feature_repo / "data" / "online_store.db"
    table = f"recsys_{view}"
    with sqlite3.connect(database) as conn:
        conn.execute(f"ALTER TABLE {table} RENAME TO {table}_away")
    try:
        yield
    finally:
        with sqlite3.connect(database) as conn:
            conn.execute(f"ALTER TABLE {table}_away RENAME TO {table}")


def _failures(triton, view: str) -> float:
    text = urllib.request.urlopen(f"http://{triton.host}:{triton.metrics_port}/metrics", timeout=5).read().decode()
    match = re.search(rf'recsys_feature_store_failures_total{{feature_view="{view}"}} (\S+)', text)
    return float(match.group(1)) if match else 0.0


def test_unreadable_user_features_fall_back_to_popular_counted_and_logged(serving_stack, clients):
    config, _, triton = serving_stack
    import pandas as pd

    from core.artifacts import Artifacts

    # Users with interactions (personalized when Feast is readable).
    asked = pd.read_parquet(Artifacts.of(config).train_interactions)["user_id"].drop_duplicates().to_numpy()[-4:]
    before = _failures(triton, "user_features")
    with unreadable_feature_view(config, "user_features"):
        for protocol in ("http", "grpc"):
            answer = clients[protocol].recommend(asked)
            assert answer["source"].tolist() == ["popular"] * len(asked)
            assert answer["fallback"].all()
            assert np.all(np.diff(answer["scores"], axis=1) <= 0)
        assert clients["http"].ready()
    assert _failures(triton, "user_features") - before >= 2 * len(asked)
    assert "Feast online store lookup for user_features failed" in triton.log_path.read_text()
    # Readable again: the same users are personalized (failures were not cached).
    answer = clients["grpc"].recommend(asked)
    assert answer["source"].tolist() == ["personalized"] * len(asked)
