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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.config import Config
from training import features, progress, sources
from training import workflows as wf
from training.dataset import InteractionData
from training.features import HISTORY, Features

LOG = logging.getLogger(__name__)


@dataclass
class Artifacts:
    """Paths of everything the offline job produces."""

    root: Path

    @classmethod
    def of(cls, config: Config) -> "Artifacts":
        return cls(config.workdir)

    interactions = property(lambda self: self.root / "data" / "interactions.parquet")
    train_interactions = property(lambda self: self.root / "data" / "train.parquet")
    test_interactions = property(lambda self: self.root / "data" / "test.parquet")
    users = property(lambda self: self.root / "data" / "users.parquet")
    items = property(lambda self: self.root / "data" / "items.parquet")
    features = property(lambda self: self.root / "data" / "features.json")
    popular_items = property(lambda self: self.root / "data" / "popular_items.parquet")
    user_id_map = property(lambda self: self.root / "data" / "user_id_map.parquet")
    item_id_map = property(lambda self: self.root / "data" / "item_id_map.parquet")
    user_workflow = property(lambda self: self.root / "workflows" / "user")
    item_workflow = property(lambda self: self.root / "workflows" / "item")
    query_tower = property(lambda self: self.root / "models" / "query_tower")
    item_tower = property(lambda self: self.root / "models" / "item_tower")
    ranking_model = property(lambda self: self.root / "models" / "dlrm")
    item_vectors = property(lambda self: self.root / "models" / "item_vectors.parquet")
    ordering = property(lambda self: self.root / "models" / "ordering.json")
    report = property(lambda self: self.root / "training_report.json")


def resolve_split(config: Config) -> str:
    """``auto``: the last click of each session for click logs, a random share otherwise."""
    method = config.data.split
    if method == "auto":
        return "last" if config.data.source in ("synthetic", "yoochoose") else "random"
    return method


def side_features(data: InteractionData) -> tuple[Features, Features]:
    """Feature columns of users and items: the data set's, plus the derived ones."""
    u, i = data.user_features, data.item_features
    users = Features(list(u.categorical), list(u.continuous), list(u.lists) + [HISTORY],
                     [features.USER_COUNT])
    items = Features(list(i.categorical), list(i.continuous), list(i.lists), [features.ITEM_COUNT])
    return users, items


@dataclass
class Tables:
    """The feature tables of one training set and their encoded model inputs."""

    users: pd.DataFrame
    items: pd.DataFrame
    user_inputs: dict
    item_inputs: dict
    pairs: tuple[np.ndarray, np.ndarray]  # (user row, item row) of every training interaction

    @classmethod
    def build(cls, data: InteractionData, train: pd.DataFrame, workflows: dict, specs, max_history: int,
              users: pd.DataFrame | None = None, items: pd.DataFrame | None = None) -> "Tables":
        from training.models import side_arrays

        users = features.user_table(train, data.users, max_history) if users is None else users
        items = features.item_table(data.interactions, train, data.items) if items is None else items
        encoded_users = wf.transform(workflows["user"], users)
        encoded_items = wf.transform(workflows["item"], items)
        user_spec = _merged(specs)
        user_row = pd.Series(np.arange(len(users)), index=users["user_id"].to_numpy())
        item_row = pd.Series(np.arange(len(items)), index=items["item_id"].to_numpy())
        pairs = (user_row.loc[train["user_id"]].to_numpy(), item_row.loc[train["item_id"]].to_numpy())
        return cls(users, items, side_arrays(encoded_users, user_spec, max_history),
                   side_arrays(encoded_items, specs["item"]), pairs)


def _merged(specs):
    tower, ranker = specs["tower"], specs["ranker"]
    return dataclasses.replace(tower, categorical={**tower.categorical, **ranker.categorical},
                               lists={**tower.lists, **ranker.lists})


def load_data(config: Config, production: bool = False) -> tuple[InteractionData, pd.DataFrame, pd.DataFrame]:
    """The data set and its (train, test) split (or the given held-out file as test). In a
    ``production`` build nothing of the data is held out: train is every interaction (test is
    empty, or the given held-out file)."""
    data = sources.load(config.data)
    LOG.info("data set:\n%s", data.summary())
    if production and not config.data.test_interactions_path:
        return data, data.interactions, data.interactions.iloc[:0]
    if config.data.test_interactions_path:
        from training.dataset import load_files

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
    from training import tuning

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
    }
    out.report.write_text(json.dumps(report, indent=2))
    LOG.info("training done: %s", report)
    return out


def model_specs(workflows: dict) -> dict:
    """Model input specs: the user tower (no history), the ranker's user side (history, no
    user id: a user is what they did) and the item side (shared by both models)."""
    user = wf.side_spec(workflows["user"].output_schema, "user_id", {HISTORY: "item_id"})
    item = wf.side_spec(workflows["item"].output_schema, "item_id")
    tower = dataclasses.replace(user, lists={k: v for k, v in user.lists.items() if k != HISTORY},
                                shared_tables={})
    ranker = dataclasses.replace(user, categorical={k: v for k, v in user.categorical.items()
                                                    if k != "user_id"})
    return {"tower": tower, "ranker": ranker, "item": item}


def write_feast_source(config: Config, users: pd.DataFrame, items: pd.DataFrame,
                       user_features: Features, item_features: Features) -> None:
    """The Feast offline source: raw feature values keyed by raw ids, stamped with the time
    they were computed, and the feature list the repo's definitions read."""
    computed_at = pd.Timestamp.now(tz="UTC").floor("s")
    target = config.feature_data_dir
    _feast_frame(users, user_features).assign(event_timestamp=computed_at).to_parquet(
        target / "user_features.parquet", index=False)
    _feast_frame(items, item_features).assign(event_timestamp=computed_at).to_parquet(
        target / "item_features.parquet", index=False)
    spec = {"user_features": user_features.feast_types(id_lists=(HISTORY,)),
            "item_features": item_features.feast_types()}
    (target / "features.json").write_text(json.dumps(spec, indent=2))
    (target / FEATURE_REPO_OWNER).write_text(str(config.workdir.resolve()) + "\n")


FEATURE_REPO_OWNER = "workdir.txt"
FEATURE_REPO_FILES = ("feature_store.yaml", "feature_store.redis.yaml", "definitions.py")


def ensure_feature_repo(config: Config) -> None:
    """A new Feast repository directory gets the project's definitions and store files."""
    import shutil

    from recsys.config import PROJECT_ROOT

    source = PROJECT_ROOT / "feature_repo"
    config.feature_repo.mkdir(parents=True, exist_ok=True)
    if config.feature_repo.resolve() == source.resolve():
        return
    for name in FEATURE_REPO_FILES:
        if not (config.feature_repo / name).exists():
            shutil.copy(source / name, config.feature_repo / name)


def check_feature_repo_owner(config: Config) -> None:
    """Refuse to train into a Feast repository whose data another work directory wrote: its
    served model reads those features (the feature list and the values), and overwriting them
    would break it silently."""
    owner_file = config.feature_data_dir / FEATURE_REPO_OWNER
    if not owner_file.is_file():
        return
    owner = Path(owner_file.read_text().strip())
    if owner != config.workdir.resolve() and owner.exists():
        raise ValueError(
            f"the Feast repository {config.feature_repo} holds the features of work directory {owner}; "
            f"training {config.workdir} would overwrite them under that directory's served model. "
            f"Give this work directory its own repository (--feature-repo DIR or RECSYS_FEATURE_REPO; "
            f"a new directory gets the project's definitions), or delete {owner_file} to hand it over")


def _feast_frame(frame: pd.DataFrame, side: Features) -> pd.DataFrame:
    out = frame[[frame.columns[0]] + side.columns].copy()
    for column in side.categorical:
        out[column] = out[column].astype(str)
    for column in side.continuous + side.counts:
        out[column] = out[column].astype(np.float32)
    for column in side.lists:
        kind = np.int64 if column == HISTORY else str
        out[column] = [list(np.asarray(v).astype(kind)) for v in out[column]]
    return out
