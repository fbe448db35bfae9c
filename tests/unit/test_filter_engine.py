"""The filter engine (operators.filters) and the operators that apply it, on in-memory data."""
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from merlin.table import TensorTable

from operators.filters import FeatureKinds, FilterError, compile_filter
from operators.ordering import FilterCandidates, PopularFallback

KINDS = FeatureKinds.from_feast({"genres": "string_list", "release_year": "string",
                                 "item_interactions": "float32", "item_category": "string"},
                                category_feature="item_category")
IDS = np.array([1, 2, 3, 4, 5])
COLUMNS = {"genres": [["Comedy"], ["Drama", "War"], ["Action"], [], ["Comedy", "Drama"]],
           "release_year": ["1995", "1996", "1995", "", "1997"],
           "item_interactions": [10.0, 3.0, 50.0, 0.0, 7.0],
           "item_category": ["S", "S", "Q", "", "7"]}


def keep(expression, values=None, ids=IDS, columns=COLUMNS):
    return compile_filter(expression, values, KINDS).keep(ids, columns).tolist()


def test_include_and_exclude_clauses_combine():
    assert keep("INCLUDE ItemID WHERE Items.genres IN ('Comedy')") == [True, False, False, False, True]
    assert keep("EXCLUDE ItemID WHERE ItemID IN (1, 3)") == [False, True, False, True, True]
    both = "INCLUDE ItemID WHERE Items.genres IN ($G) | EXCLUDE ItemID WHERE Items.item_interactions < $N"
    assert keep(both, {"G": ["Comedy", "Drama"], "N": 8}) == [True, False, False, False, False]


def test_list_features_match_any_element_and_not_in_means_none():
    assert keep('INCLUDE ItemID WHERE Items.genres = "Drama"') == [False, True, False, False, True]
    assert keep("INCLUDE ItemID WHERE Items.genres NOT IN ('Drama')") == [True, False, True, False, False]


def test_boolean_structure_and_case_insensitive_keywords():
    expression = ("include ItemID where (Items.release_year = '1995' or Items.release_year = '1997') "
                  "and not ItemID = 3")
    assert keep(expression) == [True, False, False, False, True]
    assert keep("INCLUDE ItemID WHERE Items.item_interactions >= 7 AND Items.item_interactions <= 10") == \
        [True, False, False, False, True]


def test_parameters_are_values_and_must_all_be_bound():
    assert keep("EXCLUDE ItemID WHERE ItemID IN $IDS", '{"IDS": [2, 4]}') == [True, False, True, False, True]
    with pytest.raises(FilterError, match=r"no value given for parameter \$IDS"):
        compile_filter("EXCLUDE ItemID WHERE ItemID IN $IDS", None, KINDS)
    with pytest.raises(FilterError, match="does not use: X"):
        compile_filter("EXCLUDE ItemID WHERE ItemID = 1", {"X": 1}, KINDS)
    with pytest.raises(FilterError, match="JSON object"):
        compile_filter("EXCLUDE ItemID WHERE ItemID = $X", "{not json", KINDS)
    with pytest.raises(FilterError, match="compares with one"):
        compile_filter("EXCLUDE ItemID WHERE ItemID = $X", {"X": [1, 2]}, KINDS)


@pytest.mark.parametrize("expression,values,message", [
    ("", None, "empty"),
    ("INCLUDE ItemID", None, "expected WHERE"),
    ("SELECT ItemID FROM items", None, "starts with INCLUDE or EXCLUDE"),
    ("INCLUDE UserID WHERE ItemID = 1", None, "applies to ItemID"),
    ("INCLUDE ItemID WHERE Items.price > 3", None, "unknown item feature 'price'"),
    ("INCLUDE ItemID WHERE Items.genres > 'a'", None, "is a list"),
    ("INCLUDE ItemID WHERE Items.release_year < '2000'", None, "is text"),
    ("INCLUDE ItemID WHERE Items.item_interactions > 'many'", None, "is a number"),
    ("INCLUDE ItemID WHERE ItemID = 'x'", None, "integer ids"),
    ("INCLUDE ItemID WHERE ItemID = $X", {"X": True}, "numbers or strings"),
    ("INCLUDE ItemID WHERE ItemID = $X", {"X": {"a": 1}}, "numbers or strings"),
    ("INCLUDE ItemID WHERE ItemID = 1; DROP", None, "unexpected character ';'"),
    ("INCLUDE ItemID WHERE ItemID = 1 ItemID", None, "unexpected 'ItemID'"),
    ("INCLUDE ItemID WHERE " + "(" * 40 + "ItemID = 1" + ")" * 40, None, "nests deeper"),
    ("INCLUDE ItemID WHERE ItemID IN $X", {"X": list(range(10_001))}, "more than 10000 values"),
    ("x" * 5000, None, "at most"),
], ids=lambda v: v[:40] if isinstance(v, str) else None)
def test_malformed_filters_are_refused_with_what_is_wrong(expression, values, message):
    with pytest.raises(FilterError, match=re.escape(message)):
        compile_filter(expression, values, KINDS)


def test_pushdown_covers_ids_and_the_stored_category_only():
    f = compile_filter("EXCLUDE ItemID WHERE ItemID IN $IDS | INCLUDE ItemID WHERE Items.item_category IN ('S', 'Q')"
                       " | INCLUDE ItemID WHERE Items.genres = 'Comedy'", {"IDS": [5, 7]}, KINDS)
    assert f.milvus_expression("id", "category", "item_category") == \
        '(not (id in [5, 7])) and (category in ["S", "Q"])'
    assert f.milvus_expression("id") == "(not (id in [5, 7]))"  # the collection stores no category
    assert compile_filter("INCLUDE ItemID WHERE Items.genres = 'x'", None, KINDS).milvus_expression("id") is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_no_parameter_value_can_change_the_milvus_expression(value):
    """Whatever text a caller puts in a parameter, the pushed-down expression is the fixed
    template with a plain literal, or nothing (then only the post-ranking filter applies)."""
    f = compile_filter("INCLUDE ItemID WHERE Items.item_category = $C", {"C": value}, KINDS)
    expression = f.milvus_expression("id", "category", "item_category")
    if expression is not None:
        literal = re.fullmatch(r'\(category == "(.*)"\)', expression, flags=re.S)
        assert literal and literal.group(1) == value and '"' not in value and "\\" not in value
    assert f.keep(np.array([1]), {"item_category": [value]}).tolist() == [True]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_any_text_either_compiles_or_is_refused_cleanly(text):
    try:
        compile_filter(text, None, KINDS)
    except FilterError:
        pass


def test_filter_candidates_replaces_rejected_ids_with_minus_one():
    op = FilterCandidates()
    table = TensorTable({"candidate_ids": np.array([[1, 2, 3], [4, 5, 1]]),
                         "genres": np.array([[np.array(["Comedy"]), np.array(["War"]), np.array([])],
                                             [np.array([]), np.array(["Comedy"]), np.array(["Comedy"])]],
                                            dtype=object)})
    assert op.transform(None, table)["candidate_ids"].values.tolist() == [[1, 2, 3], [4, 5, 1]]
    op.request_filter = compile_filter("INCLUDE ItemID WHERE Items.genres = 'Comedy'", None, KINDS)
    assert op.transform(None, table)["candidate_ids"].values.tolist() == [[1, -1, -1], [-1, 5, 1]]


def test_popular_fill_respects_the_filter_and_is_counted():
    op = PopularFallback(popular_ids=[100, 101, 102, 103], popular_scores=[0.4, 0.3, 0.2, 0.1], top_k=3,
                         popular_features={"release_year": ["1995", "1996", "1995", "1995"]})
    table = TensorTable({"item_ids": np.array([[7, -1, -1], [8, 9, 6]]),
                         "scores": np.array([[1.0, -np.inf, -np.inf], [3.0, 2.0, 1.0]], dtype=np.float32),
                         "user_found": np.array([True, False]),
                         "history": np.array([np.array([102]), np.array([], dtype=np.int64)], dtype=object)})
    op.request_filter = compile_filter("INCLUDE ItemID WHERE Items.release_year = '1995'", None, KINDS)
    out = op.transform(None, table)
    # the known user: 100 and 103 fill (102 was seen); the unknown user: popular within the filter
    assert out["item_ids"].values.tolist() == [[7, 100, 103], [100, 102, 103]]
    assert out["filled"].values.tolist() == [2, 3]
    assert (np.diff(out["scores"].values, axis=1) <= 0).all()


def test_top_similar_keeps_the_nearest_passing_items_and_fills_within_the_filter():
    from operators.ordering import TopSimilar

    op = TopSimilar(popular_ids=[100, 101, 102], top_k=3,
                    popular_features={"release_year": ["1995", "1996", "1995"]})
    op.request_filter = compile_filter("INCLUDE ItemID WHERE Items.release_year = '1995'", None, KINDS)
    table = TensorTable({"item_ids": np.array([[7, -1, 8, -1], [-1, -1, -1, -1]]),
                         "scores": np.array([[0.9, 0.8, 0.7, 0.6], [0.5, 0.4, 0.3, 0.2]], dtype=np.float32),
                         "found": np.array([True, True]), "item_id": np.array([1, 100])})
    out = op.transform(None, table)
    # row 1: 7 and 8, then popular 100 (102 would be next); row 2: never the item itself (100)
    assert out["item_ids"].values.tolist() == [[7, 8, 100], [102, -1, -1]]
    assert out["scores"].values[0, :2].tolist() == pytest.approx([0.9, 0.7])
    assert np.isneginf(out["scores"].values[1, 1:]).all()
