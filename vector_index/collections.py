"""The item index's lifecycle: a new collection per build (rows, index, load, warm-up), the
alias serving searches switched to it, the collection it replaced dropped.

Serving never sees a half-built index: until the switch it searches the previous collection.
"""
from __future__ import annotations

import math
import time

import numpy as np

from core.config import MilvusConfig
from core.contract import CATEGORY_FEATURE
from core.progress import bar
from vector_index.client import (CATEGORY_FIELD, ID_FIELD, METRIC, VECTOR_FIELD, WARM_UP_QUERIES, MilvusUnavailable,
                                 connect, quiet_pymilvus, rpc_timeout, search_params, warm_up_search)


def build_item_index(cfg: MilvusConfig, item_ids: np.ndarray, vectors: np.ndarray, items=None,
                     progress: bool = False, also: tuple[str, ...] = ()) -> int:
    """Build a new collection with the item vectors (inserted in chunks, the configured index
    with the IP metric, loaded), then point the alias ``cfg.collection`` - the name serving
    searches - (and the aliases ``also``) at it and drop the collection it pointed at before.
    Serving never sees a half-built index: until the switch it searches the previous
    collection. ``items``: the item features (for each row's category, :func:`item_rows`).
    Returns the row count."""
    client = connect(cfg, timeout_s=max(cfg.timeout_s, 60.0))
    try:
        physical = f"{cfg.collection}{GENERATION_SEPARATOR}{time.time_ns() // 1_000_000}"
        _create_item_collection(client, physical, int(vectors.shape[1]))
        chunks = range(0, len(item_ids), cfg.insert_chunk_size)
        for start in bar(chunks, len(chunks), f"inserting {len(item_ids):,} item vectors", progress):
            stop = start + cfg.insert_chunk_size
            client.insert(physical, item_rows(item_ids[start:stop], vectors[start:stop], items))
        client.flush(physical)
        index_params = client.prepare_index_params()
        index_params.add_index(field_name=VECTOR_FIELD, index_type=cfg.index_type, metric_type=METRIC,
                               params=index_build_params(cfg.index_params))
        try:
            client.create_index(physical, index_params)
            _wait_for_index(client, physical, timeout_s=max(600.0, cfg.timeout_s))
            client.load_collection(physical)
            warm_up_search(client, physical, vectors[:WARM_UP_QUERIES], limit=min(len(item_ids), 100),
                           params=search_params(cfg, 100), timeout=rpc_timeout(max(cfg.timeout_s, 60.0)))
        except Exception:
            client.drop_collection(physical)  # nothing half-built is left behind; the alias is untouched
            raise
        count = int(client.get_collection_stats(physical)["row_count"])
        previous = switch_alias(client, cfg.collection, physical)
        for alias in also:
            switch_alias(client, alias, physical)
        if previous:
            time.sleep(DROP_GRACE_S)  # searches already routed to it finish first
            client.drop_collection(previous)
        return count
    finally:
        client.close()


GENERATION_SEPARATOR = "__g"


def index_build_params(params: dict) -> dict:
    """Index parameters as Milvus parses them: pymilvus sends every value as ``str(value)``
    and Milvus reads it as JSON, so a Python ``True`` ("True") fails the build with "type
    conflict in json" - and Milvus 2.3 retries a failed build forever instead of reporting it."""
    return {key: (str(value).lower() if isinstance(value, bool) else value) for key, value in params.items()}
DROP_GRACE_S = 2.0


def _create_item_collection(client, name: str, dim: int) -> None:
    from pymilvus import DataType

    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field(ID_FIELD, DataType.INT64, is_primary=True)
    schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field(CATEGORY_FIELD, DataType.VARCHAR, max_length=64)
    client.create_collection(name, schema=schema)


def item_rows(item_ids, vectors, items=None) -> list[dict]:
    """Rows of the item collection: id, vector, and the item's category (its
    :data:`CATEGORY_FEATURE` in ``items``, a frame with an ``item_id`` column or index; empty
    when ``items`` has none). Every path that writes items into Milvus builds its rows here,
    so a category filter pushed into Milvus sees the same categories after a build, a rebuild
    or an upsert."""
    categories = item_categories(items, item_ids)
    return [{ID_FIELD: int(i), VECTOR_FIELD: np.asarray(v, dtype=np.float32).tolist(), CATEGORY_FIELD: c}
            for i, v, c in zip(item_ids, vectors, categories)]


def item_categories(items, item_ids) -> list[str]:
    """The category text of each id (``""`` where unknown), as the filters compare it: a
    number read from a CSV as ``3`` or ``3.0`` is the category ``"3"``."""
    if items is None:
        return [""] * len(item_ids)
    frame = items.set_index("item_id") if "item_id" in getattr(items, "columns", ()) else items
    if CATEGORY_FEATURE not in frame.columns:
        return [""] * len(item_ids)
    values = frame[CATEGORY_FEATURE].reindex(np.asarray(item_ids, dtype=np.int64))
    return [_category_text(v) for v in values]


def _category_text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def switch_alias(client, alias: str, collection: str) -> str | None:
    """Point ``alias`` at ``collection``; returns the collection it pointed at before (a plain
    collection named like the alias, from an older layout, is dropped first)."""
    previous = aliased_collection(client, alias)
    if previous is None:
        if client.has_collection(alias):
            client.drop_collection(alias)
        client.create_alias(collection, alias)
    else:
        client.alter_alias(collection, alias)
    return previous if previous != collection else None


def aliased_collection(client, alias: str) -> str | None:
    """The collection ``alias`` points at, or ``None`` if it is not an alias."""
    try:
        with quiet_pymilvus():  # pymilvus logs an error for the missing alias it raises on
            return client.describe_alias(alias).get("collection_name") or None
    except Exception:  # pymilvus raises when the alias does not exist
        return None


def _wait_for_index(client, collection: str, timeout_s: float = 600.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = client.describe_index(collection, VECTOR_FIELD)
        if info.get("state") == "Finished" and int(info.get("pending_index_rows", 0)) == 0:
            return
        if info.get("state") == "Failed":
            raise MilvusUnavailable(f"index build failed on {collection}: {info}")
        time.sleep(0.5)
    raise MilvusUnavailable(f"index on {collection} not built after {timeout_s:.0f}s")
