import numpy as np
import pandas as pd
import pytest

from training import features


def _interactions():
    rng = np.random.default_rng(3)
    n = 400
    return pd.DataFrame({"user_id": rng.integers(1, 30, n), "item_id": rng.integers(100, 160, n),
                         "timestamp": rng.permutation(n).astype(np.int64) + 1_000_000})


def test_last_split_holds_out_each_users_latest():
    data = _interactions()
    train, test = features.split(data, "last")
    assert len(train) + len(test) == len(data)
    assert test["user_id"].is_unique
    latest_train = train.groupby("user_id")["timestamp"].max()
    held = test.set_index("user_id")["timestamp"]
    assert (held > latest_train.reindex(held.index)).all()


def test_random_split_is_per_user_share_and_reproducible():
    data = _interactions()
    train, test = features.split(data, "random", 0.25, seed=5)
    again, _ = features.split(data, "random", 0.25, seed=5)
    pd.testing.assert_frame_equal(train, again)
    sizes = data.groupby("user_id").size()
    held = test.groupby("user_id").size().reindex(sizes.index, fill_value=0)
    expected = np.where(sizes > 1, np.round(sizes * 0.25), 0)
    assert (held.to_numpy() == expected).all()


def test_chronological_split_holds_out_latest_share():
    data = _interactions()
    train, test = features.split(data, "chronological", 0.25)
    first_test = test.groupby("user_id")["timestamp"].min()
    last_train = train.groupby("user_id")["timestamp"].max().reindex(first_test.index)
    assert (first_test > last_train).all()


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="unknown split"):
        features.split(_interactions(), "sideways")


def test_tables_one_row_per_entity_with_history_most_recent_first():
    data = _interactions()
    train, _ = features.split(data, "last")
    users = features.user_table(train, None, max_history=5)
    items = features.item_table(data, train, None)
    assert users["user_id"].is_unique and items["item_id"].is_unique
    assert set(items["item_id"]) == set(data["item_id"])
    row = users.iloc[0]
    mine = train[train["user_id"] == row["user_id"]].sort_values("timestamp", ascending=False)
    assert list(row["history"]) == list(mine.drop_duplicates("item_id")["item_id"].head(5))
    assert row["user_interactions"] == len(mine)
    assert items["item_interactions"].sum() == len(train)


def test_users_file_rows_without_interactions_are_kept():
    data = _interactions()
    users_file = pd.DataFrame({"user_id": [1, 999], "age": [30.0, 40.0]})
    table = features.user_table(data, users_file, max_history=10)
    assert 999 in set(table["user_id"])
    cold = table.set_index("user_id").loc[999]
    assert len(cold["history"]) == 0 and cold["user_interactions"] == 0
    assert not table["age"].isna().any()
