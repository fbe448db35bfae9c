"""Live catalogue operations against the running stack: upsert (retrievable at once, with its
Feast row), delete, count, and a rebuild-and-switch of the index while requests keep coming."""
from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

from recsys.catalog import Catalog, CatalogError
from training.pipeline import Artifacts

pytestmark = pytest.mark.integration


def _new_item(config) -> pd.DataFrame:
    """A new item id with the features of an existing item (raw feature columns)."""
    items = pd.read_parquet(Artifacts.of(config).items)
    row = items.iloc[[0]].copy()
    row["item_id"] = int(items["item_id"].max()) + 1000
    return row.drop(columns=["item_interactions"]).reset_index(drop=True)  # derived: defaults to 0


def _searchable_ids(config, vector: np.ndarray) -> set[int]:
    from operators.milvus import connect

    client = connect(config.milvus, 30)
    total = int(client.get_collection_stats(config.milvus.collection)["row_count"]) + 10
    hits = client.search(config.milvus.collection, data=[vector.tolist()], limit=min(total, 16384))
    client.close()
    return {hit["id"] for hit in hits[0]}


def test_upsert_is_searchable_at_once_with_features_then_delete(serving_stack, clients, catalogue):
    from feast import FeatureStore

    config, _, _ = serving_stack
    catalog = Catalog(config)
    before = catalog.count()
    item = _new_item(config)
    new_id = int(item["item_id"][0])
    vector = catalog.item_vectors(catalog._complete(item))[0]
    assert catalog.upsert(item) == 1
    assert catalog.count() == before + 1
    assert new_id in _searchable_ids(config, vector)  # no wait: upsert returned after visibility
    store = FeatureStore(repo_path=str(config.feature_repo))
    found = store.get_online_features(features=["item_features:item_interactions"],
                                      entity_rows=[{"item_id": new_id}]).to_dict()
    assert found["item_interactions"] == [0.0]
    assert clients["grpc"].recommend(catalogue[0][:3])["item_ids"].shape[0] == 3

    assert catalog.delete([new_id]) == 1
    assert catalog.count() == before
    assert new_id not in _searchable_ids(config, vector)


def test_upsert_refuses_bad_items(serving_stack):
    catalog = Catalog(serving_stack[0])
    item = _new_item(serving_stack[0])
    with pytest.raises(CatalogError, match="lack the feature columns"):
        catalog.upsert(item[["item_id"]])
    with pytest.raises(CatalogError, match="item_id must be integers"):
        catalog.upsert(item.assign(item_id="abc"))


def test_rebuild_and_switch_while_serving_loses_no_request(serving_stack, catalogue):
    from operators.milvus import connect

    config, _, triton = serving_stack
    catalog = Catalog(config)
    old = catalog.collection()
    users = catalogue[0]
    stop, answered, failed = threading.Event(), [], []

    def hammer():
        from recsys.client import RecommenderClient

        client = RecommenderClient(triton.http_url, "http")
        while not stop.is_set():
            try:
                answer = client.recommend(users[:4])
                answered.append(answer["item_ids"].shape == (4, config.serving.top_k))
            except Exception as exc:
                failed.append(repr(exc))
        client.close()

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        count = catalog.rebuild()
    finally:
        stop.set()
        thread.join()
    assert failed == [] and len(answered) >= 5 and all(answered)
    new = catalog.collection()
    assert new != old and count == catalog.count()
    client = connect(config.milvus, 30)
    assert old not in client.list_collections()
    client.close()
