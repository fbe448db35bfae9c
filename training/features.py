"""From validated interactions to the tables the rest of the project uses.

* :func:`split` - held-out interactions: each user's last one (``last``), a per-user random
  share (``random``, fixed seed) or each user's latest share by timestamp (``chronological``).
* :func:`user_table` / :func:`item_table` - one row per user / item: the columns of the users /
  items file plus features derived from *training* interactions only (interaction counts and
  the user's history, most recent first). They are the offline source of the Feast repo and
  the input of the NVTabular workflows.
* :func:`popular_items` - the cold-start fallback.

Column kinds are described by :class:`Features` (what flows into NVTabular, Feast and models).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

HISTORY = "history"  # the user's training items, raw ids, most recent first
USER_COUNT = "user_interactions"
ITEM_COUNT = "item_interactions"
SPLITS = ("last", "random", "chronological", "sessions")


@dataclass
class Features:
    """The feature columns of one side, by kind. ``counts`` are derived, heavy-tailed
    continuous columns (log-transformed before normalizing)."""

    categorical: list[str] = field(default_factory=list)
    continuous: list[str] = field(default_factory=list)
    lists: list[str] = field(default_factory=list)
    counts: list[str] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        return self.categorical + self.continuous + self.counts + self.lists

    def feast_types(self, id_lists: tuple[str, ...] = ()) -> dict[str, str]:
        """Feature name -> value type as stored in Feast (see feature_repo/definitions.py)."""
        types = {name: "string" for name in self.categorical}
        types.update({name: "float32" for name in self.continuous + self.counts})
        types.update({name: "int64_list" if name in id_lists else "string_list" for name in self.lists})
        return types

    def to_dict(self) -> dict:
        return {"categorical": self.categorical, "continuous": self.continuous,
                "lists": self.lists, "counts": self.counts}


def split(interactions: pd.DataFrame, method: str, test_fraction: float = 0.25,
          seed: int = 42) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split per user into (train, test). Users with a single interaction stay in train.

    ``random`` holds out ``round(n * test_fraction)`` of each user's interactions chosen with
    ``seed``; ``chronological`` holds out the same number of the user's latest ones; ``last``
    holds out the latest one; ``sessions`` holds out every interaction of ``test_fraction`` of
    the users (whole sessions of a click log: the held-out users are unknown to training).
    """
    if method not in SPLITS:
        raise ValueError(f"unknown split {method!r}: use one of {', '.join(SPLITS)}")
    if method == "sessions":
        size = interactions.groupby("user_id")["item_id"].size()
        eligible = size[size > 1].index.to_numpy()
        held_users = np.random.default_rng(seed).choice(
            eligible, size=int(round(len(eligible) * test_fraction)), replace=False)
        is_test = interactions["user_id"].isin(held_users).to_numpy()
        train = interactions[~is_test].sort_values(["user_id", "timestamp"], kind="stable")
        test = interactions[is_test].sort_values(["user_id", "timestamp"], kind="stable")
        return train.reset_index(drop=True), test.reset_index(drop=True)
    if method == "random":
        ordered = interactions.sample(frac=1.0, random_state=seed)
    else:
        ordered = interactions.sort_values(["timestamp"], kind="stable", ascending=False)
    position = ordered.groupby("user_id").cumcount()
    size = ordered.groupby("user_id")["item_id"].transform("size")
    held = np.ones(len(ordered)) if method == "last" else np.round(size * test_fraction)
    is_test = (position < held) & (size > 1)
    train = ordered[~is_test].sort_values(["user_id", "timestamp"], kind="stable")
    test = ordered[is_test].sort_values(["user_id", "timestamp"], kind="stable")
    return train.reset_index(drop=True), test.reset_index(drop=True)


def user_table(train: pd.DataFrame, users: pd.DataFrame | None, max_history: int) -> pd.DataFrame:
    """One row per user (users of the users file and of ``train``): the file's columns,
    ``user_interactions`` and ``history`` (distinct training items, most recent first)."""
    latest = train.sort_values("timestamp", ascending=False, kind="stable").drop_duplicates(
        ["user_id", "item_id"]).sort_values("user_id", kind="stable")
    owners, starts = np.unique(latest["user_id"].to_numpy(), return_index=True)
    lists = np.split(latest["item_id"].to_numpy(dtype=np.int64), starts[1:])
    history = dict(zip(owners.tolist(), (items[:max_history] for items in lists)))
    counts = train.groupby("user_id").size()
    ids = counts.index if users is None else pd.Index(users["user_id"]).union(counts.index)
    frame = pd.DataFrame({"user_id": ids.to_numpy(dtype=np.int64)})
    if users is not None:
        frame = frame.merge(users, on="user_id", how="left")
        for column in users.columns.drop("user_id"):
            frame[column] = _fill(frame[column], users[column])
    frame[USER_COUNT] = counts.reindex(ids, fill_value=0).to_numpy(dtype=np.float32)
    empty = np.zeros(0, dtype=np.int64)
    frame[HISTORY] = [np.asarray(history.get(u, empty), dtype=np.int64) for u in ids]
    return frame


def item_table(interactions: pd.DataFrame, train: pd.DataFrame, items: pd.DataFrame | None) -> pd.DataFrame:
    """One row per catalogue item (the items file, else every item of the log): the file's
    columns and ``item_interactions`` (training interactions)."""
    ids = (pd.Index(items["item_id"]) if items is not None
           else pd.Index(interactions["item_id"].unique()).sort_values())
    frame = pd.DataFrame({"item_id": ids.to_numpy(dtype=np.int64)})
    if items is not None:
        frame = frame.merge(items.drop(columns=["creation_timestamp"], errors="ignore"),
                            on="item_id", how="left")
    counts = train["item_id"].value_counts()
    frame[ITEM_COUNT] = counts.reindex(ids, fill_value=0).to_numpy(dtype=np.float32)
    return frame


def _fill(values: pd.Series, like: pd.Series) -> pd.Series:
    """Values for users that interacted but are absent from the users file."""
    if like.dtype == object and len(like) and isinstance(like.iloc[0], (list, np.ndarray)):
        return values.apply(lambda v: v if isinstance(v, (list, np.ndarray)) else [])
    if pd.api.types.is_numeric_dtype(like):
        return values.fillna(like.median()).astype(like.dtype)
    return values.fillna("")


def popular_items(train: pd.DataFrame, k: int) -> pd.DataFrame:
    """The ``k`` items with most training interactions and their share of them."""
    counts = train["item_id"].value_counts()
    top = counts.head(k)
    return pd.DataFrame({"item_id": top.index.astype(np.int64),
                         "score": (top.values / counts.sum()).astype(np.float32)})
