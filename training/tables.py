"""What the models are fed: the feature columns of each side, the model input specs of the
workflows' output, and the encoded tables of one training set (shared by the final training
and the validation runs of :mod:`training.tuning`)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from training import features
from training import workflows as wf
from training.dataset import InteractionData
from training.features import HISTORY, Features
from training.models import side_arrays


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
