"""The ``events`` model: interactions that change the next answer.

A request is a batch of events (``user_id``, ``item_id``, optional ``timestamp`` in epoch
seconds - 0 or absent: now -, ``event_type``, ``event_value``). Each event is checked on its
own: a negative id, a timestamp that is not epoch seconds or lies more than a day ahead, an
infinite value (NaN means no value), or an item the catalogue does not have (no row in Feast's item
view) rejects that event with a message (output ``error``); the others are applied
(``accepted``). Applied, in this order, under one lock for the Feast repository:

1. written to the online store with Feast's ``write_to_online_store``: each user's
   ``history`` gets the new items in front (most recent first, deduplicated, at most
   ``training.max_history``), ``user_interactions`` and each item's ``item_interactions`` grow; a
   user Feast does not know yet gets a row (default features), so cold start turns personalized;
3. recorded in the update logs (:mod:`operators.feature_updates`): every serving process drops
   those users from its feature cache before its next request, and refreshes those items in
   the background.
"""
from __future__ import annotations

import csv
import math
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from core.config import Config
from core.contract import EVENTS, BadRequest
from ensemble.graph import feast_features
from operators import feature_updates
from operators.settings import serving_config
from training.features import HISTORY, ITEM_COUNT, USER_COUNT
from training.imported import EVENT_COLUMNS

MAX_AHEAD_S = 86_400
WRITTEN = "__written"  # a row's last write (epoch seconds), read with it, never written
DEFAULTS = {"string": "", "float32": 0.0, "int64": 0}


class EventsRunner:
    """Applies batches of events (see the module docstring)."""

    contract = EVENTS
    exports_metrics = False

    def __init__(self, config: Config):
        self.config = config
        self.store = config.open_feature_store()
        self.features = feast_features(config)
        self.max_history = config.training.max_history
        self.events_dir = config.events_dir

    @classmethod
    def load(cls, ensemble_dir: str | Path) -> "EventsRunner":
        return cls(serving_config(str(ensemble_dir)))

    def replay(self, users, items, stamps, now: float | None = None) -> None:
        """Write logged events to the online store again (after a materialization replaced
        the rows they had changed), without logging them again; the caller holds
        :func:`operators.feature_updates.writing`."""
        users, items = np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)
        item_rows = self._rows("item_features", "item_id", np.unique(items))
        known = np.isin(items, [i for i, row in item_rows.items() if row is not None])
        if known.any():
            self._write_online(users[known], items[known], np.asarray(stamps, dtype=np.int64)[known], item_rows,
                               int(time.time() if now is None else now))

    def answer(self, inputs: dict) -> dict[str, np.ndarray]:
        """The Triton model's entry: the contract's inputs (``None`` for absent optional ones)."""
        return self.apply(inputs["user_id"], inputs["item_id"], inputs.get("timestamp"),
                          inputs.get("event_type"), inputs.get("event_value"))

    def apply(self, user_id, item_id, timestamp=None, event_type=None, event_value=None,
              now: float | None = None) -> dict[str, np.ndarray]:
        """``{"accepted": bool [n], "error": str [n]}`` for ``n`` events."""
        users, items = _ids(user_id, "user_id"), _ids(item_id, "item_id")
        n = len(users)
        if len(items) != n:
            raise BadRequest(f"item_id has {len(items)} values for {n} user ids: one per event")
        now = int(time.time() if now is None else now)
        stamps = np.zeros(n, dtype=np.int64) if timestamp is None else _column(timestamp, n, "timestamp", np.int64)
        stamps = np.where(stamps == 0, now, stamps)
        kinds = (np.full(n, "", dtype=object) if event_type is None
                 else np.array([_text(v) for v in _column(event_type, n, "event_type", object)], dtype=object))
        values = (np.full(n, np.nan, dtype=np.float64) if event_value is None
                  else _column(event_value, n, "event_value", np.float64))
        errors = np.full(n, "", dtype=object)
        errors[users < 0] = "user_id must be >= 0"
        errors[items < 0] = "item_id must be >= 0"
        errors[(stamps < 0) & (errors == "")] = "timestamp must be epoch seconds (>= 0; 0 = now)"
        ahead = (stamps > now + MAX_AHEAD_S) & (errors == "")
        errors[ahead] = [f"timestamp {t} is more than a day ahead of the server's clock" for t in stamps[ahead]]
        errors[np.isinf(values) & (errors == "")] = "event_value must be a finite number (NaN: none)"
        with feature_updates.writing(self.config.feature_data_dir):
            ok = errors == ""
            item_rows = self._rows("item_features", "item_id", np.unique(items[ok]))
            unknown = ok & ~np.isin(items, [i for i, row in item_rows.items() if row is not None])
            errors[unknown] = [f"item_id {i} is not in the catalogue" for i in items[unknown]]
            ok = errors == ""
            if ok.any():  # online first: an event the caller sees fail is not in the next build
                self._write_online(users[ok], items[ok], stamps[ok], item_rows, now)
                self._append_offline(users[ok], items[ok], stamps[ok], kinds[ok], values[ok])
        return {"accepted": ok, "error": errors}

    def _rows(self, view: str, key: str, ids: np.ndarray) -> dict[int, dict | None]:
        """Each id's current online row (feature -> value, and under ``WRITTEN`` the second it
        was written), ``None`` where Feast has none."""
        if len(ids) == 0:
            return {}
        names = list(self.features[view])
        found = self.store.get_online_features(features=[f"{view}:{name}" for name in names],
                                               entity_rows=[{key: int(i)} for i in ids]).to_dict(
            include_event_timestamps=True)
        rows = {}
        for position, entity in enumerate(ids.tolist()):
            values = {name: found[name][position] for name in names}
            written = max([found[f"{name}__ts"][position] or 0 for name in names] + [0])
            rows[entity] = None if all(v is None for v in values.values()) else {**values, WRITTEN: written}
        return rows

    def _append_offline(self, users, items, stamps, kinds, values) -> None:
        self.events_dir.mkdir(parents=True, exist_ok=True)
        day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        path = self.events_dir / f"{day}.csv"
        with open(path, "a+", newline="") as handle:
            size = handle.tell()
            if size:  # a writer killed mid-line left no newline: end that line, not this one's
                handle.seek(size - 1)
                if handle.read(1) != "\n":
                    handle.write("\n")
            writer = csv.writer(handle)
            if not size:
                writer.writerow(EVENT_COLUMNS)
            writer.writerows(zip(users.tolist(), items.tolist(), stamps.tolist(), kinds.tolist(),
                                 ["" if math.isnan(v) else v for v in values.tolist()]))
            handle.flush()

    def _write_online(self, users, items, stamps, item_rows: dict, now: int) -> None:
        order = np.lexsort((-np.arange(len(stamps)), -stamps))  # most recent first; a tie: the later one
        user_rows = self._rows("user_features", "user_id", np.unique(users))
        new_items: dict[int, list[int]] = {}
        for user, item in zip(users[order].tolist(), items[order].tolist()):
            new_items.setdefault(user, []).append(item)
        rows = []
        for user, clicked in new_items.items():
            row = dict(user_rows.get(user) or self._defaults("user_features"))
            if HISTORY in row:
                history = list(dict.fromkeys(clicked + list(row[HISTORY] or [])))
                row[HISTORY] = history[: self.max_history]
            if USER_COUNT in row:
                row[USER_COUNT] = float(row[USER_COUNT] or 0.0) + len(clicked)
            rows.append({"user_id": user, **row})
        self.store.write_to_online_store("user_features", self._frame("user_features", rows, now))
        counts = pd.Series(items).value_counts()
        if ITEM_COUNT in self.features["item_features"]:
            item_updates = [{"item_id": item, **item_rows[item],
                             ITEM_COUNT: float(item_rows[item][ITEM_COUNT] or 0.0) + int(count)}
                            for item, count in counts.items()]
            self.store.write_to_online_store("item_features", self._frame("item_features", item_updates, now))
            feature_updates.append(feature_updates.log_path(self.config.feature_data_dir, "item_features"),
                                   counts.index.to_numpy())
        feature_updates.append(feature_updates.log_path(self.config.feature_data_dir, "user_features"),
                               np.array(list(new_items), dtype=np.int64))

    def _defaults(self, view: str) -> dict:
        return {name: ([] if kind.endswith("_list") else DEFAULTS[kind]) for name, kind in self.features[view].items()}

    def _frame(self, view: str, rows: list[dict], now: int) -> pd.DataFrame:
        """The rows to write, each stamped later than the row it replaces: Feast's Redis store
        keeps a row whose timestamp is not older (seconds), so two writes of one user within a
        second would lose the second one."""
        stamps = [pd.Timestamp(max(now, int(row.pop(WRITTEN, 0) or 0) + 1), unit="s", tz="UTC") for row in rows]
        frame = pd.DataFrame(rows)
        for name, kind in self.features[view].items():
            if kind.endswith("_list"):
                frame[name] = [list(v) if v is not None else [] for v in frame[name]]
            else:
                frame[name] = frame[name].fillna(DEFAULTS[kind]).astype(
                    {"string": object, "float32": np.float32, "int64": np.int64}[kind])
        frame["event_timestamp"] = stamps
        return frame


def _ids(values, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype.kind not in "iu":
        raise BadRequest(f"{name} must be INT64, got {array.dtype}")
    array = array.reshape(-1) if array.ndim == 2 and 1 in array.shape else array
    if array.ndim != 1 or array.size == 0:
        raise BadRequest(f"{name} must be a 1-D batch of at least one id, got shape {list(array.shape)}")
    return array.astype(np.int64)


def _column(values, n: int, name: str, dtype) -> np.ndarray:
    array = np.asarray(values).reshape(-1)
    if array.size != n:
        raise BadRequest(f"{name} has {array.size} values for {n} events: one per event")
    return array.astype(dtype) if dtype is not object else array


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return "" if value is None else str(value)
