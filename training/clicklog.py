"""Click logs in the YOOCHOOSE format: ``session_id,timestamp,item_id,category``.

Each session is treated as a user. Two sources share one frame layout
(``user_id`` int64, ``timestamp`` datetime64[ns, UTC], ``item_id`` int64, ``category`` str):

* :func:`generate_clicks` - a synthetic log with real structure (skewed item popularity,
  sessions with one or two category interests, time-ordered clicks);
* :func:`read_yoochoose` - a real ``yoochoose-clicks.dat`` given by path.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

CLICK_COLUMNS = ["user_id", "timestamp", "item_id", "category"]
_EPOCH = pd.Timestamp("2014-04-01T00:00:00Z")
_LOG_DAYS = 30


@dataclass(frozen=True)
class Catalogue:
    """The synthetic catalogue: raw item ids, their category and popularity weight."""

    item_ids: np.ndarray
    categories: np.ndarray
    weights: np.ndarray


def make_catalogue(num_items: int, num_categories: int, rng: np.random.Generator) -> Catalogue:
    """Items with sparse raw ids (as in YOOCHOOSE), skewed category sizes and a Zipf
    popularity. About 5% of items are special offers (category ``"S"``)."""
    item_ids = 214_500_000 + rng.choice(5 * num_items, size=num_items, replace=False)
    category_sizes = 1.0 / np.arange(1, num_categories + 1) ** 0.6
    codes = rng.choice(num_categories, size=num_items, p=category_sizes / category_sizes.sum())
    categories = (codes + 1).astype(str).astype(object)
    categories[rng.random(num_items) < 0.05] = "S"
    weights = 1.0 / rng.permutation(np.arange(1, num_items + 1)) ** 0.9
    return Catalogue(item_ids.astype(np.int64), categories, weights / weights.sum())


def generate_clicks(num_sessions: int, num_items: int, num_categories: int = 12,
                    mean_session_length: float = 5.0, seed: int = 7,
                    interest_share: float = 0.85) -> pd.DataFrame:
    """Generate a YOOCHOOSE-shaped click log.

    Every session has a primary category interest and, for 30% of sessions, a second one.
    A click goes with probability ``interest_share`` to an item of one of the session's
    interests (chosen by popularity within that category), otherwise to any item by global
    popularity. Sessions have at least two clicks, so each can be split into train and test.
    """
    if num_sessions < 1 or num_items < num_categories:
        raise ValueError("need at least one session and one item per category")
    rng = np.random.default_rng(seed)
    catalogue = make_catalogue(num_items, num_categories, rng)
    labels, category_of_item = np.unique(catalogue.categories.astype(str), return_inverse=True)
    category_weight = np.bincount(category_of_item, weights=catalogue.weights)
    category_weight = category_weight / category_weight.sum()

    lengths = 2 + rng.geometric(1.0 / max(mean_session_length - 1.0, 1.0), size=num_sessions) - 1
    lengths = np.minimum(lengths, 60)
    primary = rng.choice(len(labels), size=num_sessions, p=category_weight)
    secondary = np.where(rng.random(num_sessions) < 0.3,
                         rng.choice(len(labels), size=num_sessions, p=category_weight), primary)

    session_of_click = np.repeat(np.arange(num_sessions), lengths)
    n_clicks = len(session_of_click)
    use_secondary = rng.random(n_clicks) < 0.35
    interest = np.where(use_secondary, secondary[session_of_click], primary[session_of_click])
    in_interest = rng.random(n_clicks) < interest_share

    items = np.empty(n_clicks, dtype=np.int64)
    global_cdf = np.cumsum(catalogue.weights)
    pick = np.searchsorted(global_cdf, rng.random(n_clicks) * global_cdf[-1])
    items[:] = np.minimum(pick, num_items - 1)
    for code in range(len(labels)):
        members = np.flatnonzero(category_of_item == code)
        mask = in_interest & (interest == code)
        if not mask.any() or len(members) == 0:
            continue
        cdf = np.cumsum(catalogue.weights[members])
        draws = np.searchsorted(cdf, rng.random(mask.sum()) * cdf[-1])
        items[mask] = members[np.minimum(draws, len(members) - 1)]

    starts = rng.random(num_sessions) * _LOG_DAYS * 86_400.0
    gaps = rng.exponential(90.0, size=n_clicks)
    first_of_session = np.r_[0, np.cumsum(lengths)[:-1]]
    gaps[first_of_session] = 0.0
    offsets = np.cumsum(gaps)
    offsets -= np.repeat(offsets[first_of_session], lengths)
    seconds = starts[session_of_click] + offsets
    timestamps = _EPOCH + pd.to_timedelta(np.round(seconds * 1000).astype(np.int64), unit="ms")

    return pd.DataFrame({
        "user_id": (session_of_click + 1).astype(np.int64),
        "timestamp": timestamps,
        "item_id": catalogue.item_ids[items],
        "category": catalogue.categories[items].astype(str),
    })


def write_yoochoose(clicks: pd.DataFrame, path: str | Path) -> None:
    """Write clicks as a ``yoochoose-clicks.dat`` file (no header, ISO-8601 timestamps)."""
    out = pd.DataFrame({
        "session_id": clicks["user_id"],
        "timestamp": clicks["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S.%f").str[:-3] + "Z",
        "item_id": clicks["item_id"],
        "category": clicks["category"],
    })
    out.to_csv(path, header=False, index=False)


def read_yoochoose(path: str | Path, max_rows: int | None = None) -> pd.DataFrame:
    """Read a real ``yoochoose-clicks.dat`` (or one written by :func:`write_yoochoose`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"YOOCHOOSE click file not found: {path}")
    frame = pd.read_csv(path, header=None, names=["session_id", "timestamp", "item_id", "category"],
                        dtype={"session_id": np.int64, "item_id": np.int64, "category": str},
                        nrows=max_rows)
    if frame.empty:
        raise ValueError(f"{path}: no clicks")
    try:
        timestamps = pd.to_datetime(frame["timestamp"], utc=True)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: unparseable timestamp ({exc})") from exc
    clicks = pd.DataFrame({
        "user_id": frame["session_id"],
        "timestamp": timestamps,
        "item_id": frame["item_id"],
        "category": frame["category"].fillna("0"),
    })
    return clicks.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
