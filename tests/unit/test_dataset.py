"""The bring-your-own data schema: what is accepted, how kinds are decided, what is refused."""
import json

import numpy as np
import pandas as pd
import pytest

from training.dataset import DataError, from_frames, load_files, read_table

HEADER = "user_id,item_id,timestamp\n"


def _write(path, text):
    path.write_text(text)
    return path


def _refused(call, path, row, column, match):
    """``call`` raises a DataError at (path, row, column), all three named in its message."""
    with pytest.raises(DataError, match=match) as caught:
        call()
    error = caught.value
    assert (error.path, error.row, error.column) == (None if path is None else str(path), row, column)
    for part in (error.path, row, column and f"column {column!r}"):
        assert part is None or part in str(error)
    return error


@pytest.fixture
def files(tmp_path):
    interactions = _write(tmp_path / "interactions.csv",
                          "user_id,item_id,timestamp,event_type,event_value,extra\n"
                          "1,10,1700000000,click,1,x\n"
                          "1,11,2023-11-14T22:13:21Z,buy,5,x\n"
                          "2,10,1700000100.7,click,2.5,x\n")
    users = _write(tmp_path / "users.csv", "user_id,age,gender,region,constant\n"
                                           "1,30,F,1,k\n2,41,M,2,k\n3,55,F,3,k\n")
    items = tmp_path / "items.parquet"
    pd.DataFrame({"item_id": [10, 11, 12], "tags": ["a|b", "b", None], "price": [1.5, 2.0, None],
                  "brand": ["x", "y", "x"],
                  "creation_timestamp": ["2023-01-01", "2023-01-02T00:00:00+01:00", "1672531200"],
                  }).to_parquet(items, index=False)
    return interactions, users, items


# --- what is accepted ------------------------------------------------------------------------

def test_valid_files_are_read_converted_and_summarised(files):
    data = load_files(*files)
    inter = data.interactions
    assert list(inter.columns) == ["user_id", "item_id", "timestamp", "event_type", "event_value"]
    assert [str(t) for t in inter.dtypes] == ["int64", "int64", "int64", "object", "float32"]
    assert inter["timestamp"].tolist() == [1700000000, 1700000001, 1700000100]  # ISO and epoch
    assert inter["event_type"].tolist() == ["click", "buy", "click"]
    assert inter["event_value"].tolist() == [1.0, 5.0, 2.5]
    users, items = data.users, data.items
    assert users["user_id"].dtype == np.int64 and users["age"].tolist() == ["30", "41", "55"]
    assert data.user_features.categorical == ["age", "gender", "region"]
    assert data.user_features.dropped == ["constant"] and "constant" not in users
    assert items["creation_timestamp"].tolist() == [1672531200, 1672614000, 1672531200]
    assert data.item_features.lists == ["tags"] and items["tags"].tolist() == [["a", "b"], ["b"], []]
    assert data.item_features.continuous == ["price"] and items["price"].dtype == np.float32
    assert items["price"].iloc[2] == pytest.approx(1.75)  # the median
    assert data.item_features.categorical == ["brand"]
    assert data.item_features.columns == ["brand", "price", "tags"]
    summary = data.summary()
    assert summary.startswith("3 interactions, 2 users, 2 items")
    assert "users: 3 rows" in summary and "items: 3 rows" in summary
    assert "gender                   categorical (inferred, 2 distinct)" in summary
    assert "tags                     list        (inferred, 2 distinct)" in summary
    assert "constant                 dropped     (inferred: one value or none)" in summary
    assert "dropped column(s) ['extra']" in summary
    assert "1 missing 'price' values set to the median 1.75" in summary


def test_tsv_and_pq_files(tmp_path):
    inter = _write(tmp_path / "i.tsv", "user_id\titem_id\ttimestamp\n1\t2\t2024-01-01T00:00:00\n")
    items = tmp_path / "items.pq"
    pd.DataFrame({"item_id": [2, 3], "color": ["red", "blue"]}).to_parquet(items)
    data = load_files(inter, items=items)
    assert data.interactions["timestamp"].tolist() == [1704067200]
    assert data.items["color"].tolist() == ["red", "blue"] and data.users is None
    assert "users: no file" in data.summary()


@pytest.mark.parametrize("values, stamps", [
    (["1700000000", "1700000000.9", "-60"], [1700000000, 1700000000, -60]),
    (["2023-11-14T22:13:20Z", "2023-11-14T23:13:20+01:00", "2023-11-14 22:13:20"], [1700000000] * 3),
    (["2023-11-14", "1700000000", "2023-11-14T22:13:20.5Z"], [1699920000, 1700000000, 1700000000]),
])
def test_timestamps_epoch_and_iso(tmp_path, values, stamps):
    body = HEADER + "".join(f"1,{n},{v}\n" for n, v in enumerate(values))
    data = load_files(_write(tmp_path / "i.csv", body))
    assert data.interactions["timestamp"].dtype == np.int64
    assert data.interactions["timestamp"].tolist() == stamps


def test_parquet_native_types(tmp_path):
    path = tmp_path / "i.parquet"
    pd.DataFrame({"user_id": np.array([1, 2], dtype=np.int32), "item_id": [5, 6],
                  "timestamp": pd.to_datetime(["2023-11-14T22:13:20", "2023-11-14T22:13:21"]),
                  "event_value": [1, 2]}).to_parquet(path)
    inter = load_files(path).interactions
    assert inter["timestamp"].tolist() == [1700000000, 1700000001]
    assert inter["user_id"].dtype == np.int64 and inter["event_value"].dtype == np.float32
    epoch = tmp_path / "e.parquet"
    pd.DataFrame({"user_id": [1], "item_id": [5], "timestamp": [1700000000.5]}).to_parquet(epoch)
    assert load_files(epoch).interactions["timestamp"].tolist() == [1700000000]


def test_parquet_index_is_a_column(tmp_path):
    path = tmp_path / "items.parquet"
    pd.DataFrame({"item_id": [1, 2], "color": ["a", "b"]}).set_index("item_id").to_parquet(path)
    assert read_table(path).columns.tolist() == ["item_id", "color"]


# --- inference and conversion -----------------------------------------------------------------

def _kinds(spec):
    return {**{c: "categorical" for c in spec.categorical}, **{c: "continuous" for c in spec.continuous},
            **{c: "list" for c in spec.lists}, **{c: "dropped" for c in spec.dropped}}


def test_inference_rules_for_csv(tmp_path):
    rows = 60
    columns = {
        "genres": ["a|b", "c"] + ["a"] * (rows - 2),           # separator in one row -> list
        "city": ["x", "y"] * (rows // 2),                       # text -> categorical
        "mixed": ["1", "two"] + ["3"] * (rows - 2),             # not all numbers -> text -> categorical
        "flag": ["true", "false"] * (rows // 2),                # booleans (text) -> categorical
        "level": [str(i % 50) for i in range(rows)],            # 50 distinct integers -> categorical
        "count": [str(i) for i in range(rows)],                 # 60 distinct integers -> continuous
        "score": ["1.0", "2.0"] * (rows // 2),                  # decimals -> continuous
        "same": ["k"] * rows,                                   # one value -> dropped
        "empty": [""] * rows,                                   # no value -> dropped
    }
    users = pd.DataFrame({"user_id": [str(i) for i in range(rows)], **columns})
    users.to_csv(tmp_path / "users.csv", index=False)
    inter = _write(tmp_path / "i.csv", HEADER + "1,1,1\n")
    data = load_files(inter, users=tmp_path / "users.csv")
    assert _kinds(data.user_features) == {
        "genres": "list", "city": "categorical", "mixed": "categorical", "flag": "categorical",
        "level": "categorical", "count": "continuous", "score": "continuous", "same": "dropped",
        "empty": "dropped"}
    assert data.users["genres"].iloc[0] == ["a", "b"] and data.users["count"].dtype == np.float32
    assert data.users["flag"].iloc[0] == "true" and data.users["level"].iloc[7] == "7"


def test_inference_rules_for_parquet_types(tmp_path):
    rows = 60
    items = pd.DataFrame({
        "item_id": range(rows),
        "tags": [[1, 2], [3], None] * (rows // 3),             # list column -> list of text
        "on_sale": [True, False] * (rows // 2),                 # bool -> categorical
        "year": [1990 + i % 10 for i in range(rows)],           # few integers -> categorical
        "views": range(rows),                                    # many integers -> continuous
        "rating": [1.0, 2.0, None] * (rows // 3),               # float -> continuous, gaps -> median
        "nothing": [None] * rows,                                # all null -> dropped
        "note": ["a | b", " c ", None] * (rows // 3),           # separator -> list, stripped
        "brand": ["x", None, "y"] * (rows // 3),               # categorical, gaps -> ""
    })
    items.to_parquet(tmp_path / "items.parquet")
    data = load_files(_write(tmp_path / "i.csv", HEADER + "1,1,1\n"), items=tmp_path / "items.parquet")
    assert _kinds(data.item_features) == {
        "tags": "list", "on_sale": "categorical", "year": "categorical", "views": "continuous",
        "rating": "continuous", "nothing": "dropped", "note": "list", "brand": "categorical"}
    out = data.items
    assert out["tags"].tolist()[:3] == [["1", "2"], ["3"], []]
    assert out["on_sale"].tolist()[:2] == ["True", "False"] and out["year"].iloc[3] == "1993"
    assert out["rating"].tolist()[:3] == [1.0, 2.0, 1.5]
    assert out["note"].tolist()[:3] == [["a", "b"], ["c"], []]
    assert out["brand"].tolist()[:3] == ["x", "", "y"]
    assert "20 missing 'rating' values set to the median 1.5" in data.summary()


def test_list_separator_argument_and_schema(tmp_path):
    inter = _write(tmp_path / "i.csv", HEADER + "1,1,1\n")
    items = _write(tmp_path / "items.csv", "item_id,genres\n1,a;b\n2,c\n")
    assert load_files(inter, items=items).item_features.categorical == ["genres"]
    assert load_files(inter, items=items, list_separator=";").items["genres"].tolist() == [["a", "b"], ["c"]]
    schema = _write(tmp_path / "s.json", json.dumps({"list_separator": ";"}))
    assert load_files(inter, items=items, schema=schema).item_features.lists == ["genres"]


# --- declarations -----------------------------------------------------------------------------

def test_declared_kinds_win_in_json(files, tmp_path):
    schema = _write(tmp_path / "schema.json", json.dumps(
        {"users": {"age": "continuous", "region": "dropped"}, "items": {"brand": "list"}}))
    data = load_files(*files, schema=schema)
    assert data.user_features.continuous == ["age"] and data.users["age"].dtype == np.float32
    assert data.user_features.dropped == ["region", "constant"]
    assert data.user_features.decided == {"age": "declared", "gender": "inferred", "region": "declared",
                                          "constant": "inferred"}
    assert data.item_features.lists == ["tags", "brand"] and data.items["brand"].iloc[0] == ["x"]
    summary = data.summary()
    assert "age                      continuous  (declared, 3 distinct)" in summary
    assert "region                   dropped     (declared)" in summary


def test_declared_kinds_in_toml(files, tmp_path):
    schema = _write(tmp_path / "schema.toml",
                    'list_separator = "|"\n[users]\nage = "categorical"\n[items]\nprice = "categorical"\n')
    data = load_files(*files, schema=schema)
    assert "age" in data.user_features.categorical and data.user_features.decided["age"] == "declared"
    assert data.items["price"].tolist() == ["1.5", "2", ""]


def test_declared_integers_with_gaps_stay_integer_text(tmp_path):
    inter = pd.DataFrame({"user_id": [1], "item_id": [1], "timestamp": [1]})
    items = pd.DataFrame({"item_id": [1, 2, 3], "year": [1995.0, None, 2001.0]})
    data = from_frames(inter, items=items, declared={"items": {"year": "categorical"}})
    assert data.items["year"].tolist() == ["1995", "", "2001"]


@pytest.mark.parametrize("declared, column, match", [
    ({"users": {"income": "continuous"}}, "income", "declared column is not in .*users.csv"),
    ({"users": {"age": "numeric"}}, "age", "unknown kind 'numeric'"),
    ({"items": {"tags": "list"}}, "tags", "declares items columns, but there is no items file"),
    ({"user": {"age": "continuous"}}, None, r"unknown key\(s\) \['user'\]"),
    ({"list_separator": ""}, None, "list_separator must be a non-empty string"),
])
def test_bad_declarations_name_the_schema_file(files, tmp_path, declared, column, match):
    interactions, users, _ = files
    schema = _write(tmp_path / "schema.json", json.dumps(declared))
    _refused(lambda: load_files(interactions, users, schema=schema), schema, None, column, match)


def test_declared_continuous_must_be_numbers(files, tmp_path):
    interactions, users, _ = files
    schema = _write(tmp_path / "schema.toml", '[users]\ngender = "continuous"\n')
    _refused(lambda: load_files(interactions, users, schema=schema), users, "line 2", "gender",
             "declared continuous, but 'F' is not a number")


def test_unreadable_schema_files(files, tmp_path):
    interactions = files[0]
    for path, match in ((tmp_path / "nope.json", "schema file not found"),
                        (_write(tmp_path / "s.yaml", "users: {}"), "use .json or .toml"),
                        (_write(tmp_path / "s.json", "{users"), "cannot parse the schema file"),
                        (_write(tmp_path / "t.toml", "users = [1"), "cannot parse the schema file"),
                        (_write(tmp_path / "l.json", "[]"), "must hold an object")):
        _refused(lambda: load_files(interactions, schema=path), path, None, None, match)


# --- what is refused --------------------------------------------------------------------------

@pytest.mark.parametrize("body, line, column, match", [
    (HEADER + "1,10,1700000000\nabc,11,1700000000\n", "line 3", "user_id", "integers.*got 'abc'"),
    (HEADER + "1,1.5,1700000000\n", "line 2", "item_id", r"integers.*got '1\.5'"),
    (HEADER + "1,10,1\n1,99999999999999999999,1\n", "line 3", "item_id", "integers \\(int64\\)"),
    (HEADER + "1,10,1700000000\n2,,1700000000\n2,,1\n", "line 3", "item_id", r"empty id \(2 such rows\)"),
    (HEADER + "1,10,1700000000\n 2 , ,1700000000\n", "line 3", "item_id", "empty id"),
    (HEADER + "1,10,yesterday\n", "line 2", "timestamp", "unparseable timestamp 'yesterday'"),
    (HEADER + "1,10,1\n1,10,2023-13-45\n", "line 3", "timestamp", "unparseable timestamp '2023-13-45'"),
    (HEADER + "1,10,\n", "line 2", "timestamp", "empty timestamp"),
    ("user_id,item_id,timestamp,event_value\n1,10,1,3\n1,10,1,lots\n", "line 3", "event_value",
     "event_value must be a number, got 'lots'"),
    ("user_id,item_id,timestamp,event_value\n1,10,1,\n", "line 2", "event_value", "empty event_value"),
])
def test_bad_interaction_rows_are_named(tmp_path, body, line, column, match):
    path = _write(tmp_path / "interactions.csv", body)
    _refused(lambda: load_files(path), path, line, column, match)


def test_ids_of_nineteen_digits_fit(tmp_path):
    path = _write(tmp_path / "i.csv", HEADER + "9223372036854775807,-9223372036854775808,1\n")
    assert load_files(path).interactions.iloc[0, :2].tolist() == [2**63 - 1, -2**63]


def test_missing_required_columns_list_the_columns_there(files, tmp_path):
    path = _write(tmp_path / "a.csv", "user_id,item_id,when\n1,2,3\n")
    _refused(lambda: load_files(path), path, None, "timestamp",
             r"missing required column\(s\) \['timestamp'\]; the file has \['user_id', 'item_id', 'when'\]")
    users = _write(tmp_path / "users.csv", "id,age\n1,3\n")
    _refused(lambda: load_files(files[0], users=users), users, None, "user_id",
             r"missing required column\(s\) \['user_id'\]")


def test_missing_empty_and_unknown_files(files, tmp_path):
    header_only = _write(tmp_path / "b.csv", HEADER)
    _refused(lambda: load_files(header_only), header_only, None, None, "the file has no rows")
    blank = _write(tmp_path / "c.csv", "")
    _refused(lambda: load_files(blank), blank, None, None, "the file is empty")
    _refused(lambda: load_files(tmp_path / "nope.csv"), tmp_path / "nope.csv", None, None, "file not found")
    _refused(lambda: load_files(files[0], items=tmp_path / "x.csv"), tmp_path / "x.csv", None, None,
             "file not found")
    empty_parquet = tmp_path / "items.parquet"
    pd.DataFrame({"item_id": pd.Series([], dtype="int64")}).to_parquet(empty_parquet)
    _refused(lambda: load_files(files[0], items=empty_parquet), empty_parquet, None, None, "no rows")
    odd = _write(tmp_path / "i.json", "{}")
    _refused(lambda: load_files(odd), odd, None, None, "unknown file type")


def test_interactions_pointing_at_unknown_items_or_users(files, tmp_path):
    _, users, items = files
    bad = _write(tmp_path / "bad.csv", HEADER + "1,10,1\n1,99,1\n2,98,1\n")
    error = _refused(lambda: load_files(bad, items=items), bad, "line 3", "item_id",
                     r"99 is not in the items file \(2 interactions point at unknown ids\)")
    assert str(error).startswith(f"{bad}, line 3, column 'item_id': 99")
    stranger = _write(tmp_path / "stranger.csv", HEADER + "1,10,1\n7,10,1\n")
    _refused(lambda: load_files(stranger, users=users), stranger, "line 3", "user_id",
             r"7 is not in the users file \(1 interactions")


def test_duplicate_ids_in_side_files(files, tmp_path):
    interactions = files[0]
    users = _write(tmp_path / "users.csv", "user_id,gender\n1,F\n2,M\n1,F\n")
    _refused(lambda: load_files(interactions, users=users), users, "line 4", "user_id", "duplicate id 1")
    items = tmp_path / "items.parquet"
    pd.DataFrame({"item_id": [10, 11, 11], "color": ["a", "b", "c"]}).to_parquet(items)
    _refused(lambda: load_files(interactions, items=items), items, "row 2", "item_id", "duplicate id 11")


def test_parquet_rows_are_numbered_from_zero(tmp_path):
    path = tmp_path / "interactions.parquet"
    pd.DataFrame({"user_id": ["1", "x"], "item_id": [1, 2], "timestamp": [1, 2]}).to_parquet(path)
    _refused(lambda: load_files(path), path, "row 1", "user_id", "got 'x'")
    floats = tmp_path / "floats.parquet"
    pd.DataFrame({"user_id": [1, 2], "item_id": [1.0, None], "timestamp": [1, 2]}).to_parquet(floats)
    _refused(lambda: load_files(floats), floats, "row 1", "item_id", "empty id")


def test_bad_creation_timestamp(files, tmp_path):
    items = _write(tmp_path / "items.csv", "item_id,creation_timestamp\n10,2023-01-01\n11,soon\n")
    _refused(lambda: load_files(files[0], items=items), items, "line 3", "creation_timestamp",
             "unparseable timestamp 'soon'")


def test_same_feature_name_on_both_sides_is_refused(files, tmp_path):
    interactions, _, items = files
    users = _write(tmp_path / "users.csv", "user_id,brand\n1,a\n2,b\n")
    _refused(lambda: load_files(interactions, users=users, items=items), users, None, "brand",
             r"\['brand'\] are in both the users and the items file .*items.parquet.*rename one side")


@pytest.mark.parametrize("side, header, column", [
    ("users", "user_id,timestamp", "timestamp"),
    ("users", "user_id,item_id", "item_id"),
    ("users", "user_id,creation_timestamp", "creation_timestamp"),
    ("items", "item_id,user_id", "user_id"),
    ("items", "item_id,event_timestamp", "event_timestamp"),
])
def test_reserved_feature_names(files, tmp_path, side, header, column):
    path = _write(tmp_path / f"{side}.csv", f"{header}\n1,5\n2,6\n10,7\n11,8\n")
    _refused(lambda: load_files(files[0], **{side: path}), path, None, column, "reserved column name")


# --- in-memory adapters -----------------------------------------------------------------------

def test_from_frames_names_its_source_and_leaves_the_frames_alone():
    inter = pd.DataFrame({"user_id": [1, 2], "item_id": [5, 6], "timestamp": [1, 2]}, index=[7, 7])
    users = pd.DataFrame({"user_id": [1, 2], "age": [20.0, 30.0]}, index=[3, 4])
    data = from_frames(inter, users, source="synthetic")
    assert data.interactions.index.tolist() == [0, 1] and data.users.index.tolist() == [0, 1]
    assert data.users["age"].dtype == np.float32 and inter.attrs == {} and inter.index.tolist() == [7, 7]
    items = pd.DataFrame({"item_id": [5]})
    _refused(lambda: from_frames(inter, items=items, source="synthetic"), "synthetic (interactions)",
             "row 1", "item_id", "6 is not in the items file")
    _refused(lambda: from_frames(inter.iloc[:0], source="synthetic"), "synthetic (interactions)", None, None,
             "no rows")
    _refused(lambda: from_frames(inter, declared={"users": {"x": "list"}}, source="synthetic"), "synthetic",
             None, "x", "no users file")


def test_cli_refuses_bad_files_without_traceback_or_artifacts(tmp_path, capsys):
    from recsys.cli import main

    bad = _write(tmp_path / "interactions.csv", HEADER + "1,10,1700000000\n2,x,1700000000\n")
    code = main(["--workdir", str(tmp_path / "work"), "train", "--interactions", str(bad)])
    err = capsys.readouterr().err
    assert code == 1
    assert "line 3, column 'item_id'" in err and "Traceback" not in err
    assert not (tmp_path / "work").exists()
