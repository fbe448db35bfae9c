"""The catalogue journal: every live catalogue edit (upsert, delete), in order, so that no
release loses one.

A build's items file is where a release's catalogue starts; the journal is what happened to the
catalogue since. Every release's collection is its trained item vectors with the journal applied
on top - an upserted item gets a vector from *that release's* item tower, a deleted one is left
out - and each release remembers how far into the journal its collection is
(``releases/<n>/journal_applied``), so a rollout, a rollback or a rebuild catches up on what it
has not seen and never resurrects a deleted item or loses an added one.

One file, ``<workdir>/catalog/journal.jsonl``: a line per edit, ``seq`` increasing. Writers hold
an exclusive lock on ``journal.lock`` (:meth:`Journal.locked`) across "which release serves,
write its collection, append the edit", and a rollout holds it across "catch up, switch", so an
edit is never written to a collection that stops serving before it is recorded.
``recsys catalog journal --clear`` empties it (after the edits are in the items file the next
build reads); the sequence numbers go on.
"""
from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from core.artifacts import Artifacts
from core.config import Config
from operators import feature_updates
from training.feast_source import feast_frame
from training.features import Features
from vector_index.client import ID_FIELD, MilvusUnavailable, rpc_timeout
from vector_index.collections import item_rows

UPSERT, DELETE, CLEARED = "upsert", "delete", "cleared"
ITEM_VIEW = "item_features"


class CatalogError(ValueError):
    """A catalogue operation got input it cannot use."""


@dataclass
class Edits:
    """The net effect of a run of edits: per item, its last edit wins."""

    upserts: pd.DataFrame = field(default_factory=pd.DataFrame)  # completed item rows
    deletes: list[int] = field(default_factory=list)
    last: int = 0  # the seq of the last edit read

    def __bool__(self) -> bool:
        return bool(len(self.upserts) or self.deletes)


class Journal:
    """The catalogue journal of one work directory."""

    def __init__(self, config: Config):
        self.dir = config.workdir / "catalog"
        self.path = self.dir / "journal.jsonl"

    @contextmanager
    def locked(self):
        """Hold the journal's exclusive lock (between processes, not re-entrant)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "journal.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def last(self) -> int:
        """The seq of the newest line (0: never written)."""
        lines = self._lines()
        return lines[-1]["seq"] if lines else 0

    def count(self) -> int:
        """Edits recorded (since the last clear)."""
        return sum(1 for line in self._lines() if line["op"] != CLEARED)

    @contextmanager
    def recording(self, op: str, items: pd.DataFrame | None = None, item_ids=None):
        """Append one edit (under :meth:`locked`), durable before the body runs; if the body
        fails the edit is taken out again, so the journal holds only edits that happened.
        Yields its seq."""
        self.dir.mkdir(parents=True, exist_ok=True)
        line = {"seq": self.last() + 1, "op": op, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if items is not None:
            line["items"] = json.loads(items.to_json(orient="records"))
        if item_ids is not None:
            line["item_ids"] = [int(i) for i in item_ids]
        size = self.path.stat().st_size if self.path.is_file() else 0
        with open(self.path, "a") as handle:
            handle.write(json.dumps(line) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            yield line["seq"]
        except BaseException:
            with open(self.path, "r+") as handle:
                handle.truncate(size)
            raise

    def clear(self) -> int:
        """Forget every edit (under :meth:`locked`); returns how many there were."""
        count, last = self.count(), self.last()
        if last:
            scratch = self.path.with_suffix(".tmp")
            scratch.write_text(json.dumps({"seq": last, "op": CLEARED}) + "\n")
            scratch.replace(self.path)
        return count

    def edits(self, artifacts: Artifacts, after: int = 0) -> Edits:
        """The net effect of the edits after seq ``after``; upserted rows completed against
        ``artifacts``' item features."""
        lines = [line for line in self._lines() if line["seq"] > after]
        latest: dict[int, tuple[str, dict | None]] = {}
        for line in lines:
            if line["op"] == UPSERT:
                latest.update((int(row["item_id"]), (UPSERT, row)) for row in line["items"])
            elif line["op"] == DELETE:
                latest.update((i, (DELETE, None)) for i in line["item_ids"])
        rows = [row for op, row in latest.values() if op == UPSERT]
        return Edits(complete_items(artifacts, pd.DataFrame(rows)) if rows else pd.DataFrame(),
                     [i for i, (op, _) in latest.items() if op == DELETE], lines[-1]["seq"] if lines else after)

    def deleted(self) -> set[int]:
        """Items whose last edit is a delete."""
        latest: dict[int, str] = {}
        for line in self._lines():
            if line["op"] == UPSERT:
                latest.update((int(row["item_id"]), UPSERT) for row in line["items"])
            elif line["op"] == DELETE:
                latest.update((i, DELETE) for i in line["item_ids"])
        return {i for i, op in latest.items() if op == DELETE}

    def _lines(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(text) for text in self.path.read_text().splitlines() if text.strip()]


def applied(release_root: Path) -> int:
    """How far into the journal the release's collection is."""
    path = release_root / "journal_applied"
    return int(path.read_text()) if path.is_file() else 0


def mark_applied(release_root: Path, seq: int) -> None:
    scratch = release_root / "journal_applied.tmp"
    scratch.write_text(str(seq))
    scratch.replace(release_root / "journal_applied")


def apply_to_collection(client, collection: str, artifacts: Artifacts, edits: Edits,
                        timeout_s: float = 30.0, milvus_timeout_s: float = 10.0) -> None:
    """Write ``edits`` into ``collection`` (vectors of the upserted items from ``artifacts``'
    item tower); returns once searches see the upserted items."""
    if len(edits.upserts):
        ids = edits.upserts["item_id"].to_numpy(dtype=np.int64)
        client.upsert(collection, item_rows(ids, tower_vectors(artifacts, edits.upserts), edits.upserts))
        wait_until_searchable(client, collection, ids, timeout_s, milvus_timeout_s)
    if edits.deletes:
        client.delete(collection, ids=list(edits.deletes))
        client.query(collection, filter=f"{ID_FIELD} in {list(edits.deletes)}", output_fields=[ID_FIELD],
                     consistency_level="Strong")


def with_edits(item_ids: np.ndarray, vectors: np.ndarray, items: pd.DataFrame, artifacts: Artifacts,
               edits: Edits) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """A release's trained item vectors and item rows with ``edits`` applied: what its
    collection holds."""
    upserted = edits.upserts["item_id"].tolist() if len(edits.upserts) else []
    keep = ~np.isin(item_ids, np.asarray(edits.deletes + upserted, dtype=np.int64))
    item_ids, vectors = item_ids[keep], vectors[keep]
    if len(edits.upserts):
        item_ids = np.concatenate([item_ids, edits.upserts["item_id"].to_numpy(dtype=np.int64)])
        vectors = np.concatenate([vectors, tower_vectors(artifacts, edits.upserts).astype(np.float32)])
        items = pd.concat([items[~items["item_id"].isin(edits.upserts["item_id"])], edits.upserts],
                          ignore_index=True)
    return item_ids, vectors, items


def write_features(config: Config, artifacts: Artifacts, items: pd.DataFrame) -> None:
    """Completed item rows into Feast's online store."""
    spec = json.loads(artifacts.features.read_text())["item"]
    frame = feast_frame(items, Features(**spec))
    frame["event_timestamp"] = pd.Timestamp.now(tz="UTC").floor("s")
    with feature_updates.writing(config.feature_data_dir):
        config.open_feature_store().write_to_online_store(ITEM_VIEW, frame)
        feature_updates.append(feature_updates.log_path(config.feature_data_dir, ITEM_VIEW),
                               frame["item_id"].to_numpy())


def complete_items(artifacts: Artifacts, items: pd.DataFrame) -> pd.DataFrame:
    """Check ``items``' columns against training's item features; derived counts default to 0,
    list features given as ``a|b|c`` become lists."""
    if "item_id" not in items.columns:
        raise CatalogError("items need an item_id column")
    if items["item_id"].duplicated().any():
        raise CatalogError("duplicate item_id values in one upsert")
    spec = json.loads(artifacts.features.read_text())["item"]
    items = items.copy()
    try:
        items["item_id"] = pd.to_numeric(items["item_id"], errors="raise").astype(np.int64)
    except (ValueError, TypeError) as exc:
        raise CatalogError(f"item_id must be integers (int64): {exc}") from None
    for column in spec["continuous"] + spec.get("counts", []):
        if column in items.columns:
            items[column] = pd.to_numeric(items[column], errors="coerce").astype(np.float32)
    for column in spec.get("counts", []):
        if column not in items.columns:
            items[column] = 0
    needed = spec["categorical"] + spec["continuous"] + spec["lists"]
    missing = [c for c in needed if c not in items.columns]
    if missing:
        raise CatalogError(f"items lack the feature columns {missing} (training used {needed})")
    for column in spec["lists"]:
        items[column] = [list(v) if isinstance(v, (list, tuple, np.ndarray)) else
                         [x for x in str(v).split("|") if x] for v in items[column]]
    return items


def tower_vectors(artifacts: Artifacts, items: pd.DataFrame) -> np.ndarray:
    """``artifacts``' item tower applied to completed ``items`` (through its NVTabular item
    workflow; an id the model never saw gets the unknown-id embedding plus its features)."""
    import tensorflow as tf

    from training import workflows as wf
    from training.models import side_arrays

    if not artifacts.item_tower.is_dir():
        raise CatalogError(f"no item tower in {artifacts.item_tower}: retrain with this "
                           f"version (`recsys train`) or pass vectors")
    workflow = wf.load_workflow(artifacts.item_workflow)
    spec = wf.side_spec(workflow.output_schema, "item_id")
    encoded = wf.transform(workflow, items[[c for c in workflow.input_schema.column_names]])
    signature = tf.saved_model.load(str(artifacts.item_tower)).signatures["serving_default"]
    inputs = {name: tf.constant(values) for name, values in side_arrays(encoded, spec).items()}
    return signature(**inputs)["item_vector"].numpy()


def wait_until_searchable(client, collection: str, ids: np.ndarray, timeout_s: float,
                          milvus_timeout_s: float) -> None:
    """Searches read with bounded staleness: poll with the same (default) consistency until
    every id is visible."""
    deadline = time.monotonic() + timeout_s
    pending = [int(i) for i in ids]
    while pending:
        found = set()
        for start in range(0, len(pending), 1000):
            part = pending[start:start + 1000]
            rows = client.query(collection, filter=f"{ID_FIELD} in {part}", output_fields=[ID_FIELD],
                                timeout=rpc_timeout(milvus_timeout_s))
            found.update(int(row[ID_FIELD]) for row in rows)
        pending = [i for i in pending if i not in found]
        if pending and time.monotonic() > deadline:
            raise MilvusUnavailable(f"{len(pending)} upserted items not searchable after {timeout_s:.0f}s")
        if pending:
            time.sleep(0.2)
