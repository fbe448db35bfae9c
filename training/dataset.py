"""(temporary minimal version)"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd


class DataError(ValueError):
    def __init__(self, message, path=None, row=None, column=None):
        super().__init__(message)
        self.path, self.row, self.column = path, row, column


@dataclass
class FeatureSpec:
    categorical: list = field(default_factory=list)
    continuous: list = field(default_factory=list)
    lists: list = field(default_factory=list)
    dropped: list = field(default_factory=list)

    @property
    def columns(self):
        return self.categorical + self.continuous + self.lists


@dataclass
class InteractionData:
    interactions: pd.DataFrame
    users: pd.DataFrame | None
    items: pd.DataFrame | None
    user_features: FeatureSpec
    item_features: FeatureSpec

    def summary(self) -> str:
        return f"{len(self.interactions)} interactions; users {self.user_features}; items {self.item_features}"


def read_table(path):
    path = Path(path)
    return pd.read_parquet(path) if path.suffix in (".parquet", ".pq") else pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",")


def _side(frame, declared, sep):
    spec = FeatureSpec()
    if frame is None:
        return None, spec
    frame = frame.copy()
    for column in frame.columns[1:]:
        kind = declared.get(column)
        if kind is None:
            kind = "categorical" if frame[column].dtype == object else "continuous"
        if kind == "list":
            frame[column] = frame[column].fillna("").astype(str).apply(lambda v: [t for t in v.split(sep) if t])
            spec.lists.append(column)
        elif kind == "categorical":
            frame[column] = frame[column].fillna("").astype(str)
            spec.categorical.append(column)
        else:
            frame[column] = frame[column].astype(np.float32)
            spec.continuous.append(column)
    return frame, spec


def from_frames(interactions, users=None, items=None, declared=None, source="<memory>", list_separator="|"):
    declared = declared or {}
    users, uspec = _side(users, declared.get("users", {}), list_separator)
    items, ispec = _side(items, declared.get("items", {}), list_separator)
    inter = interactions.copy()
    inter["user_id"] = inter["user_id"].astype(np.int64)
    inter["item_id"] = inter["item_id"].astype(np.int64)
    inter["timestamp"] = inter["timestamp"].astype(np.int64)
    return InteractionData(inter, users, items, uspec, ispec)


def load_files(interactions, users=None, items=None, schema=None, list_separator="|"):
    return from_frames(read_table(interactions), users and read_table(users), items and read_table(items),
                       source=str(interactions), list_separator=list_separator)
