"""The bring-your-own data schema: what is accepted, how kinds are decided, what is refused."""
import json

import numpy as np
import pandas as pd
import pytest

from training.dataset import DataError, load_files


def _write(path, text):
    path.write_text(text)
    return path


@pytest.fixture
def files(tmp_path):
    interactions = _write(tmp_path / "interactions.csv",
                          "user_id,item_id,timestamp,event_type,event_value,extra\n"
                          "1,10,1700000000,click,1,x\n"
                          "1,11,2023-11-14T22:13:21Z,buy,5,x\n"
                          "2,10,1700000100,click,2,x\n")
    users = _write(tmp_path / "users.csv", "user_id,age,gender,region,constant\n"
                                           "1,30,F,1,k\n2,41,M,2,k\n3,55,F,3,k\n")
    items = pd.DataFrame({"item_id": [10, 11, 12], "tags": ["a|b", "b", ""], "price": [1.5, 2.0, None],
                          "brand": ["x", "y", "x"]})
    items.to_parquet(tmp_path / "items.parquet", index=False)
    return interactions, users, tmp_path / "items.parquet"


def test_valid_files_are_read_and_kinds_inferred(files):
    data = load_files(*files)
    inter = data.interactions
    assert inter.dtypes["user_id"] == np.int64 and inter.dtypes["timestamp"] == np.int64
    assert inter["timestamp"].tolist() == [1700000000, 1700000001, 1700000100]
    assert inter["event_type"].tolist() == ["click", "buy", "click"]
    # age and region: integers with few distinct values; constant: one value
    assert data.user_features.categorical == ["age", "gender", "region"]
    assert data.user_features.continuous == [] and data.user_features.dropped == ["constant"]
    assert data.item_features.lists == ["tags"] and data.items["tags"].tolist() == [["a", "b"], ["b"], []]
    assert data.item_features.continuous == ["price"] and data.items["price"].iloc[2] == pytest.approx(1.75)
    assert data.item_features.categorical == ["brand"]
    summary = data.summary()
    assert "tags" in summary and "list" in summary and "ignored column(s) ['extra']" in summary


def test_declared_kinds_win_json_and_toml(files, tmp_path):
    schema = _write(tmp_path / "schema.json", json.dumps({"users": {"age": "continuous", "region": "categorical"},
                                                          "items": {"brand": "list"}}))
    data = load_files(*files, schema=schema)
    assert data.user_features.continuous == ["age"] and data.user_features.decided["age"] == "declared"
    assert data.item_features.lists == ["tags", "brand"]
    toml = _write(tmp_path / "schema.toml", '[users]\nage = "categorical"\n')
    assert "age" in load_files(*files, schema=toml).user_features.categorical


def test_declared_column_missing_is_refused(files, tmp_path):
    schema = _write(tmp_path / "schema.json", json.dumps({"users": {"income": "continuous"}}))
    with pytest.raises(DataError, match=r"schema.json.*column 'income'"):
        load_files(*files, schema=schema)


@pytest.mark.parametrize("body, line, column, message", [
    ("user_id,item_id,timestamp\n1,10,1700000000\nabc,11,1700000000\n", "line 3", "user_id", "integers"),
    ("user_id,item_id,timestamp\n1,1.5,1700000000\n", "line 2", "item_id", "integers"),
    ("user_id,item_id,timestamp\n1,10,1700000000\n2,,1700000000\n", "line 3", "item_id", "empty id"),
    ("user_id,item_id,timestamp\n1,10,yesterday\n", "line 2", "timestamp", "unparseable timestamp"),
])
def test_bad_rows_are_named(tmp_path, body, line, column, message):
    path = _write(tmp_path / "interactions.csv", body)
    with pytest.raises(DataError, match=message) as caught:
        load_files(path)
    assert caught.value.row == line and caught.value.column == column
    assert str(path) in str(caught.value) and line in str(caught.value)


def test_missing_column_empty_file_and_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"missing required column\(s\) \['timestamp'\]"):
        load_files(_write(tmp_path / "a.csv", "user_id,item_id\n1,2\n"))
    with pytest.raises(DataError, match="no rows"):
        load_files(_write(tmp_path / "b.csv", "user_id,item_id,timestamp\n"))
    with pytest.raises(DataError, match="file not found"):
        load_files(tmp_path / "nope.csv")


def test_interactions_pointing_at_unknown_items_or_users(files, tmp_path):
    interactions, users, items = files
    bad = _write(tmp_path / "bad.csv", "user_id,item_id,timestamp\n1,10,1700000000\n1,99,1700000000\n")
    with pytest.raises(DataError, match=r"line 3, column 'item_id': 99 is not in the items file"):
        load_files(bad, items=items)
    stranger = _write(tmp_path / "stranger.csv", "user_id,item_id,timestamp\n7,10,1700000000\n")
    with pytest.raises(DataError, match=r"line 2, column 'user_id': 7 is not in the users file"):
        load_files(stranger, users=users)


def test_duplicate_ids_in_a_side_file(files, tmp_path):
    interactions, _, _ = files
    users = _write(tmp_path / "users.csv", "user_id,gender\n1,F\n2,M\n1,F\n")
    with pytest.raises(DataError, match=r"line 4, column 'user_id': duplicate id 1"):
        load_files(interactions, users=users)


def test_parquet_rows_are_numbered_from_zero(tmp_path):
    path = tmp_path / "interactions.parquet"
    pd.DataFrame({"user_id": ["1", "x"], "item_id": [1, 2], "timestamp": [1, 2]}).to_parquet(path)
    with pytest.raises(DataError) as caught:
        load_files(path)
    assert caught.value.row == "row 1"


def test_same_feature_name_on_both_sides_is_refused(files, tmp_path):
    interactions, _, items = files
    users = _write(tmp_path / "users.csv", "user_id,brand\n1,a\n2,b\n")
    with pytest.raises(DataError, match="both the users and the items file"):
        load_files(interactions, users=users, items=items)


def test_cli_refuses_bad_files_without_traceback_or_artifacts(tmp_path, capsys):
    from recsys.cli import main

    bad = _write(tmp_path / "interactions.csv", "user_id,item_id,timestamp\n1,10,1700000000\n2,x,1700000000\n")
    code = main(["--workdir", str(tmp_path / "work"), "train", "--interactions", str(bad)])
    err = capsys.readouterr().err
    assert code == 1
    assert "line 3, column 'item_id'" in err and "Traceback" not in err
    assert not (tmp_path / "work").exists()
