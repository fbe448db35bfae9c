"""A production build (``recsys build`` / ``train``) serves from every interaction given: the
models, the users' ``history`` (what serving excludes) and the counts come from all of them,
so no answer contains an item the user has in the interactions file."""
from __future__ import annotations

import pandas as pd
import pytest

from core.artifacts import Artifacts
from recsys.jobs import stack
from recsys.jobs.batch import BatchOptions, run_batch
from recsys.jobs.batch_store import BatchStore

pytestmark = pytest.mark.integration


def test_a_production_build_holds_nothing_out_and_never_recommends_a_seen_item(config_factory, tmp_path):
    config = config_factory(tmp_path, milvus={"collection": "production_items"})
    artifacts = stack.train(config, production=True)
    given = pd.read_csv(config.data.interactions_path)
    assert len(pd.read_parquet(artifacts.train_interactions)) == len(given)
    assert pd.read_parquet(artifacts.test_interactions).empty
    assert Artifacts.of(config).report.read_text().count('"production": true') == 1
    history = pd.read_parquet(artifacts.users).set_index("user_id")["history"]
    for user, items in given.groupby("user_id")["item_id"]:
        assert set(items) == set(history[user]), user  # every item given (fewer than max_history)
    counts = pd.read_parquet(artifacts.items).set_index("item_id")["item_interactions"]
    assert counts.sum() == len(given)

    stack.load_features(config)
    stack.export(config)
    users = sorted(given["user_id"].unique())
    url = f"sqlite:///{tmp_path / 'recs.db'}"
    with stack.local_milvus(config, reindex=True):
        result = run_batch(config, BatchOptions(k=config.serving.top_k, db_url=url, user_ids=users,
                                                chunk_size=64, progress=False))
    store = BatchStore(url)
    rows = store.run_rows(result.run_id)
    store.close()
    seen = given.groupby("user_id")["item_id"].apply(set).to_dict()
    assert len(rows) == len(users) * config.serving.top_k
    offending = [(user, item) for user, _, item, _, _ in rows if item in seen[user]]
    assert not offending, offending[:10]
