"""What training writes into the Feast repository: the offline source (raw feature values
keyed by raw ids), the feature list its definitions read, and which work directory owns it."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from core.config import PROJECT_ROOT, Config
from training.features import HISTORY, Features


def write_feast_source(config: Config, users: pd.DataFrame, items: pd.DataFrame,
                       user_features: Features, item_features: Features) -> None:
    """The Feast offline source: raw feature values keyed by raw ids, stamped with the time
    they were computed, and the feature list the repo's definitions read."""
    computed_at = pd.Timestamp.now(tz="UTC").floor("s")
    target = config.feature_data_dir
    feast_frame(users, user_features).assign(event_timestamp=computed_at).to_parquet(
        target / "user_features.parquet", index=False)
    feast_frame(items, item_features).assign(event_timestamp=computed_at).to_parquet(
        target / "item_features.parquet", index=False)
    spec = {"user_features": user_features.feast_types(id_lists=(HISTORY,)),
            "item_features": item_features.feast_types()}
    (target / "features.json").write_text(json.dumps(spec, indent=2))
    (target / FEATURE_REPO_OWNER).write_text(str(config.workdir.resolve()) + "\n")


FEATURE_REPO_OWNER = "workdir.txt"
FEATURE_REPO_FILES = ("feature_store.yaml", "feature_store.redis.yaml", "definitions.py")


def ensure_feature_repo(config: Config) -> None:
    """A new Feast repository directory gets the project's definitions and store files."""
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


def feast_frame(frame: pd.DataFrame, side: Features) -> pd.DataFrame:
    """A users or items table as Feast stores it: the id column and ``side``'s features, each
    cast to its Feast value type."""
    out = frame[[frame.columns[0]] + side.columns].copy()
    for column in side.categorical:
        out[column] = out[column].astype(str)
    for column in side.continuous + side.counts:
        out[column] = out[column].astype(np.float32)
    for column in side.lists:
        kind = np.int64 if column == HISTORY else str
        out[column] = [list(np.asarray(v).astype(kind)) for v in out[column]]
    return out
