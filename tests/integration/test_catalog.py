"""Live catalogue operations against the running stack: upsert (retrievable at once, with its
Feast row), delete, count, and a rebuild-and-switch of the index while requests keep coming."""
from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

from core.artifacts import Artifacts
from recsys.jobs.catalog import Catalog, CatalogError

pytestmark = pytest.mark.integration


def _new_item(config) -> pd.DataFrame:
    """A new item id with the features of an existing item (raw feature columns)."""
    items = pd.read_parquet(Artifacts.of(config).items)
    row = items.iloc[[0]].copy()
    row["item_id"] = int(items["item_id"].max()) + 1000
    return row.drop(columns=["item_interactions"]).reset_index(drop=True)  # derived: defaults to 0


def _searchable_ids(config, vector: np.ndarray) -> set[int]:
    from vector_index.client import connect

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
    from vector_index.client import connect

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


def _milvus_categories(config, ids) -> dict[int, str]:
    from vector_index.client import CATEGORY_FIELD, ID_FIELD, connect

    client = connect(config.milvus, 30)
    rows = client.query(config.milvus.collection, filter=f"{ID_FIELD} in {[int(i) for i in ids]}",
                        output_fields=[ID_FIELD, CATEGORY_FIELD], consistency_level="Strong")
    client.close()
    return {int(r[ID_FIELD]): r[CATEGORY_FIELD] for r in rows}


def test_item_categories_survive_build_rebuild_and_upsert(serving_stack, clients, catalogue):
    """The category stored with each item in Milvus (what a category filter pushed into the
    search matches) is the item's category after the build, a rebuild and an upsert; a
    category filter gives the same answers, from retrieval, not popular fill."""
    config, _, _ = serving_stack
    items = pd.read_parquet(Artifacts.of(config).items).set_index("item_id")
    expected = items["item_category"].astype(str).to_dict()
    users, _, _ = catalogue
    users = users[:6].tolist()
    category = items["item_category"].value_counts().index[0]
    within = {"filter": "INCLUDE ItemID WHERE Items.item_category IN ($C)",
              "filter_values": {"C": [category]}}

    def answers():
        answer = clients["grpc"].recommend(users, **within)
        return answer["item_ids"].tolist(), answer["filled"].tolist()

    assert _milvus_categories(config, list(expected)) == expected  # after the build
    before, filled = answers()
    assert all(items.loc[i, "item_category"] == category for row in before for i in row if i != -1)
    assert max(filled) < config.serving.top_k  # retrieval found items of that category

    catalog = Catalog(config)
    catalog.rebuild()
    assert _milvus_categories(config, list(expected)) == expected
    after, filled_after = answers()
    # The same kind of answers (a filtered search in a rebuilt HNSW graph, which is not the same
    # graph, may find other neighbours): items of the category, found by retrieval.
    assert all(items.loc[i, "item_category"] == category for row in after for i in row if i != -1)
    assert max(filled_after) < config.serving.top_k

    new = _new_item(config)
    new["item_category"] = "Upserted-Category"
    catalog.upsert(new)
    new_id = int(new["item_id"][0])
    assert _milvus_categories(config, [new_id]) == {new_id: "Upserted-Category"}
    old_id = int(items.index[0])
    changed = pd.read_parquet(Artifacts.of(config).items).query("item_id == @old_id").drop(
        columns=["item_interactions"]).reset_index(drop=True)
    changed["item_category"] = "Upserted-Category"
    try:
        catalog.upsert(changed)  # an existing item moved to another category
        assert _milvus_categories(config, [old_id]) == {old_id: "Upserted-Category"}
        answer = clients["grpc"].similar([old_id], "similar_items",
                                         filter="INCLUDE ItemID WHERE Items.item_category IN ($C)",
                                         filter_values={"C": ["Upserted-Category"]})
        assert new_id in answer["item_ids"][0].tolist()  # pushed down: found by the search
    finally:
        catalog.delete([new_id])
        restored = changed.assign(item_category=items.loc[old_id, "item_category"])
        catalog.upsert(restored)
    assert _milvus_categories(config, [old_id]) == {old_id: expected[old_id]}
