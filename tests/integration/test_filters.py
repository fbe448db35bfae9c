"""Business filters through the real stack: the ``filter`` / ``filter_values`` inputs of
``recommender`` over HTTP and gRPC, pushed into Milvus where it can, applied after ranking on
the Feast features otherwise, popular fill within the filter, clear errors, and the batch job
applying the same filter as online serving."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from recsys.client import RecommendError
from recsys.jobs.batch import BatchOptions, run_batch
from recsys.jobs.batch_store import BatchStore

pytestmark = pytest.mark.integration

ON_GENRE = "INCLUDE ItemID WHERE Items.genres IN ($GENRES)"


@pytest.fixture(scope="module")
def item_features(serving_stack) -> pd.DataFrame:
    config = serving_stack[0]
    return pd.read_parquet(config.feature_data_dir / "item_features.parquet").set_index("item_id")


def _genres(item_features, item_id) -> set:
    return set(item_features.loc[int(item_id), "genres"])


def _valid(row: np.ndarray) -> list[int]:
    """The row's item ids before any -1 padding (which only ever trails)."""
    ids = row.tolist()
    head = ids[: ids.index(-1)] if -1 in ids else ids
    assert all(i == -1 for i in ids[len(head):])
    return head


def _rarest_genre(item_features) -> str:
    counts = pd.Series([g for gs in item_features["genres"] for g in gs]).value_counts()
    return str(counts.index[-1])


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_include_a_genre_returns_only_items_of_that_genre(clients, catalogue, item_features, protocol):
    users, _, _ = catalogue
    answer = clients[protocol].recommend(users[:8], filter=ON_GENRE, filter_values={"GENRES": ["Comedy"]})
    for row in range(8):
        ids = _valid(answer["item_ids"][row])
        assert ids, "Comedy is common: every user gets items"
        assert all("Comedy" in _genres(item_features, i) for i in ids)
        scores = answer["scores"][row][: len(ids)]
        assert np.all(np.diff(scores) <= 0)


def test_excluded_ids_are_pushed_down_and_absent(clients, catalogue):
    users, _, _ = catalogue
    plain = clients["grpc"].recommend(users[:4])
    drop = sorted({int(i) for row in plain["item_ids"][:, :3] for i in row})
    answer = clients["grpc"].recommend(users[:4], filter="EXCLUDE ItemID WHERE ItemID IN $IDS",
                                       filter_values={"IDS": drop})
    assert not set(answer["item_ids"].reshape(-1).tolist()) & set(drop)
    # retrieval spent its depth on other items: full rows, no fill (the order of the kept ones
    # may shift: scores are standardized over each user's candidates, which changed)
    assert (answer["item_ids"] != -1).all() and (answer["filled"] == 0).all()
    for row in range(4):
        assert np.all(np.diff(answer["scores"][row]) <= 0)


def test_a_narrow_filter_is_filled_with_popular_items_within_it_and_says_so(clients, catalogue, item_features):
    users, _, _ = catalogue
    genre = _rarest_genre(item_features)
    answer = clients["http"].recommend(users[:16], filter=ON_GENRE, filter_values={"GENRES": [genre]})
    assert answer["filled"].dtype == np.int32
    for row in range(16):
        ids = _valid(answer["item_ids"][row])
        assert all(genre in _genres(item_features, i) for i in ids)
        assert 0 <= answer["filled"][row] <= len(ids)
    unfiltered = clients["http"].recommend(users[:16])
    assert (unfiltered["filled"] == 0).all()


def test_unknown_users_get_popular_items_within_the_filter(clients, item_features):
    answer = clients["grpc"].recommend([987_654_321], filter=ON_GENRE, filter_values={"GENRES": ["Drama"]})
    ids = _valid(answer["item_ids"][0])
    assert answer["fallback"][0] and ids and answer["filled"][0] == len(ids)
    assert all("Drama" in _genres(item_features, i) for i in ids)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("expression,values,message", [
    ("INCLUDE ItemID WHERE Items.price > 3", None, "unknown item feature 'price'"),
    ("INCLUDE ItemID WHERE", None, "ends too early"),
    ("EXCLUDE ItemID WHERE ItemID IN $IDS", {"IDS": ["1) or (id > 0"]}, "integer ids"),
    ("EXCLUDE ItemID WHERE ItemID IN $IDS", None, "no value given for parameter $IDS"),
    ("EXCLUDE ItemID WHERE ItemID = 1", "{oops", "JSON object"),
])
def test_malformed_filters_get_a_clear_error_and_the_server_keeps_serving(
        clients, catalogue, protocol, expression, values, message):
    users, _, _ = catalogue
    with pytest.raises(RecommendError, match=r"bad request: filter: .*" + message.replace("$", r"\$")
                       .replace("(", r"\(").replace(")", r"\)")):
        clients[protocol].recommend(users[:2], filter=expression, filter_values=values)
    assert clients[protocol].recommend(users[:2])["item_ids"].shape[0] == 2


def test_hostile_text_values_are_only_ever_values(clients, catalogue, item_features):
    """Quotes and Milvus syntax inside a parameter neither break the search nor widen it."""
    users, _, _ = catalogue
    hostile = 'Comedy" or id > 0 or category == "'
    answer = clients["grpc"].recommend(users[:3], filter=ON_GENRE, filter_values={"GENRES": [hostile]})
    assert (answer["item_ids"] == -1).all(), "no item has that genre"


def test_the_batch_job_applies_the_same_filter_as_serving(serving_stack, clients, catalogue, tmp_path):
    config = serving_stack[0]
    users, _, _ = catalogue
    chosen = np.sort(users[:40])
    values = {"GENRES": ["Drama", "Thriller"]}

    def served():
        answer = clients["grpc"].recommend(chosen, filter=ON_GENRE, filter_values=values)
        return {u: _valid(answer["item_ids"][r]) for r, u in enumerate(chosen.tolist())}

    before, deadline = served(), time.monotonic() + 30
    while (now := served()) != before and time.monotonic() < deadline:  # Milvus' first-search quirk
        before = now
    url = f"sqlite:///{tmp_path / 'recs.db'}"
    result = run_batch(config, BatchOptions(k=config.serving.top_k, db_url=url, user_ids=chosen.tolist(),
                                            progress=False, filter=ON_GENRE,
                                            filter_values='{"GENRES": ["Drama", "Thriller"]}'))
    store = BatchStore(url)
    try:
        assert store.get_run(result.run_id)["parameters"]["filter"] == {"expression": ON_GENRE, "values": values}
        for user in chosen.tolist():
            stored = [r["item_id"] for r in store.current_recommendations(user)]
            assert stored == now[user], user
    finally:
        store.close()
    with pytest.raises(ValueError, match="--filter: unknown item feature"):
        run_batch(config, BatchOptions(db_url=url, filter="INCLUDE ItemID WHERE Items.nope = 1", progress=False))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_similar_items_within_a_filter(clients, catalogue, item_features, protocol):
    _, items, popular = catalogue
    asked = [int(i) for i in popular[:4]]
    plain = clients[protocol].similar(asked)
    answer = clients[protocol].similar(asked, filter=ON_GENRE, filter_values={"GENRES": ["Drama"]})
    for row, item in enumerate(asked):
        ids = _valid(answer["item_ids"][row])
        assert ids and item not in ids and set(ids) <= items
        assert all("Drama" in _genres(item_features, i) for i in ids)
        assert np.all(np.diff(answer["scores"][row][: len(ids)]) <= 0)
    # without a filter, the answer is what it was before filters existed: top-k, itself excluded
    assert all(item not in plain["item_ids"][row] for row, item in enumerate(asked))
    assert (plain["item_ids"] != -1).all()
    unknown = clients[protocol].similar([987_654_321], filter=ON_GENRE, filter_values={"GENRES": ["Drama"]})
    assert not unknown["found"][0]
    assert all("Drama" in _genres(item_features, i) for i in _valid(unknown["item_ids"][0]))
    with pytest.raises(RecommendError, match=r"bad request: filter: unknown item feature 'nope'"):
        clients[protocol].similar(asked, filter="INCLUDE ItemID WHERE Items.nope = 1")
    assert clients[protocol].similar(asked[:1])["item_ids"].shape[0] == 1
