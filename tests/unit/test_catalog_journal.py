"""The catalogue journal on its own: edits recorded in order, taken out again when the edit
fails, their net effect per item, a clear that keeps the sequence going."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from core.artifacts import Artifacts
from core.config import Config
from recsys.jobs.catalog_journal import DELETE, UPSERT, CatalogError, Journal, complete_items


@pytest.fixture
def setup(tmp_path):
    config = Config(workdir=tmp_path)
    artifacts = Artifacts.of(config)
    artifacts.features.parent.mkdir(parents=True)
    artifacts.features.write_text(json.dumps({"item": {"categorical": ["item_category"], "continuous": [],
                                                       "lists": ["genres"], "counts": ["item_interactions"]}}))
    return Journal(config), artifacts


def _items(*ids, category="a"):
    return pd.DataFrame({"item_id": list(ids), "item_category": category, "genres": "x|y"})


def test_edits_net_out_per_item_in_order(setup):
    journal, artifacts = setup
    with journal.locked():
        for op, kwargs in [(UPSERT, {"items": complete_items(artifacts, _items(1, 2))}),
                           (DELETE, {"item_ids": [2, 3]}),
                           (UPSERT, {"items": complete_items(artifacts, _items(3, category="b"))})]:
            with journal.recording(op, **kwargs):
                pass
    edits = journal.edits(artifacts)
    assert edits.last == 3 and sorted(edits.deletes) == [2]
    assert edits.upserts.set_index("item_id")["item_category"].to_dict() == {1: "a", 3: "b"}
    assert edits.upserts["genres"].tolist() == [["x", "y"], ["x", "y"]]
    assert edits.upserts["item_interactions"].tolist() == [0, 0]
    assert journal.deleted() == {2}
    later = journal.edits(artifacts, after=2)
    assert later.deletes == [] and later.upserts["item_id"].tolist() == [3]
    assert not journal.edits(artifacts, after=3)


def test_a_failed_edit_leaves_no_trace_and_clear_keeps_the_sequence(setup):
    journal, artifacts = setup
    with journal.locked():
        with journal.recording(DELETE, item_ids=[5]):
            pass
        with pytest.raises(RuntimeError):
            with journal.recording(DELETE, item_ids=[6]):
                raise RuntimeError("Milvus refused")
        assert journal.count() == 1 and journal.deleted() == {5}
        assert journal.clear() == 1
        assert journal.count() == 0 and journal.last() == 1 and not journal.edits(artifacts)
        with journal.recording(DELETE, item_ids=[7]) as seq:
            assert seq == 2


def test_items_are_checked_against_trainings_features(setup):
    _, artifacts = setup
    with pytest.raises(CatalogError, match="lack the feature columns"):
        complete_items(artifacts, pd.DataFrame({"item_id": [1]}))
    with pytest.raises(CatalogError, match="duplicate"):
        complete_items(artifacts, _items(1, 1))
