"""The update log every serving process tails: appended ids are read once, a writer's partial
bytes wait for the next look, and a log started anew means everything changed. The events
the `events` model appends are read by the next build, a line still being written left out."""
from __future__ import annotations

import numpy as np

from operators import feature_updates
from operators.feature_updates import ALL, UpdateLog
from training import imported


def test_readers_see_each_appended_id_once(tmp_path):
    path = feature_updates.log_path(tmp_path, "user_features")
    first, late = UpdateLog(path), None
    assert first.changed().tolist() == []
    feature_updates.append(path, [5, 7])
    late = UpdateLog(path)  # a process started after the append sees only what comes next
    assert first.changed().tolist() == [5, 7] and first.changed().tolist() == []
    feature_updates.append(path, [9])
    assert first.changed().tolist() == [9] and late.changed().tolist() == [9]


def test_partial_bytes_wait_and_a_new_log_means_everything(tmp_path, monkeypatch):
    path = feature_updates.log_path(tmp_path, "user_features")
    feature_updates.append(path, [1])
    reader = UpdateLog(path)
    with open(path, "ab") as handle:
        handle.write(np.int64(42).tobytes()[:3])
    assert reader.changed().tolist() == []
    with open(path, "ab") as handle:
        handle.write(np.int64(42).tobytes()[3:])
    assert reader.changed().tolist() == [42]
    monkeypatch.setattr(feature_updates, "MAX_BYTES", 20)
    feature_updates.append(path, [3])  # past the limit: a new log
    monkeypatch.undo()
    assert reader.changed() is ALL
    feature_updates.append(path, [4])
    assert reader.changed().tolist() == [4]


def test_the_next_build_reads_the_events_log(tmp_path):
    events = tmp_path / "events"
    events.mkdir()
    (events / "2026-12-07.csv").write_text("user_id,item_id,timestamp,event_type,event_value\n"
                                           "1,10,1764583200,click,\n2,11,1764583300,buy,4.5\n3,12,17645")
    frame = imported.interactions(tmp_path, events)
    assert frame["user_id"].tolist() == [1, 2] and frame["event_value"].isna().tolist() == [True, False]


def test_a_build_records_how_far_it_read_and_the_rest_is_read_from_there(tmp_path):
    events = tmp_path / "events"
    events.mkdir()
    day = events / "2026-12-07.csv"
    day.write_text("user_id,item_id,timestamp,event_type,event_value\n1,10,1764583200,click,\n")
    read: dict = {}
    assert imported.interactions(tmp_path, events, read)["item_id"].tolist() == [10]
    with open(day, "a") as handle:
        handle.write("2,11,1764583300,buy,\n3,12,17645")  # one more event, one still being written
    later = imported.events_after(day, read[day.name])
    assert later["item_id"].tolist() == [11]


def test_events_on_items_the_build_does_not_know_are_left_out(tmp_path):
    import pandas as pd

    from training.dataset import from_frames

    events = tmp_path / "events"
    events.mkdir()
    (events / "d.csv").write_text("user_id,item_id,timestamp,event_type,event_value\n1,10,5,,\n1,999,6,,\n")
    data = from_frames(pd.DataFrame({"user_id": [1], "item_id": [10], "timestamp": [1]}),
                       items=pd.DataFrame({"item_id": [10, 11]}))
    out = imported.appended(data, tmp_path, events)
    assert out.interactions["item_id"].tolist() == [10, 10] and "left out" in out.notes[-1]
    assert out.events_read == {"d.csv": len((events / "d.csv").read_bytes())}
