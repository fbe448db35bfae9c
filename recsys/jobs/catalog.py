"""Catalogue operations on the live system: the Milvus item collection (behind the alias
serving searches) and the items' rows in the Feast online store.

* :meth:`Catalog.upsert` adds or updates items: their vectors come from the trained item tower
  applied to their features (through the saved NVTabular item workflow; an id the model never
  saw gets the unknown-id embedding plus its features), or are given; features go to Feast's
  online store. It returns once searches see the new vectors, so the next request can
  retrieve them - no Triton restart.
* :meth:`Catalog.delete`, :meth:`Catalog.count`, :meth:`Catalog.drop`.
* :meth:`Catalog.rebuild` builds a new collection from the serving release's item vectors and
  switches its aliases to it (see :func:`recsys.jobs.releases.ensure_collection`).

The most-popular fallback list is fixed at export; re-export to refresh it after deletions.
"""
from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd

from core.config import Config
from recsys.jobs import releases
from training.feast_source import feast_frame
from training.features import Features
from vector_index.client import ID_FIELD, MilvusUnavailable, connect, rpc_timeout
from vector_index.collections import aliased_collection, item_rows

ITEM_VIEW = "item_features"


class CatalogError(ValueError):
    """A catalogue operation got input it cannot use."""


class Catalog:
    """The served item catalogue of one configuration."""

    def __init__(self, config: Config):
        self.config = config
        # the item tower, workflow and feature list of the release that serves
        self.artifacts = releases.serving_artifacts(config)

    def count(self) -> int:
        """Items in the collection serving searches (strongly consistent)."""
        client = self._client()
        try:
            rows = client.query(self.config.milvus.collection, filter="", output_fields=["count(*)"],
                                consistency_level="Strong")
            return int(rows[0]["count(*)"])
        finally:
            client.close()

    def upsert(self, items: pd.DataFrame, vectors: np.ndarray | None = None,
               visible_within_s: float = 30.0) -> int:
        """Insert or update ``items`` (``item_id`` + the item feature columns of training):
        vectors into Milvus, features into Feast. Returns the number of items."""
        items = self._complete(items)
        if vectors is None:
            vectors = self.item_vectors(items)
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape[0] != len(items):
            raise CatalogError(f"{len(items)} items but {vectors.shape[0]} vectors")
        ids = items["item_id"].to_numpy(dtype=np.int64)
        self._write_features(items)
        client = self._client()
        try:
            client.upsert(self.config.milvus.collection, item_rows(ids, vectors, items))
            self._wait_until_searchable(client, ids, visible_within_s)
        finally:
            client.close()
        return len(items)

    def delete(self, item_ids) -> int:
        """Remove items from the collection (their Feast rows stay; nothing retrieves them)."""
        ids = [int(i) for i in item_ids]
        client = self._client()
        try:
            client.delete(self.config.milvus.collection, ids=ids)
            client.query(self.config.milvus.collection, filter=f"{ID_FIELD} in {ids}",
                         output_fields=[ID_FIELD], consistency_level="Strong")
        finally:
            client.close()
        return len(ids)

    def drop(self) -> list[str]:
        """Drop the alias and the collection(s) behind it. Serving fails until a rebuild."""
        client = self._client()
        name = self.config.milvus.collection
        try:
            target = aliased_collection(client, name)
            dropped = []
            if target is not None:
                client.drop_alias(name)
                client.drop_collection(target)
                dropped.append(target)
            elif client.has_collection(name):
                client.drop_collection(name)
                dropped.append(name)
            return dropped
        finally:
            client.close()

    def rebuild(self) -> int:
        """A new collection of the serving release's item vectors and the items' categories,
        then its aliases switched to it (what ``recsys index`` and ``serve`` build too)."""
        serving = releases.serving_release(self.config)
        if serving is None:
            raise CatalogError(f"no release in {self.config.workdir}: run `recsys build` (or `recsys export`)")
        return releases.ensure_collection(self.config, serving, rebuild=True)

    def collection(self) -> str | None:
        """The physical collection serving searches now."""
        client = self._client()
        try:
            return aliased_collection(client, self.config.milvus.collection)
        finally:
            client.close()

    def item_vectors(self, items: pd.DataFrame) -> np.ndarray:
        """The trained item tower's vectors for ``items`` (raw feature columns)."""
        import tensorflow as tf

        from training import workflows as wf
        from training.models import side_arrays

        if not self.artifacts.item_tower.is_dir():
            raise CatalogError(f"no item tower in {self.artifacts.item_tower}: retrain with this "
                               f"version (`recsys train`) or pass vectors")
        workflow = wf.load_workflow(self.artifacts.item_workflow)
        spec = wf.side_spec(workflow.output_schema, "item_id")
        encoded = wf.transform(workflow, items[[c for c in workflow.input_schema.column_names]])
        signature = tf.saved_model.load(str(self.artifacts.item_tower)).signatures["serving_default"]
        inputs = {name: tf.constant(values) for name, values in side_arrays(encoded, spec).items()}
        return signature(**inputs)["item_vector"].numpy()

    def _complete(self, items: pd.DataFrame) -> pd.DataFrame:
        """Check the columns against training's item features; derived counts default to 0."""
        if "item_id" not in items.columns:
            raise CatalogError("items need an item_id column")
        if items["item_id"].duplicated().any():
            raise CatalogError("duplicate item_id values in one upsert")
        spec = json.loads(self.artifacts.features.read_text())["item"]
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

    def _write_features(self, items: pd.DataFrame) -> None:
        spec = json.loads(self.artifacts.features.read_text())["item"]
        frame = feast_frame(items, Features(**spec))
        frame["event_timestamp"] = pd.Timestamp.now(tz="UTC").floor("s")
        store = self.config.open_feature_store()
        store.write_to_online_store(ITEM_VIEW, frame)

    def _wait_until_searchable(self, client, ids: np.ndarray, timeout_s: float) -> None:
        """Searches read with bounded staleness: poll with the same (default) consistency
        until every id is visible."""
        deadline = time.monotonic() + timeout_s
        pending = [int(i) for i in ids]
        while pending:
            found = set()
            for start in range(0, len(pending), 1000):
                part = pending[start:start + 1000]
                rows = client.query(self.config.milvus.collection, filter=f"{ID_FIELD} in {part}",
                                    output_fields=[ID_FIELD], timeout=rpc_timeout(self.config.milvus.timeout_s))
                found.update(int(row[ID_FIELD]) for row in rows)
            pending = [i for i in pending if i not in found]
            if pending and time.monotonic() > deadline:
                raise MilvusUnavailable(f"{len(pending)} upserted items not searchable after {timeout_s:.0f}s")
            if pending:
                time.sleep(0.2)

    def _client(self):
        return connect(self.config.milvus, max(self.config.milvus.timeout_s, 30.0))
