"""What users of a recommender expect of its answers, through the real Triton path, and the
offline evaluation of the served ensemble checked against an independent computation."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from core.artifacts import Artifacts
from training import workflows as wf

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def train(serving_stack):
    return pd.read_parquet(Artifacts.of(serving_stack[0]).train_interactions)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_seen_items_are_never_recommended(clients, train, protocol):
    seen = train.groupby("user_id")["item_id"].apply(set)
    heavy = seen.map(len).sort_values(ascending=False).index[:8].to_numpy()  # most items to exclude
    answer = clients[protocol].recommend(heavy)
    for row, user_id in enumerate(heavy):
        assert not set(answer["item_ids"][row].tolist()) & seen[user_id]
    assert (answer["source"] == "personalized").all()
    assert (answer["item_ids"] >= 0).all()


def test_cold_start_paths_are_reported(clients, serving_stack, cold_users):
    popular = pd.read_parquet(Artifacts.of(serving_stack[0]).popular_items)["item_id"].to_numpy()
    known = pd.read_parquet(Artifacts.of(serving_stack[0]).train_interactions)["user_id"].iloc[0]
    request = np.array([known, cold_users[0], 123_456_789], dtype=np.int64)
    for client in clients.values():
        answer = client.recommend(request)
        assert answer["source"].tolist() == ["personalized", "features", "popular"]
        assert answer["fallback"].tolist() == [False, False, True]
        k = answer["item_ids"].shape[1]
        np.testing.assert_array_equal(answer["item_ids"][2], popular[:k])
        assert (answer["item_ids"] >= 0).all()
        assert len(set(answer["item_ids"][1].tolist())) == k
        assert np.all(np.diff(answer["scores"][1]) <= 0)


def test_cold_users_with_features_differ_by_features(clients, cold_users):
    answer = clients["grpc"].recommend(np.array(cold_users, dtype=np.int64))
    assert (answer["source"] == "features").all()
    assert len({tuple(row) for row in answer["item_ids"].tolist()}) > 1


def _independent_cascade(config, user_ids: np.ndarray, seen: dict, k: int) -> np.ndarray:
    """The cascade recomputed from the trained artifacts with plain numpy/TensorFlow: exact
    retrieval of retrieval_k unseen items, ranker scores, blended order, top k."""
    import json

    artifacts = Artifacts.of(config)
    users = pd.read_parquet(artifacts.users).set_index("user_id").loc[user_ids].reset_index()
    items = pd.read_parquet(artifacts.items)
    encoded_users = wf.transform(wf.load_workflow(artifacts.user_workflow), users)
    encoded_items = wf.transform(wf.load_workflow(artifacts.item_workflow), items)
    tower = tf.saved_model.load(str(artifacts.query_tower)).signatures["serving_default"]
    ranker = tf.saved_model.load(str(artifacts.ranking_model)).signatures["serving_default"]
    vectors = pd.read_parquet(artifacts.item_vectors).set_index("item_id").loc[items["item_id"]]
    matrix = np.stack(vectors["embedding"].to_numpy())
    weight = json.loads(artifacts.ordering.read_text())["retrieval_weight"]
    item_ids = items["item_id"].to_numpy()
    out = np.empty((len(user_ids), k), dtype=np.int64)
    for row, user_id in enumerate(user_ids):
        one = encoded_users.iloc[[row]]
        inputs = {n: tf.constant(np.stack(one[n].to_numpy()) if one[n].dtype == object else one[n].to_numpy(),
                                 dtype=s.dtype) for n, s in tower.structured_input_signature[1].items()}
        query = next(iter(tower(**inputs).values())).numpy()[0]
        scores = matrix @ query
        scores[np.isin(item_ids, list(seen.get(user_id, ())))] = -np.inf
        top = np.argsort(-scores, kind="stable")[: config.serving.retrieval_k]
        features = {}
        for name, spec in ranker.structured_input_signature[1].items():
            if name in encoded_items.columns:
                column = encoded_items.iloc[top][name]
                value = (np.stack([np.pad(np.asarray(v), (0, 8 - len(v))) for v in column])
                         if column.dtype == object else column.to_numpy())
                features[name] = tf.constant(value[None], dtype=spec.dtype)
            else:
                value = one[name].to_numpy()
                value = np.stack(value) if one[name].dtype == object else value
                features[name] = tf.constant(value, dtype=spec.dtype)
        ranking = next(iter(ranker(**features).values())).numpy()[0]
        retrieval = scores[top]
        z = lambda a: (a - a.mean()) / (a.std() or 1.0)  # noqa: E731
        final = weight * z(retrieval) + (1 - weight) * z(ranking)
        out[row] = item_ids[top[np.argsort(-final, kind="stable")[:k]]]
    return out


def _ndcg(recommended: np.ndarray, user_ids, truth: dict, k: int) -> float:
    values = []
    for row, user_id in enumerate(user_ids):
        relevant = truth[user_id]
        dcg = sum(1 / np.log2(i + 2) for i, item in enumerate(recommended[row][:k]) if item in relevant)
        ideal = sum(1 / np.log2(i + 2) for i in range(min(len(relevant), k)))
        values.append(dcg / ideal)
    return float(np.mean(values))


def test_evaluation_of_the_served_ensemble_matches_an_independent_computation(serving_stack):
    from recsys.jobs.evaluation import evaluate

    config = serving_stack[0]
    artifacts = Artifacts.of(config)
    report = evaluate(config, ks=(10,), systems=("cascade",), max_users=40)
    test = pd.read_parquet(artifacts.test_interactions)
    train = pd.read_parquet(artifacts.train_interactions)
    user_ids = np.sort(np.random.default_rng(0).choice(np.sort(test["user_id"].unique()), 40, replace=False))
    seen = train.groupby("user_id")["item_id"].apply(set).to_dict()
    truth = test.groupby("user_id")["item_id"].apply(set).to_dict()
    independent = _independent_cascade(config, user_ids, seen, 10)
    assert report["users"] == 40
    assert abs(report["results"]["cascade"]["ndcg@10"] - _ndcg(independent, user_ids, truth, 10)) < 0.01
