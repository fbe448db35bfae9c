import numpy as np

from training import clicklog, features


def _clicks():
    return clicklog.generate_clicks(num_sessions=500, num_items=200, seed=2)


def test_last_click_of_each_user_is_held_out():
    clicks = _clicks()
    train, test = features.split_last_click(clicks)
    assert len(train) + len(test) == len(clicks)
    assert test["user_id"].is_unique
    last_train = train.groupby("user_id")["timestamp"].max()
    held_out = test.set_index("user_id")["timestamp"]
    assert (held_out >= last_train.reindex(held_out.index)).all()


def test_feature_tables_one_row_per_entity():
    clicks = _clicks()
    train, _ = features.split_last_click(clicks)
    users = features.user_features(train)
    items = features.item_features(train, clicks[["item_id", "category"]])
    assert users["user_id"].is_unique and set(users.columns) >= set(features.USER_FEATURES)
    assert items["item_id"].is_unique and set(items.columns) >= set(features.ITEM_FEATURES)
    assert set(items["item_id"]) == set(clicks["item_id"])
    assert items["item_popularity"].between(1, 10).all()


def test_ranking_examples_have_real_negatives():
    clicks = _clicks()
    train, _ = features.split_last_click(clicks)
    items = features.item_features(train)
    examples = features.ranking_examples(train, items, negatives_per_positive=3, seed=0)
    assert set(examples["click"].unique()) == {0, 1}
    clicked = set(map(tuple, train[["user_id", "item_id"]].to_numpy()))
    negatives = examples[examples["click"] == 0]
    assert not any((u, i) in clicked for u, i in negatives[["user_id", "item_id"]].to_numpy())
    assert 0.15 < examples["click"].mean() < 0.4


def test_popular_items_sorted_by_share():
    clicks = _clicks()
    popular = features.popular_items(clicks, 10)
    assert len(popular) == 10 and np.all(np.diff(popular["score"]) <= 0)
