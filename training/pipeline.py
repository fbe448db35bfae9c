"""The offline job: data -> split -> feature tables -> workflows -> models -> artifacts.

Hyper-parameters the data decides (epochs of each model, the weight of the retrieval score in
the final order) are tuned on a validation split carved from the *training* interactions,
never on the test split; the models are then trained again on all training interactions.
Everything is written under ``config.workdir`` (and the Feast offline source under
``config.feature_data_dir``); serving reads these artifacts and never writes them.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time

import pandas as pd

from core import progress
from core.artifacts import Artifacts
from core.config import Config
from training import features, imported, sources, tuning
from training import workflows as wf
from training.dataset import InteractionData, load_files
from training.feast_source import check_feature_repo_owner, ensure_feature_repo, write_feast_source
from training.tables import Tables, model_specs, side_features

LOG = logging.getLogger(__name__)


def resolve_split(config: Config) -> str:
    """``auto``: the last click of each session for click logs, a random share otherwise."""
    method = config.data.split
    if method == "auto":
        return "last" if config.data.source in ("synthetic", "yoochoose") else "random"
    return method


def load_data(config: Config, production: bool = False) -> tuple[InteractionData, pd.DataFrame, pd.DataFrame]:
    """The data set (with the interactions the pipeline imported) and its (train, test) split
    (or the given held-out file as test). In a ``production`` build nothing of the data is held
    out: train is every interaction (test is empty, or the given held-out file)."""
    data = imported.appended(sources.load(config.data), config.imported_dir, config.events_dir)
    LOG.info("data set:\n%s", data.summary())
    if production and not config.data.test_interactions_path:
        return data, data.interactions, data.interactions.iloc[:0]
    if config.data.test_interactions_path:
        held_out = load_files(config.data.test_interactions_path).interactions
        return data, data.interactions, held_out
    train, test = features.split(data.interactions, resolve_split(config), config.data.test_fraction,
                                 config.data.split_seed)
    return data, train, test


def run(config: Config, top_popular: int = 1000, production: bool = False) -> Artifacts:
    """Run the whole offline job and return where its artifacts are.

    ``production`` (``recsys build`` / ``train``): what is served is built from every
    interaction given - epochs and the blend weight are still chosen on a validation split
    (of all the data), then the models, the users' ``history`` (what serving excludes), the
    counts and the popular list come from all of it. Otherwise (``recsys evaluate``, tests) a
    test split is held out of everything, for the offline metrics."""
    started = time.perf_counter()
    # malformed input stops here, before anything is written
    data, train, test = load_data(config, production)
    check_feature_repo_owner(config)
    ensure_feature_repo(config)
    out = Artifacts.of(config)
    for directory in (out.users.parent, out.user_workflow.parent, out.query_tower.parent,
                      config.feature_data_dir):
        directory.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    user_features, item_features = side_features(data)
    max_history = config.training.max_history
    users = features.user_table(train, data.users, max_history)
    items = features.item_table(data.interactions, train, data.items)
    data.interactions.to_parquet(out.interactions, index=False)
    train.to_parquet(out.train_interactions, index=False)
    test.to_parquet(out.test_interactions, index=False)
    users.to_parquet(out.users, index=False)
    items.to_parquet(out.items, index=False)
    features.popular_items(train, top_popular).to_parquet(out.popular_items, index=False)
    out.features.write_text(json.dumps({"user": user_features.to_dict(), "item": item_features.to_dict()}))
    write_feast_source(config, users, items, user_features, item_features)
    timings["data_s"] = time.perf_counter() - started
    held = (f"all {len(train):,} to train on (production build: nothing held out)" if production
            else f"{len(train):,} to train on, {len(test):,} held out ({resolve_split(config)} split)")
    progress.stage("data", f"{len(data.interactions):,} interactions, {len(users):,} users, {len(items):,} items; "
                           f"{held}", timings["data_s"])

    started = time.perf_counter()
    with wf.dask_cluster(config.dask_scheduler):  # NVTabular fit and transforms on Dask, if given
        workflows = wf.fit_workflows(users, items, user_features, item_features, out.user_workflow.parent)
        wf.write_id_mapping(workflows["user"], users, "user_id", out.user_id_map)
        wf.write_id_mapping(workflows["item"], items, "item_id", out.item_id_map)
        specs = model_specs(workflows)
        timings["workflows_s"] = time.perf_counter() - started
        progress.stage("workflows", "NVTabular user and item workflows fitted", timings["workflows_s"])

        started = time.perf_counter()
        choice = tuning.tune(config, data, train, workflows, specs, resolve_split(config))
        timings["tuning_s"] = time.perf_counter() - started
        curve = choice.curves.get("ranker_ndcg@10_by_weight") if choice.curves else None
        figure = f"; validation NDCG@10 {max(max(row) for row in curve):.4f} (selection run)" if curve else ""
        progress.stage("tuning", f"validation chose {choice.tower_epochs} two-tower and {choice.ranker_epochs} "
                                 f"ranker epochs, retrieval weight {choice.retrieval_weight}{figure}",
                       timings["tuning_s"])

        started = time.perf_counter()
        tables = Tables.build(data, train, workflows, specs, max_history, users, items)
    two_tower, ranker = tuning.train_models(config, tables, specs, choice)
    two_tower.save_user_tower(out.query_tower)
    two_tower.save_item_tower(out.item_tower)
    vectors = two_tower.item_vectors(tables.item_inputs)
    pd.DataFrame({"item_id": items["item_id"].to_numpy(), "embedding": list(vectors)}).to_parquet(
        out.item_vectors, index=False)
    ranker.save(out.ranking_model)
    out.ordering.write_text(json.dumps({"retrieval_weight": choice.retrieval_weight,
                                        "max_history": max_history}))
    timings["models_s"] = time.perf_counter() - started
    progress.stage("models", f"two-tower ({vectors.shape[1]}-d item vectors) and ranker trained and saved",
                   timings["models_s"])

    report = {
        "interactions": int(len(data.interactions)), "users": int(len(users)), "items": int(len(items)),
        "train_interactions": int(len(train)), "test_interactions": int(len(test)),
        "split": "none (production build)" if production else resolve_split(config),
        "production": production, "embedding_dim": int(vectors.shape[1]),
        "tuning": dataclasses.asdict(choice), "timings": timings,
        "validation": choice.validation,  # the release gate's figures (selection run)
        "events_read": data.events_read,  # bytes of each events file the build read
    }
    out.report.write_text(json.dumps(report, indent=2))
    LOG.info("training done: %s", report)
    return out
