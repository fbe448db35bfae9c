"""From a click log to the tables the rest of the project uses.

* :func:`split_last_click` - each user's last click is held out (time order respected).
* :func:`user_features` / :func:`item_features` - feature tables derived from training clicks
  only; they are the offline source of the Feast repo and the input of the NVTabular workflows.
* :func:`ranking_examples` - clicked pairs (label 1) plus sampled non-clicked items (label 0).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

USER_CATEGORICAL = ["user_activity", "user_top_category", "user_start_hour"]
USER_CONTINUOUS = ["user_clicks"]
ITEM_CATEGORICAL = ["item_category", "item_popularity"]
ITEM_CONTINUOUS = ["item_clicks"]
USER_FEATURES = USER_CATEGORICAL + USER_CONTINUOUS
ITEM_FEATURES = ITEM_CATEGORICAL + ITEM_CONTINUOUS


def split_last_click(clicks: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out every user's chronologically last click; users with one click stay in train."""
    ordered = clicks.sort_values(["user_id", "timestamp"], kind="stable")
    position_from_end = ordered.groupby("user_id").cumcount(ascending=False)
    size = ordered.groupby("user_id")["item_id"].transform("size")
    is_test = (position_from_end == 0) & (size > 1)
    return (ordered[~is_test].reset_index(drop=True), ordered[is_test].reset_index(drop=True))


def _activity_bucket(counts: pd.Series) -> pd.Series:
    return pd.cut(counts, bins=[0, 1, 3, 7, 15, np.inf],
                  labels=["1", "2-3", "4-7", "8-15", "16+"]).astype(str)


def user_features(train_clicks: pd.DataFrame) -> pd.DataFrame:
    """One row per user: activity bucket, most clicked category, hour the session started
    (in 4-hour buckets) and click count."""
    grouped = train_clicks.groupby("user_id")
    counts = grouped["item_id"].size()
    top_category = (train_clicks.groupby(["user_id", "category"]).size().rename("n").reset_index()
                    .sort_values(["user_id", "n", "category"], ascending=[True, False, True])
                    .drop_duplicates("user_id").set_index("user_id")["category"])
    first_seen = grouped["timestamp"].min()
    frame = pd.DataFrame({
        "user_id": counts.index.astype(np.int64),
        "user_activity": _activity_bucket(counts).values,
        "user_top_category": top_category.reindex(counts.index).values.astype(str),
        "user_start_hour": (first_seen.dt.hour // 4).astype(np.int64).values,
        "user_clicks": counts.values.astype(np.float32),
    })
    return frame.reset_index(drop=True)


def item_features(train_clicks: pd.DataFrame, catalogue: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per catalogue item: category, popularity decile, click count.

    ``catalogue`` (``item_id``, ``category``) lists items that may have no training click;
    by default the catalogue is every item seen in the log.
    """
    if catalogue is None:
        catalogue = train_clicks[["item_id", "category"]]
    catalogue = catalogue.drop_duplicates("item_id").set_index("item_id")["category"]
    counts = train_clicks["item_id"].value_counts().reindex(catalogue.index, fill_value=0)
    ranks = counts.rank(method="first", ascending=False)
    decile = np.ceil(10 * ranks / len(ranks)).astype(np.int64)
    return pd.DataFrame({
        "item_id": catalogue.index.astype(np.int64),
        "item_category": catalogue.values.astype(str),
        "item_popularity": decile.values,
        "item_clicks": counts.values.astype(np.float32),
    }).reset_index(drop=True)


def popular_items(train_clicks: pd.DataFrame, k: int) -> pd.DataFrame:
    """The ``k`` most clicked items with their share of clicks (the cold-start fallback)."""
    counts = train_clicks["item_id"].value_counts()
    top = counts.head(k)
    return pd.DataFrame({"item_id": top.index.astype(np.int64),
                         "score": (top.values / counts.sum()).astype(np.float32)})


def ranking_examples(train_clicks: pd.DataFrame, items: pd.DataFrame, negatives_per_positive: int,
                     seed: int) -> pd.DataFrame:
    """Clicked (user, item) pairs labelled 1 and sampled non-clicked pairs labelled 0.

    Half of the negatives are drawn by item popularity (hard: popular but not clicked), half
    uniformly, so the ranker learns the user's affinity rather than popularity alone.
    """
    rng = np.random.default_rng(seed)
    positives = train_clicks[["user_id", "item_id"]].drop_duplicates()
    n_neg = len(positives) * negatives_per_positive
    users = np.repeat(positives["user_id"].to_numpy(), negatives_per_positive)
    item_ids = items["item_id"].to_numpy()
    weights = items["item_clicks"].to_numpy(dtype=np.float64) + 1.0
    by_popularity = rng.choice(item_ids, size=n_neg, p=weights / weights.sum())
    uniform = rng.choice(item_ids, size=n_neg)
    candidates = np.where(rng.random(n_neg) < 0.5, by_popularity, uniform)
    negatives = pd.DataFrame({"user_id": users, "item_id": candidates}).drop_duplicates()
    clicked = pd.MultiIndex.from_frame(positives)
    negatives = negatives[~pd.MultiIndex.from_frame(negatives).isin(clicked)]
    examples = pd.concat([positives.assign(click=1), negatives.assign(click=0)], ignore_index=True)
    return examples.sample(frac=1.0, random_state=seed).reset_index(drop=True).astype(
        {"user_id": np.int64, "item_id": np.int64, "click": np.int32})
