"""Operators on small in-memory data (the integration tests run them inside Triton)."""
import numpy as np
import pytest
from merlin.table import TensorTable

from operators.ordering import OrderCandidates, PopularFallback
from operators.workflow import TransformFeatures
from training import features
from training import workflows as wf


def _candidates(ids, ranking, retrieval=None):
    ids = np.asarray(ids, dtype=np.int64)
    ranking = np.asarray(ranking, dtype=np.float32)
    retrieval = np.zeros_like(ranking) if retrieval is None else np.asarray(retrieval, dtype=np.float32)
    return TensorTable({"candidate_ids": ids, "ranking_score": ranking, "candidate_scores": retrieval})


def test_order_candidates_sorts_each_row_and_drops_padding():
    table = _candidates([[11, 12, 13, -1], [21, 22, 23, 24]], [[0.1, 0.9, 0.5, 0.99], [0.4, 0.3, 0.2, 0.8]])
    out = OrderCandidates(top_k=3).transform(None, table)
    np.testing.assert_array_equal(out["item_ids"].values, [[12, 13, 11], [24, 21, 22]])
    assert (np.diff(out["scores"].values, axis=1) <= 0).all()


def test_order_candidates_blends_retrieval_and_ranking_scores():
    ranking = [[3.0, 2.0, 1.0]]
    retrieval = [[0.0, 0.1, 10.0]]
    by_ranker = OrderCandidates(top_k=3, retrieval_weight=0.0).transform(
        None, _candidates([[1, 2, 3]], ranking, retrieval))
    by_retrieval = OrderCandidates(top_k=3, retrieval_weight=1.0).transform(
        None, _candidates([[1, 2, 3]], ranking, retrieval))
    half = OrderCandidates(top_k=3, retrieval_weight=0.5).transform(
        None, _candidates([[1, 2, 3]], ranking, retrieval))
    assert by_ranker["item_ids"].values.tolist() == [[1, 2, 3]]
    assert by_retrieval["item_ids"].values.tolist() == [[3, 2, 1]]
    # standardized: ranking (1.22, 0, -1.22), retrieval (-0.72, -0.69, 1.41);
    # halves: item 1 -> 0.25, item 3 -> 0.10, item 2 -> -0.35
    assert half["item_ids"].values.tolist() == [[1, 3, 2]]


def test_blend_scores_standardizes_per_row_and_keeps_padding_last():
    from core.scoring import blend_scores

    out = blend_scores(np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]),
                       np.array([[1.0, 2.0, -np.inf], [0.0, 1.0, 2.0]]), 0.5)
    assert out[0, 2] == -np.inf and out[0, 1] > out[0, 0]
    assert np.all(np.isfinite(out[1])) and out[1, 2] > out[1, 0]


def _fallback_table(ids, scores, found, histories):
    history = np.empty(len(histories), dtype=object)
    history[:] = [np.asarray(h, dtype=np.int64) for h in histories]
    return TensorTable({"item_ids": np.asarray(ids, dtype=np.int64),
                        "scores": np.asarray(scores, dtype=np.float32),
                        "user_found": np.asarray(found), "history": history})


def test_popular_fallback_replaces_unknown_users_and_fills_short_rows():
    op = PopularFallback(popular_ids=[100, 101, 102, 103], popular_scores=[0.4, 0.3, 0.2, 0.1], top_k=3)
    table = _fallback_table([[7, 8, 9], [7, 100, -1], [1, 2, 3], [4, 5, 6]],
                            [[0.9, 0.8, 0.7], [0.9, 0.5, -np.inf], [0.3, 0.2, 0.1], [0.3, 0.2, 0.1]],
                            [True, True, False, True], [[1], [101], [], []])
    out = op.transform(None, table)
    ids, scores = out["item_ids"].values, out["scores"].values
    np.testing.assert_array_equal(ids[0], [7, 8, 9])
    np.testing.assert_array_equal(ids[1], [7, 100, 102])  # filled: not in the row, not seen (101)
    assert scores[1, 2] < scores[1, 1]
    np.testing.assert_array_equal(ids[2], [100, 101, 102])
    assert out["fallback"].values.tolist() == [False, False, True, False]
    assert out["source"].values.tolist() == ["personalized", "personalized", "popular", "features"]


def test_query_milvus_row_drops_seen_items_and_fills_without_padding():
    from operators.query_milvus import QueryMilvus

    op = QueryMilvus(top_k=4, fill_ids=[50, 51, 52, 53])
    hit_ids, hit_scores = np.array([1, 2, 3]), np.array([0.9, 0.8, 0.7], dtype=np.float32)
    ids, scores = op._row(hit_ids, hit_scores, excluded=[2, 50])
    assert ids.tolist() == [1, 3, 51, 52]
    assert (np.diff(scores) < 0).all() and scores[1] == np.float32(0.7)


@pytest.fixture(scope="module")
def fitted_workflows(tmp_path_factory):
    from training import sources
    from training.tables import side_features

    data = sources.movielens_100k()
    data = sources.sample_users(data, 60, seed=1)
    train, _ = features.split(data.interactions, "random")
    user_features, item_features = side_features(data)
    users = features.user_table(train, data.users, max_history=50)
    items = features.item_table(data.interactions, train, data.items)
    out = tmp_path_factory.mktemp("workflows")
    wf.fit_workflows(users, items, user_features, item_features, out)
    return out, users, items


@pytest.fixture(scope="module")
def fitted_item_workflow(fitted_workflows):
    out, _, items = fitted_workflows
    return out / "item", items


def _cells(values):
    column = np.empty(len(values), dtype=object)
    column[:] = [np.asarray(v) for v in values]
    return column


def _request(frame, columns, shape):
    """Workflow input columns of ``frame`` shaped like a request (lists as object cells)."""
    out = {}
    for c in columns:
        values = frame[c].to_numpy()
        if len(values) and isinstance(values[0], (list, np.ndarray)):
            values = _cells(values)
        out[c] = values.reshape(shape)
    return out


def test_transform_features_handles_candidate_matrices(fitted_item_workflow, tmp_path):
    path, items = fitted_item_workflow
    op = TransformFeatures(path, "item")
    op.save_artifacts(str(tmp_path))
    op.load_artifacts(str(tmp_path))
    sample = items.head(6)
    flat = wf.transform(wf.load_workflow(path), sample)
    out = op.transform(None, TensorTable(_request(sample, op.workflow_input_schema.column_names, (2, 3))))
    for column in flat.columns:
        got = np.asarray(out[column].values)
        if column in op.list_columns:
            assert got.shape[:2] == (2, 3)
            for cell, expected in zip(got.reshape(6, -1), flat[column]):
                assert cell[: len(expected)].tolist() == list(expected) and not cell[len(expected):].any()
        else:
            np.testing.assert_allclose(got, flat[column].to_numpy().reshape(2, 3).astype(got.dtype), rtol=1e-6)


def test_user_workflow_encodes_history_with_the_item_vocabulary(fitted_workflows, tmp_path):
    out, users, items = fitted_workflows
    op = TransformFeatures(out / "user", "user")
    op.save_artifacts(str(tmp_path))
    op.load_artifacts(str(tmp_path))
    item_codes = wf.transform(wf.load_workflow(out / "item"), items).set_index(items["item_id"].to_numpy())["item_id"]
    encoded = op.transform(None, TensorTable(_request(users.head(4), op.workflow_input_schema.column_names, (4,))))
    history = np.asarray(encoded["history"].values)
    for row, raw in enumerate(users.head(4)["history"]):
        assert history[row, : len(raw)].tolist() == item_codes.loc[list(raw)].tolist()


def test_transform_features_never_refits(fitted_item_workflow, tmp_path):
    path, items = fitted_item_workflow
    before = {p.name: p.read_bytes() for p in (path / "categories").glob("*.parquet")}
    op = TransformFeatures(path, "item")
    unseen = items.head(3).assign(item_id=[10**9, 10**9 + 1, 10**9 + 2], release_year=["new", "new", "x"])
    op.transform(None, TensorTable(_request(unseen, op.workflow_input_schema.column_names, (3,))))
    after = {p.name: p.read_bytes() for p in (path / "categories").glob("*.parquet")}
    assert before == after


def test_operators_pickle_without_heavy_state(fitted_item_workflow):
    import cloudpickle

    from operators.query_milvus import QueryMilvus

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
    sample.iloc[:3, sample.columns.get_loc("release_year")] = "never-seen"
    sample.iloc[3:6, sample.columns.get_loc("item_id")] = [10**9, 10**9 + 1, 10**9 + 2]
    sample["genres"] = [list(g) + (["never-seen"] if i % 7 == 0 else []) for i, g in enumerate(sample["genres"])]
    sample = sample.reset_index(drop=True)
    expected = workflow._transform_df(sample)
    produced = compiled.transform(_request(sample, sample.columns, (len(sample),)))
    for column in expected.columns:
        if column == "genres":
            from operators.workflow import pad_codes

            np.testing.assert_array_equal(produced[column], pad_codes(expected[column]))
        else:
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

    op = QueryFeatures("item_features", "item_id", {"item_category": "string"},
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

    op = QueryFeatures("user_features", "user_id", {"user_activity": "string"}, on_failure="error")
    op._store = _Broken()
    with pytest.raises(FeatureStoreUnavailable, match="user_features failed: database is locked"):
        op.transform(None, TensorTable({"user_id": np.array([1], dtype=np.int64)}))


@pytest.mark.parametrize("cache_ttl_s", [60.0, 0.0])
def test_unreadable_store_serves_missing_rows_counts_logs_and_recovers(cache_ttl_s, caplog):
    from operators.feast_lookup import QueryFeatures

    op = QueryFeatures("item_features", "item_id", {"item_category": "string"},
                       found_column="found", cache_ttl_s=cache_ttl_s)
    healthy = _FakeOnlineStore({1: "a", 2: "b"})

    class _Broken:
        def get_online_features(self, **_):
            raise OSError("no such table: recsys_item_features")

    op._store = _Broken()
    table = TensorTable({"item_id": np.array([1, 2, 1], dtype=np.int64)})
    with caplog.at_level("WARNING"):
        out = op.transform(None, table)
        op.transform(None, table)
    assert out["found"].values.tolist() == [False, False, False]
    assert out["item_category"].values.tolist() == ["", "", ""]
    assert op.failures == (4 if cache_ttl_s else 6)  # distinct ids per request when cached
    warnings = [r for r in caplog.records if "item_features failed" in r.getMessage()]
    assert len(warnings) == 1  # rate-limited
    op._store = healthy  # readable again: nothing was cached as missing
    assert op.transform(None, table)["item_category"].values.tolist() == ["a", "b", "a"]


def test_query_milvus_caps_search_limit_at_the_index_types_limit():
    from core.config import load_config
    from operators.query_milvus import QueryMilvus

    class _Client:
        def __init__(self):
            self.limits = []

        def search(self, collection, data, limit, search_params, timeout):
            self.limits.append(limit)
            return [[{"id": 1000 + i, "distance": 1.0 - i / 1e4} for i in range(limit)] for _ in data]

    op = QueryMilvus(top_k=100, exclude_column="history", fill_ids=np.arange(5000, 5300))
    op._cfg = load_config(base={"milvus": {"index_type": "GPU_IVF_FLAT"}}, environ={}).milvus
    op._client = _Client()
    history = np.empty(2, dtype=object)
    history[0], history[1] = np.arange(1000, 1900), np.array([], dtype=np.int64)  # 900 seen, none
    table = TensorTable({"user_embedding": np.ones((2, 4), dtype=np.float32), "history": history})
    out = op.transform(None, table)
    assert max(op._client.limits) == 256  # GPU_IVF_FLAT's cap, not 1024
    ids = out["candidate_ids"].values
    assert not set(ids[0].tolist()) & set(range(1000, 1900)) and (ids >= 0).all()
    assert set(ids[0].tolist()) >= set(range(5000, 5100)) - set(range(1000, 1900))  # filled


def test_after_a_reconnect_milvus_is_warmed_up_in_the_background_never_failing_a_request(monkeypatch, caplog):
    import threading

    from core.config import MilvusConfig
    from operators import query_milvus as milvus

    class Client:
        def load_collection(self, *args, **kwargs):
            pass

        def close(self):
            pass

    release, warmed = threading.Event(), []
    monkeypatch.setattr(milvus, "connect", lambda cfg, timeout_s=None: Client())
    monkeypatch.setattr(milvus, "search_arrays", lambda *args: [(np.array([1]), np.array([0.5]))])
    monkeypatch.setattr(milvus, "sample_vectors", lambda *args: np.ones((3, 4), dtype=np.float32))
    monkeypatch.setattr(milvus, "warm_up_search", lambda client, collection, vectors, *rest:
                        (release.wait(10), warmed.append(len(vectors))))
    op = milvus.QueryMilvus(top_k=1)
    op._cfg = MilvusConfig()
    assert op._client is None  # as after a failed search: the next request reconnects
    hits = op._search(np.zeros((1, 4), dtype=np.float32), 1)
    assert len(hits) == 1 and warmed == [] and op._warming.is_alive()  # the request did not wait
    release.set()
    op._warming.join(10)
    assert warmed == [3] and op.warm_ups == 1
    assert len(op._search(np.zeros((1, 4), dtype=np.float32), 1)) == 1  # connected: no second warm-up
    assert op.warm_ups == 1 and not op._warming.is_alive()

    def broken(*args):
        raise RuntimeError("collection not loaded yet")

    monkeypatch.setattr(milvus, "sample_vectors", broken)
    op._client = None
    assert len(op._search(np.zeros((1, 4), dtype=np.float32), 1)) == 1
    op._warming.join(10)
    assert op.warm_ups == 1 and "warm-up after reconnecting failed" in caplog.text


def test_merge_session_puts_the_clicks_in_front_and_answers_unknown_visitors():
    from merlin.table import TensorTable

    from operators.session import SESSION_USER, MergeSession

    history = np.empty(3, dtype=object)
    history[:] = [np.array([5, 6], dtype=np.int64), np.array([], dtype=np.int64), np.array([7], dtype=np.int64)]
    table = TensorTable({"user_id": np.array([1, 2, 3]), "history": history,
                         "user_found": np.array([True, False, True]),
                         "user_interactions": np.array([2.0, 0.0, 1.0], dtype=np.float32),
                         "recent_items": np.array([[6, 9, -1], [4, -1, -1], [-1, -1, -1]], dtype=np.int64)})
    out = MergeSession(3, count_column="user_interactions").transform(None, table)
    assert [list(h) for h in out["history"].values] == [[6, 9, 5], [4], [7]]
    assert out["user_found"].values.tolist() == [True, True, True]
    assert out[SESSION_USER].values.tolist() == [False, True, False]
    assert out["user_interactions"].values.tolist() == [4.0, 1.0, 1.0] and "recent_items" not in out.columns
