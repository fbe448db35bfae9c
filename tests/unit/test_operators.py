"""Operators on small in-memory data (the integration tests run them inside Triton)."""
import numpy as np
import pandas as pd
import pytest
from merlin.table import TensorTable

from operators.ordering import OrderCandidates, PopularFallback
from operators.workflow import TransformFeatures
from training import clicklog, features
from training import workflows as wf


def test_order_candidates_sorts_each_row_and_drops_padding():
    ids = np.array([[11, 12, 13, -1], [21, 22, 23, 24]], dtype=np.int64)
    scores = np.array([[0.1, 0.9, 0.5, 0.99], [0.4, 0.3, 0.2, 0.8]], dtype=np.float32)
    out = OrderCandidates(top_k=3).transform(None, TensorTable({"candidate_ids": ids, "ranking_score": scores}))
    np.testing.assert_array_equal(out["item_ids"].values, [[12, 13, 11], [24, 21, 22]])
    np.testing.assert_allclose(out["scores"].values, [[0.9, 0.5, 0.1], [0.8, 0.4, 0.3]])


def test_order_candidates_pads_short_candidate_lists():
    ids = np.array([[5, 6]], dtype=np.int64)
    scores = np.array([[0.2, 0.7]], dtype=np.float32)
    out = OrderCandidates(top_k=3).transform(None, TensorTable({"candidate_ids": ids, "ranking_score": scores}))
    np.testing.assert_array_equal(out["item_ids"].values, [[6, 5, -1]])


def test_popular_fallback_replaces_unknown_users_and_fills_short_rows():
    op = PopularFallback(popular_ids=[100, 101, 102, 103], popular_scores=[0.4, 0.3, 0.2, 0.1], top_k=3)
    table = TensorTable({
        "item_ids": np.array([[7, 8, 9], [7, 100, -1], [1, 2, 3]], dtype=np.int64),
        "scores": np.array([[0.9, 0.8, 0.7], [0.9, 0.5, -np.inf], [0.3, 0.2, 0.1]], dtype=np.float32),
        "user_found": np.array([True, True, False]),
    })
    out = op.transform(None, table)
    ids, scores = out["item_ids"].values, out["scores"].values
    np.testing.assert_array_equal(ids[0], [7, 8, 9])
    np.testing.assert_array_equal(ids[1], [7, 100, 101])  # filled with a popular item not in the row
    assert scores[1, 2] < scores[1, 1]
    np.testing.assert_array_equal(ids[2], [100, 101, 102])
    assert out["fallback"].values.tolist() == [False, False, True]


@pytest.fixture(scope="module")
def fitted_item_workflow(tmp_path_factory):
    clicks = clicklog.generate_clicks(300, 100, seed=4)
    train, _ = features.split_last_click(clicks)
    users, items = features.user_features(train), features.item_features(train)
    out = tmp_path_factory.mktemp("workflows")
    wf.fit_workflows(users, items, out)
    return out / "item", items


def test_transform_features_handles_candidate_matrices(fitted_item_workflow, tmp_path):
    path, items = fitted_item_workflow
    op = TransformFeatures(path, "item")
    op.save_artifacts(str(tmp_path))
    op.load_artifacts(str(tmp_path))
    sample = items.head(6)
    flat = wf.transform(wf.load_workflow(path), sample)
    matrix = {c: sample[c].to_numpy().reshape(2, 3) for c in op.workflow_input_schema.column_names}
    out = op.transform(None, TensorTable(matrix))
    for column in flat.columns:
        np.testing.assert_allclose(np.asarray(out[column].values),
                                   flat[column].to_numpy().reshape(2, 3).astype(out[column].values.dtype),
                                   rtol=1e-6)


def test_transform_features_never_refits(fitted_item_workflow, tmp_path):
    path, items = fitted_item_workflow
    before = {p.name: p.read_bytes() for p in (path / "categories").glob("*.parquet")}
    op = TransformFeatures(path, "item")
    unseen = items.head(3).assign(item_id=[1, 2, 3], item_category=["new", "new", "x"])
    op.transform(None, TensorTable({c: unseen[c].to_numpy() for c in op.workflow_input_schema.column_names}))
    after = {p.name: p.read_bytes() for p in (path / "categories").glob("*.parquet")}
    assert before == after


def test_operators_pickle_without_heavy_state(fitted_item_workflow):
    import cloudpickle

    from operators.milvus import QueryMilvus

    path, _ = fitted_item_workflow
    op = TransformFeatures(path, "item")
    clone = cloudpickle.loads(cloudpickle.dumps(op))
    assert clone._workflow is None and clone.workflow_output_schema == op.workflow_output_schema
    query = cloudpickle.loads(cloudpickle.dumps(QueryMilvus(top_k=7)))
    assert query._client is None and query.top_k == 7


def test_compiled_workflow_matches_nvtabular(fitted_item_workflow):
    from operators.workflow import compile_workflow

    path, items = fitted_item_workflow
    workflow = wf.load_workflow(path)
    compiled = compile_workflow(workflow, path)
    assert compiled is not None
    sample = items.sample(200, replace=True, random_state=0)[workflow.input_schema.column_names].copy()
    sample.iloc[:3, sample.columns.get_loc("item_category")] = "never-seen"
    sample.iloc[3:6, sample.columns.get_loc("item_id")] = [1, 2, 3]
    sample = sample.reset_index(drop=True)
    expected = workflow._transform_df(sample)
    produced = compiled.transform({c: sample[c].to_numpy() for c in sample.columns})
    for column in expected.columns:
        np.testing.assert_allclose(produced[column].astype(float), expected[column].to_numpy(dtype=float),
                                   rtol=1e-5, atol=1e-5)


class _FakeOnlineStore:
    """Stands in for feast.FeatureStore: answers get_online_features from a dict."""

    def __init__(self, rows):
        self.rows, self.calls = rows, []

    def get_online_features(self, features, entity_rows):
        ids = [row["item_id"] for row in entity_rows]
        self.calls.append(ids)

        class _Answer:
            def to_dict(inner):
                return {"item_category": [self.rows.get(i) for i in ids]}

        return _Answer()


def test_feature_cache_reads_once_then_refreshes_in_background():
    import time

    from operators.feast_lookup import QueryFeatures

    op = QueryFeatures("item_features", "item_id", {"item_category": "str"},
                       entity_column="candidate_ids", found_column="found", cache_ttl_s=0.2)
    store = _FakeOnlineStore({1: "a", 2: "b"})
    op._store = store
    table = TensorTable({"candidate_ids": np.array([[1, 2, 3], [2, 1, 3]], dtype=np.int64)})
    out = op.transform(None, table)
    assert out["item_category"].values.tolist() == [["a", "b", ""], ["b", "a", ""]]
    assert out["found"].values.tolist() == [[True, True, False], [True, True, False]]
    assert out["item_id"].values.shape == (2, 3)
    op.transform(None, table)
    assert len(store.calls) == 1 and sorted(store.calls[0]) == [1, 2, 3]
    store.rows[1] = "changed"
    time.sleep(0.3)
    assert op.transform(None, table)["item_category"].values[0, 0] == "a"  # stale, served at once
    deadline = time.monotonic() + 5
    while op.transform(None, table)["item_category"].values[0, 0] != "changed":
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_feature_lookup_failure_is_reported_as_unavailable():
    from operators.feast_lookup import FeatureStoreUnavailable, QueryFeatures

    class _Broken:
        def get_online_features(self, **_):
            raise OSError("database is locked")

    op = QueryFeatures("user_features", "user_id", {"user_activity": "str"})
    op._store = _Broken()
    with pytest.raises(FeatureStoreUnavailable, match="user_features failed: database is locked"):
        op.transform(None, TensorTable({"user_id": np.array([1], dtype=np.int64)}))
