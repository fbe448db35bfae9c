"""Data sources, each an adapter to the one input schema of :mod:`training.dataset`.

* ``synthetic`` - a generated YOOCHOOSE-shaped click log (sessions are users);
* ``yoochoose`` - a real ``yoochoose-clicks.dat`` by path;
* ``movielens`` - MovieLens-100K, read from the installed ``recbole`` wheel (never copied
  into the repository: its licence forbids redistribution);
* ``files`` - your own interactions / users / items files (CSV or parquet) and an optional
  schema file declaring column kinds.
"""
from __future__ import annotations

import importlib.resources
import logging

import numpy as np
import pandas as pd

from core.config import DataConfig
from training import clicklog
from training.dataset import InteractionData, from_frames, load_files

LOG = logging.getLogger(__name__)
SOURCES = ("synthetic", "yoochoose", "movielens", "files")


def load(cfg: DataConfig) -> InteractionData:
    """The validated data set named by the configuration."""
    if cfg.source == "synthetic":
        data = _from_clicks(clicklog.generate_clicks(cfg.num_sessions, cfg.num_items, cfg.num_categories,
                                                     cfg.mean_session_length, cfg.seed), "synthetic")
    elif cfg.source == "yoochoose":
        data = _from_clicks(clicklog.read_yoochoose(cfg.yoochoose_path), cfg.yoochoose_path)
    elif cfg.source == "movielens":
        data = movielens_100k()
    elif cfg.source == "files":
        if not cfg.interactions_path:
            raise ValueError("data.source = 'files' needs data.interactions_path")
        data = load_files(cfg.interactions_path, cfg.users_path or None, cfg.items_path or None,
                          cfg.schema_path or None)
    else:
        raise ValueError(f"unknown data source {cfg.source!r}: use one of {', '.join(SOURCES)}")
    if cfg.max_users:
        data = sample_users(data, cfg.max_users, cfg.seed)
    return data


def _from_clicks(clicks: pd.DataFrame, name: str) -> InteractionData:
    interactions = pd.DataFrame({
        "user_id": clicks["user_id"],
        "item_id": clicks["item_id"],
        "timestamp": clicks["timestamp"].astype("int64") // 10**9,
    })
    items = clicks[["item_id", "category"]].drop_duplicates("item_id").rename(
        columns={"category": "item_category"})
    return from_frames(interactions, items=items, declared={"items": {"item_category": "categorical"}},
                       source=name)


def movielens_100k() -> InteractionData:
    """MovieLens-100K (Harper & Konstan 2015) from the ``recbole`` wheel: every rating is an
    interaction (``event_value`` = rating); users carry age, gender, occupation and zip
    prefix, items carry genres and release year."""
    try:
        folder = importlib.resources.files("recbole") / "dataset_example" / "ml-100k"
    except ModuleNotFoundError as exc:
        raise RuntimeError("MovieLens-100K is read from the recbole wheel: "
                           "pip install --no-deps recbole==1.2.1 (make setup does)") from exc

    def read(name: str) -> pd.DataFrame:
        frame = pd.read_csv(folder / f"ml-100k.{name}", sep="\t", dtype=str, keep_default_na=False)
        frame.columns = [c.split(":")[0] for c in frame.columns]
        return frame

    inter, users, items = read("inter"), read("user"), read("item")
    interactions = pd.DataFrame({"user_id": inter["user_id"].astype(np.int64),
                                 "item_id": inter["item_id"].astype(np.int64),
                                 "timestamp": inter["timestamp"].astype(float).astype(np.int64),
                                 "event_value": inter["rating"].astype(np.float32)})
    users = pd.DataFrame({"user_id": users["user_id"].astype(np.int64),
                          "age": users["age"].astype(np.float32),
                          "gender": users["gender"],
                          "occupation": users["occupation"],
                          "zip_prefix": users["zip_code"].str[:2]})
    items = pd.DataFrame({"item_id": items["item_id"].astype(np.int64),
                          "genres": items["class"].str.split().apply(lambda g: "|".join(g or [])),
                          "release_year": items["release_year"]})
    declared = {"users": {"age": "continuous", "gender": "categorical", "occupation": "categorical",
                          "zip_prefix": "categorical"},
                "items": {"genres": "list", "release_year": "categorical"}}
    return from_frames(interactions, users, items, declared=declared, source="recbole:ml-100k")


def sample_users(data: InteractionData, max_users: int, seed: int) -> InteractionData:
    """The interactions of at most ``max_users`` users drawn at random (a reduced run)."""
    ids = data.interactions["user_id"].unique()
    if len(ids) <= max_users:
        return data
    keep = np.random.default_rng(seed).choice(ids, size=max_users, replace=False)
    interactions = data.interactions[data.interactions["user_id"].isin(keep)].reset_index(drop=True)
    users = None if data.users is None else data.users[data.users["user_id"].isin(keep)].reset_index(drop=True)
    return InteractionData(interactions, users, data.items, data.user_features, data.item_features)
