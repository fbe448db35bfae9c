"""The SQL layer of batch recommendations (SQLite in memory and in a file), the users file
reader, the model version and the command's refusals - no servers, no training."""
from __future__ import annotations

import sqlite3
import threading

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from recsys.cli import main
from recsys.jobs import batch, batch_users
from recsys.jobs.batch_store import (COMPLETE, FAILED, RUNNING, BatchStore, BatchStoreError, chunk_rows,
                                     current_recommendations, safe_url, utcnow)

SOURCES = np.array(["personalized", "features", "popular"], dtype=object)


def _answer(users, k=3, offset=0):
    users = np.asarray(users, dtype=np.int64)
    items = users[:, None] * 100 + np.arange(k)[None, :] + offset
    scores = np.tile(np.linspace(1.0, 0.1, k), (len(users), 1))
    return users, items, scores, SOURCES[users % 3]


def _run(store, run_id, users, k=3, offset=0, complete=True):
    store.start_run(run_id, k, {"users": "list"}, "v1", len(users))
    store.write_chunk(run_id, *_answer(users, k, offset))
    if complete:
        store.complete_run(run_id, 100.0)


@pytest.fixture
def store():
    made = BatchStore("sqlite://")
    made.create_schema()
    yield made
    made.close()


def test_schema_has_tables_primary_key_index_and_view(store):
    store.create_schema()  # idempotent
    inspector = sa.inspect(store.engine)
    assert {"recommendation_runs", "recommendations"} <= set(inspector.get_table_names())
    assert "current_recommendations" in inspector.get_view_names()
    assert inspector.get_pk_constraint("recommendations")["constrained_columns"] == ["run_id", "user_id", "rank"]
    indexes = {ix["name"]: ix["column_names"] for ix in inspector.get_indexes("recommendations")}
    assert indexes["ix_recommendations_user_id"] == ["user_id"]
    columns = {c["name"] for c in inspector.get_columns("recommendation_runs")}
    assert {"run_id", "status", "started_at", "finished_at", "k", "parameters", "model_version",
            "users_total", "users_done", "rows", "users_per_second"} <= columns


def test_a_run_is_invisible_until_complete_then_replaces_the_previous_one(store):
    assert store.current_run() is None and store.current_recommendations(1) == []
    _run(store, "r1", [1, 2, 4])
    first = store.current_recommendations(1)
    assert [r["rank"] for r in first] == [1, 2, 3] and [r["item_id"] for r in first] == [100, 101, 102]
    assert first[0]["source"] == "features" and first[0]["run_id"] == "r1"

    _run(store, "r2", [1, 2], offset=50, complete=False)  # in progress: readers still see r1
    assert store.get_run("r2")["status"] == RUNNING
    assert store.current_run()["run_id"] == "r1"
    assert [r["item_id"] for r in store.current_recommendations(1)] == [100, 101, 102]
    store.complete_run("r2", 50.0)
    assert store.current_run()["run_id"] == "r2"
    assert [r["item_id"] for r in store.current_recommendations(1)] == [150, 151, 152]
    assert store.current_recommendations(4) == []  # the current run does not cover user 4
    run = store.get_run("r2")
    assert run["status"] == COMPLETE and run["users_done"] == 2 and run["rows"] == 6
    assert run["users_per_second"] == 50.0 and run["finished_at"] >= run["started_at"]
    assert run["parameters"] == {"users": "list"}


def test_chunks_are_atomic_and_counted(store):
    store.start_run("r", 3, {}, "v1", 4)
    assert store.write_chunk("r", *_answer([1, 2])) == 6
    with pytest.raises(sa.exc.IntegrityError):  # user 2 again: the whole chunk is refused
        store.write_chunk("r", *_answer([3, 2]))
    assert store.done_users("r") == {1, 2}
    run = store.get_run("r")
    assert (run["users_done"], run["rows"]) == (2, 6)
    assert [row[:3] for row in store.run_rows("r")] == [(1, 1, 100), (1, 2, 101), (1, 3, 102),
                                                        (2, 1, 200), (2, 2, 201), (2, 3, 202)]


def test_missing_items_are_not_rows_and_bytes_sources_are_text():
    rows = chunk_rows("r", [7, 8], np.array([[1, 2, -1], [3, -1, -1]]), np.ones((2, 3)),
                      np.array([b"popular", b"features"], dtype=object), utcnow())
    assert [(r[1], r[2], r[3], r[5]) for r in rows] == [(7, 1, 1, "popular"), (7, 2, 2, "popular"),
                                                        (8, 1, 3, "features")]
    with pytest.raises(ValueError, match="chunk shapes disagree"):
        chunk_rows("r", [7], np.ones((2, 3)), np.ones((2, 3)), ["a", "b"], utcnow())


def test_reopen_recounts_and_fail_keeps_rows(store):
    store.start_run("r", 3, {}, "v1", 5)
    store.write_chunk("r", *_answer([1, 2]))
    store.fail_run("r", "boom")
    failed = store.get_run("r")
    assert failed["status"] == FAILED and failed["error"] == "boom"
    with store.engine.begin() as conn:  # counters out of step (e.g. edited by hand)
        conn.execute(sa.text("UPDATE recommendation_runs SET users_done = 0, \"rows\" = 0"))
    reopened = store.reopen_run("r", "host:1")
    assert (reopened["status"], reopened["users_done"], reopened["rows"], reopened["error"]) == (RUNNING, 2, 6, None)
    assert store.source_counts("r") == {"features": 1, "popular": 1}


def test_prune_keeps_the_newest_complete_runs_only(store):
    for name in ("a", "b", "c", "d"):
        _run(store, name, [1, 2])
    _run(store, "open", [1], complete=False)
    assert store.prune(2) == ["b", "a"]
    assert sorted(r["run_id"] for r in store.list_runs()) == ["c", "d", "open"]
    assert store.run_rows("a") == [] and len(store.run_rows("c")) == 6
    assert store.prune(2) == []
    with pytest.raises(ValueError):
        store.prune(0)


def test_sqlite_file_readers_see_committed_state_during_a_write(tmp_path):
    path = tmp_path / "recs.db"
    url = f"sqlite:///{path}"
    store = BatchStore(url)
    store.create_schema()
    _run(store, "old", [1, 2])
    store.start_run("new", 3, {}, "v1", 2)
    with store.engine.begin() as conn:  # a chunk being written, not committed yet
        conn.exec_driver_sql("INSERT INTO recommendations VALUES ('new', 1, 1, 5, 1.0, 'popular', '2026-01-01')")
        reader = sqlite3.connect(path, timeout=1)
        assert reader.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        seen = reader.execute("SELECT DISTINCT run_id FROM current_recommendations").fetchall()
        pending = reader.execute("SELECT COUNT(*) FROM recommendations WHERE run_id = 'new'").fetchone()
        reader.close()
    assert seen == [("old",)] and pending == (0,)
    assert [r["item_id"] for r in current_recommendations(url, 2)] == [200, 201, 202]
    store.close()


def test_parallel_writer_and_reader_threads(tmp_path):
    url = f"sqlite:///{tmp_path / 'recs.db'}"
    writer, reader = BatchStore(url), BatchStore(url)
    writer.create_schema()
    _run(writer, "old", list(range(50)))
    writer.start_run("new", 3, {}, "v1", 500)
    seen, stop = set(), threading.Event()

    def read():
        while not stop.is_set():
            seen.update(r["run_id"] for r in reader.current_recommendations(7))

    thread = threading.Thread(target=read)
    thread.start()
    for start in range(0, 500, 50):
        writer.write_chunk("new", *_answer(range(start, start + 50), offset=1))
    stop.set()
    thread.join()
    assert seen == {"old"}
    writer.complete_run("new")
    assert reader.current_run()["run_id"] == "new"
    writer.close()
    reader.close()


@pytest.mark.parametrize("url, message", [
    ("xyz", "malformed database URL 'xyz'"),
    ("foo://x/y", "unsupported database URL scheme 'foo'"),
    ("sqlite:////nonexistent-dir/sub/recs.db", "cannot connect to the database sqlite:////nonexistent-dir"),
])
def test_bad_urls_are_refused_clearly(url, message):
    with pytest.raises(BatchStoreError, match=message.replace("(", r"\(")):
        BatchStore(url)


def test_unreachable_postgresql_is_reported_without_its_password():
    from recsys.runtime.servers import free_port

    url = f"postgresql://me:s3cret@127.0.0.1:{free_port()}/recs"
    with pytest.raises(BatchStoreError, match="cannot connect to the database") as error:
        BatchStore(url, connect_timeout_s=3)
    assert "s3cret" not in str(error.value) and "me:***@" in str(error.value)
    assert safe_url("postgresql://u:p@h/d") == "postgresql://u:***@h/d"


def test_users_files(tmp_path):
    (tmp_path / "ids.txt").write_text("# users\n3\n1\n\n3\n-5\n")
    assert batch_users.read_user_ids(tmp_path / "ids.txt").tolist() == [3, 1, 3, -5]
    assert batch_users.unique_in_order([3, 1, 3, -5]).tolist() == [3, 1, -5]
    pd.DataFrame({"user_id": [4, 2], "x": ["a", "b"]}).to_csv(tmp_path / "u.csv", index=False)
    pd.DataFrame({"user_id": [4, 2]}).to_csv(tmp_path / "u.tsv", sep="\t", index=False)
    pd.DataFrame({"user_id": [9, 8]}).to_parquet(tmp_path / "u.parquet")
    assert batch_users.read_user_ids(tmp_path / "u.csv").tolist() == [4, 2]
    assert batch_users.read_user_ids(tmp_path / "u.tsv").tolist() == [4, 2]
    assert batch_users.read_user_ids(tmp_path / "u.parquet").tolist() == [9, 8]
    (tmp_path / "bad.txt").write_text("1\ntwo\n")
    with pytest.raises(ValueError, match=r"bad.txt, line 2: 'two' is not an integer"):
        batch_users.read_user_ids(tmp_path / "bad.txt")
    pd.DataFrame({"id": [1]}).to_csv(tmp_path / "nocol.csv", index=False)
    with pytest.raises(ValueError, match="no user_id column"):
        batch_users.read_user_ids(tmp_path / "nocol.csv")
    with pytest.raises(FileNotFoundError, match="users file not found"):
        batch_users.read_user_ids(tmp_path / "missing.txt")


def test_model_version_follows_content(tmp_path):
    from core.artifacts import Artifacts
    from core.config import load_config

    config = load_config(base={}, overrides={"workdir": str(tmp_path)}, environ={})
    artifacts = Artifacts.of(config)
    for path in (artifacts.query_tower, artifacts.ranking_model, artifacts.user_workflow, artifacts.item_workflow):
        path.mkdir(parents=True)
        (path / "weights.bin").write_bytes(b"abc")
    for path in (artifacts.item_vectors, artifacts.ordering, artifacts.popular_items, artifacts.features):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    first = batch.model_version(config)
    assert batch.model_version(config) == first and len(first) == 16
    (artifacts.ranking_model / "weights.bin").write_bytes(b"abd")
    assert batch.model_version(config) != first


@pytest.mark.parametrize("argv, message", [
    (["batch", "--db", "xyz"], "malformed database URL 'xyz'"),
    (["batch", "--db", "sqlite:///{tmp}/no/such/dir/recs.db"], "cannot connect to the database"),
    (["batch", "--db", "postgresql://u:pw@127.0.0.1:{port}/x"], "cannot connect to the database"),
    (["batch", "--db", "sqlite:///{tmp}/recs.db", "--resume", "20260101T000000Z-abcdef"],
     "--resume 20260101T000000Z-abcdef: no such run"),
    (["batch", "--db", "sqlite:///{tmp}/recs.db", "--users-file", "{tmp}/missing.txt"], "users file not found"),
    (["batch", "--db", "sqlite:///{tmp}/recs.db"], "no trained artifacts in"),
    (["batch", "--db", "sqlite:///{tmp}/recs.db", "--k", "0"], "--k 0: must be between 1"),
    (["batch", "--db", "sqlite:///{tmp}/recs.db", "--keep-runs", "0"], "--keep-runs must be >= 1"),
    (["batch", "--db", "sqlite:///{tmp}/recs.db", "--workers", "0"], "--workers must be >= 1"),
])
def test_batch_mistakes_are_reported_in_one_line(argv, message, tmp_path, capsys):
    from recsys.runtime.servers import free_port

    argv = [a.replace("{tmp}", str(tmp_path)).replace("{port}", str(free_port())) for a in argv]
    code = main(argv + ["--workdir", str(tmp_path / "empty"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and message in err and "Traceback" not in err and "pw@" not in err, err
    assert err.startswith("recsys batch: ") and err.count("\n") == 1, err
