"""The offline job: click log -> feature tables -> workflows -> models -> artifacts.

Everything is written under ``config.workdir`` (and the Feast offline source under
``config.feature_data_dir``); serving reads these artifacts and never writes them.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.config import Config
from training import clicklog, features
from training import workflows as wf

LOG = logging.getLogger(__name__)


@dataclass
class Artifacts:
    """Paths of everything the offline job produces."""

    root: Path

    @classmethod
    def of(cls, config: Config) -> "Artifacts":
        return cls(config.workdir)

    clicks = property(lambda self: self.root / "data" / "clicks.parquet")
    train_clicks = property(lambda self: self.root / "data" / "train_clicks.parquet")
    test_clicks = property(lambda self: self.root / "data" / "test_clicks.parquet")
    users = property(lambda self: self.root / "data" / "users.parquet")
    items = property(lambda self: self.root / "data" / "items.parquet")
    popular_items = property(lambda self: self.root / "data" / "popular_items.parquet")
    user_id_map = property(lambda self: self.root / "data" / "user_id_map.parquet")
    item_id_map = property(lambda self: self.root / "data" / "item_id_map.parquet")
    user_workflow = property(lambda self: self.root / "workflows" / "user")
    item_workflow = property(lambda self: self.root / "workflows" / "item")
    query_tower = property(lambda self: self.root / "models" / "query_tower")
    ranking_model = property(lambda self: self.root / "models" / "dlrm")
    item_vectors = property(lambda self: self.root / "models" / "item_vectors.parquet")
    report = property(lambda self: self.root / "training_report.json")


def load_clicks(config: Config) -> pd.DataFrame:
    """The click log named by the configuration (synthetic or a real YOOCHOOSE file)."""
    data = config.data
    if data.source == "yoochoose":
        return clicklog.read_yoochoose(data.yoochoose_path)
    if data.source == "synthetic":
        return clicklog.generate_clicks(data.num_sessions, data.num_items, data.num_categories,
                                        data.mean_session_length, data.seed)
    raise ValueError(f"unknown data source {data.source!r}: use 'synthetic' or 'yoochoose'")


def run(config: Config, top_popular: int = 1000) -> Artifacts:
    """Run the whole offline job and return where its artifacts are."""
    from training import models  # TensorFlow is imported only when training.

    out = Artifacts.of(config)
    for directory in (out.clicks.parent, out.user_workflow.parent, out.query_tower.parent,
                      config.feature_data_dir):
        directory.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    clicks = load_clicks(config)
    train, test = features.split_last_click(clicks)
    users = features.user_features(train)
    items = features.item_features(train, clicks[["item_id", "category"]])
    clicks.to_parquet(out.clicks, index=False)
    train.to_parquet(out.train_clicks, index=False)
    test.to_parquet(out.test_clicks, index=False)
    users.to_parquet(out.users, index=False)
    items.to_parquet(out.items, index=False)
    features.popular_items(train, top_popular).to_parquet(out.popular_items, index=False)
    # The Feast offline source: raw feature values keyed by raw ids, stamped with the time
    # they were computed (Feast's event timestamp).
    computed_at = pd.Timestamp.now(tz="UTC").floor("s")
    users.assign(event_timestamp=computed_at).to_parquet(
        config.feature_data_dir / "user_features.parquet", index=False)
    items.assign(event_timestamp=computed_at).to_parquet(
        config.feature_data_dir / "item_features.parquet", index=False)
    timings["data_s"] = time.perf_counter() - started

    started = time.perf_counter()
    fitted = wf.fit_workflows(users, items, out.user_workflow.parent)
    user_wf, item_wf = fitted["user"], fitted["item"]
    wf.write_id_mapping(user_wf, users, "user_id", out.user_id_map)
    wf.write_id_mapping(item_wf, items, "item_id", out.item_id_map)
    encoded_users = wf.transform(user_wf, users).set_index(users["user_id"].to_numpy())
    encoded_items = wf.transform(item_wf, items).set_index(items["item_id"].to_numpy())
    timings["workflows_s"] = time.perf_counter() - started

    user_schema, item_schema = user_wf.output_schema, item_wf.output_schema
    started = time.perf_counter()
    pairs = train[["user_id", "item_id"]]
    encoded_pairs = pd.concat(
        [encoded_users.loc[pairs["user_id"].to_numpy()].reset_index(drop=True),
         encoded_items.loc[pairs["item_id"].to_numpy()].reset_index(drop=True)], axis=1)
    two_tower = models.train_two_tower(encoded_pairs, user_schema + item_schema, config.training)
    vectors = models.export_two_tower(two_tower, encoded_items.reset_index(drop=True),
                                      items["item_id"].to_numpy(), item_schema, out.query_tower.parent)
    vectors.to_parquet(out.item_vectors, index=False)
    timings["two_tower_s"] = time.perf_counter() - started

    started = time.perf_counter()
    examples = features.ranking_examples(train, items, config.training.negatives_per_positive,
                                         config.training.seed)
    encoded_examples = pd.concat(
        [encoded_users.loc[examples["user_id"].to_numpy()].reset_index(drop=True),
         encoded_items.loc[examples["item_id"].to_numpy()].reset_index(drop=True),
         examples[[models.RANKING_TARGET]].reset_index(drop=True)], axis=1)
    ranker = models.train_dlrm(encoded_examples, models.ranking_schema(user_schema, item_schema),
                               config.training)
    ranker.save(str(out.ranking_model))
    timings["dlrm_s"] = time.perf_counter() - started

    report = {
        "clicks": int(len(clicks)), "users": int(len(users)), "items": int(len(items)),
        "train_clicks": int(len(train)), "test_clicks": int(len(test)),
        "ranking_examples": int(len(examples)),
        "ranking_positive_share": float(examples[models.RANKING_TARGET].mean()),
        "embedding_dim": int(np.stack(vectors["embedding"].head(1))[0].shape[0]),
        "timings": timings,
    }
    out.report.write_text(json.dumps(report, indent=2))
    LOG.info("training done: %s", report)
    return out
