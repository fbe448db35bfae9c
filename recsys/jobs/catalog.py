"""Catalogue operations on the live system: the serving release's Milvus item collection
(behind the alias its models search), the items' rows in the Feast online store, and the
catalogue journal that carries every edit into later releases
(:mod:`recsys.jobs.catalog_journal`).

* :meth:`Catalog.upsert` adds or updates items: their vectors come from the serving release's
  item tower applied to their features (through the saved NVTabular item workflow; an id the
  model never saw gets the unknown-id embedding plus its features), or are given; features go
  to Feast's online store. It returns once searches see the new vectors, so the next request
  can retrieve them - no Triton restart.
* :meth:`Catalog.delete`, :meth:`Catalog.count`, :meth:`Catalog.drop`.
* :meth:`Catalog.rebuild` builds a new collection from the serving release's item vectors and
  the journal and switches its aliases to it (see :func:`recsys.jobs.releases.ensure_collection`).

The most-popular fallback list is fixed at export: a release made after a delete leaves the
deleted items out of it; the serving one keeps offering them until the next release.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from core.config import Config
from recsys.jobs import releases
from recsys.jobs.catalog_journal import (DELETE, UPSERT, CatalogError, Journal, complete_items, mark_applied,
                                         tower_vectors, wait_until_searchable, write_features)
from vector_index.client import ID_FIELD, connect
from vector_index.collections import aliased_collection, item_rows

__all__ = ["Catalog", "CatalogError"]


class Catalog:
    """The served item catalogue of one configuration."""

    def __init__(self, config: Config):
        self.config = config
        # the item tower, workflow and feature list of the release that serves
        self.artifacts = releases.serving_artifacts(config)
        self.journal = Journal(config)

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
        vectors into the serving release's collection, features into Feast, the edit into the
        journal (later releases get it with vectors of their own item tower). Returns the
        number of items."""
        with self.journal.locked():
            serving, artifacts = self._serving()
            items = complete_items(artifacts, items)
            vectors = tower_vectors(artifacts, items) if vectors is None else vectors
            vectors = np.asarray(vectors, dtype=np.float32)
            if vectors.shape[0] != len(items):
                raise CatalogError(f"{len(items)} items but {vectors.shape[0]} vectors")
            ids = items["item_id"].to_numpy(dtype=np.int64)
            with self.journal.recording(UPSERT, items=items) as seq:
                write_features(self.config, artifacts, items)
                client = self._client()
                try:
                    client.upsert(self._target(serving), item_rows(ids, vectors, items))
                    wait_until_searchable(client, self._target(serving), ids, visible_within_s,
                                          self.config.milvus.timeout_s)
                finally:
                    client.close()
                self._applied(serving, seq)
        return len(items)

    def delete(self, item_ids) -> int:
        """Remove items from the serving release's collection and from every later release
        (their Feast rows stay; nothing retrieves them)."""
        ids = [int(i) for i in item_ids]
        with self.journal.locked():
            serving, _ = self._serving()
            with self.journal.recording(DELETE, item_ids=ids) as seq:
                client = self._client()
                try:
                    client.delete(self._target(serving), ids=ids)
                    client.query(self._target(serving), filter=f"{ID_FIELD} in {ids}",
                                 output_fields=[ID_FIELD], consistency_level="Strong")
                finally:
                    client.close()
                self._applied(serving, seq)
        return len(ids)

    def journal_size(self) -> int:
        """Edits the journal holds (applied to every release's collection)."""
        return self.journal.count()

    def clear_journal(self) -> int:
        """Forget the recorded edits (once the items file of the next build has them); the
        collections keep them until rebuilt. Returns how many were forgotten."""
        with self.journal.locked():
            return self.journal.clear()

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
        """The serving release's item tower's vectors for completed ``items``."""
        return tower_vectors(self.artifacts, items)

    def _complete(self, items: pd.DataFrame) -> pd.DataFrame:
        return complete_items(self.artifacts, items)

    def _serving(self):
        """The serving release (``None`` before the first) and its artifacts, its collection
        caught up on the journal (the caller holds the journal's lock)."""
        serving = releases.serving_release(self.config)
        self.artifacts = releases.serving_artifacts(self.config)
        if serving is not None:
            releases.catch_up(self.config, serving, self.journal)
        return serving, self.artifacts

    def _target(self, serving: int | None) -> str:
        """The collection the serving release's models search."""
        return self.config.milvus.collection if serving is None else releases.release_alias(self.config, serving)

    def _applied(self, serving: int | None, seq: int) -> None:
        if serving is not None:
            mark_applied(releases.release_artifacts(self.config, serving).root, seq)

    def _client(self):
        return connect(self.config.milvus, max(self.config.milvus.timeout_s, 30.0))
