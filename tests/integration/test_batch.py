"""`recsys batch` against the real stack: the lists equal what the served `recommender`
answers over Triton, every user once with ranks 1..K, readers see the previous complete run
while a run is in progress, a killed run resumes without duplicates or holes, and PostgreSQL
(a real server from Debian's packages, started here) stores the same lists as SQLite."""
from __future__ import annotations

import glob
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.artifacts import Artifacts
from recsys.cli import main
from recsys.jobs.batch import BatchOptions, render, run_batch
from recsys.jobs.batch_store import COMPLETE, RUNNING, BatchStore
from recsys.runtime.servers import free_port
from support import alive, apt_install, batch_held_after, settled, stored_lists

pytestmark = pytest.mark.integration

UNKNOWN = [123_456_789, -5]


@pytest.fixture(scope="module")
def first_run(serving_stack, clients, tmp_path_factory):
    """A complete batch over every training user with the served K, in SQLite."""
    config = serving_stack[0]
    users = np.sort(pd.read_parquet(Artifacts.of(config).users)["user_id"].to_numpy())
    settled(clients["grpc"], users, config.serving.max_batch_users, details=True, timeout_s=60)
    path = tmp_path_factory.mktemp("batch") / "recs.db"
    result = run_batch(config, BatchOptions(k=config.serving.top_k, db_url=f"sqlite:///{path}",
                                            chunk_size=64, progress=False))
    return config, path, result


def test_batch_lists_equal_the_served_answers(first_run, clients):
    config, path, result = first_run
    lists = stored_lists(f"sqlite:///{path}", result.run_id)
    users = np.array(sorted(lists))
    client = clients["grpc"]
    for start in range(0, len(users), config.serving.max_batch_users):
        part = users[start:start + config.serving.max_batch_users]
        served = client.recommend(part)
        for row, user in enumerate(part.tolist()):
            items, scores, sources = lists[user]
            assert items == served["item_ids"][row].tolist(), user
            assert set(sources) == {served["source"][row]}, user
            np.testing.assert_allclose(scores, served["scores"][row], rtol=1e-6, atol=1e-6)


def test_every_user_answered_once_with_ranks_1_to_k(first_run, catalogue, cold_users):
    config, path, result = first_run
    k = config.serving.top_k
    training_users = set(pd.read_parquet(Artifacts.of(config).users)["user_id"].tolist())
    _, items, _ = catalogue
    lists = stored_lists(f"sqlite:///{path}", result.run_id)
    assert set(lists) == training_users
    for user, (ranked, _, sources) in lists.items():
        assert len(ranked) == k and len(set(ranked)) == k and set(ranked) <= items, user
    assert {lists[u][2][0] for u in cold_users} == {"features"}
    with sqlite3.connect(path) as db:
        status, users_total, users_done, rows, speed, version, finished = db.execute(
            "SELECT status, users_total, users_done, \"rows\", users_per_second, model_version, finished_at "
            "FROM recommendation_runs WHERE run_id = ?", (result.run_id,)).fetchone()
        duplicates = db.execute("SELECT COUNT(*) FROM (SELECT user_id, rank FROM recommendations "
                                "GROUP BY run_id, user_id, rank HAVING COUNT(*) > 1)").fetchone()[0]
    assert (status, users_total, users_done, rows) == (COMPLETE, len(training_users), len(training_users),
                                                       len(training_users) * k)
    assert speed > 0 and version == result.model_version and finished and duplicates == 0
    assert result.users_per_second > 0 and result.sources["personalized"] > 0
    print(f"\nbatch over {len(training_users)} users: {result.users_per_second:.0f} users/s, "
          f"setup {result.setup_s:.1f}s, stages {({s: round(v, 3) for s, v in result.stage_seconds.items()})}")


def test_readers_see_the_previous_run_until_the_new_one_completes(first_run, tmp_path, catalogue):
    config, path, first = first_run
    db_path = tmp_path / "recs.db"
    with sqlite3.connect(path) as source, sqlite3.connect(db_path) as copy:
        source.backup(copy)  # a database whose current run is the first one
    known = sorted(stored_lists(f"sqlite:///{path}", first.run_id))
    users = known[:40] + UNKNOWN
    options = BatchOptions(k=config.serving.top_k, db_url=f"sqlite:///{db_path}", user_ids=users, chunk_size=8,
                           keep_runs=1, progress=False)
    with batch_held_after(config, options, users_done=8) as (outcome, _):
        reader = sqlite3.connect(db_path, timeout=5)
        in_view = reader.execute("SELECT DISTINCT run_id FROM current_recommendations").fetchall()
        new_status, new_done = reader.execute(
            "SELECT status, users_done FROM recommendation_runs WHERE run_id != ?", (first.run_id,)).fetchone()
        first_user = reader.execute("SELECT item_id FROM current_recommendations WHERE user_id = ? "
                                    "ORDER BY rank", (known[0],)).fetchall()
        reader.close()
        assert in_view == [(first.run_id,)]
        assert (new_status, new_done) == (RUNNING, 8)
        assert [i for (i,) in first_user] == stored_lists(f"sqlite:///{path}", first.run_id)[known[0]][0]
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    store = BatchStore(f"sqlite:///{db_path}")
    assert store.current_run()["run_id"] == result.run_id
    assert [r["run_id"] for r in store.list_runs()] == [result.run_id]  # keep_runs=1: the first is gone
    lists = stored_lists(f"sqlite:///{db_path}", result.run_id)
    assert set(lists) == set(users)
    _, _, popular = catalogue
    for user in UNKNOWN:  # answered by the fallback, recorded as such
        assert set(lists[user][2]) == {"popular"} and lists[user][0] == popular[:len(lists[user][0])].tolist()
    assert result.unknown_users == 2 and result.sources["popular"] == 2
    assert "2 requested ids are not in the training data" in render(result, "db")
    assert store.current_recommendations(UNKNOWN[1])[0]["source"] == "popular"
    store.close()


def _write_config(config, folder: Path) -> Path:
    path = folder / "recsys.toml"
    path.write_text(f"""
workdir = "{config.workdir}"
feature_repo = "{config.feature_repo}"
[milvus]
port = {config.milvus.port}
collection = "{config.milvus.collection}"
auth = {str(config.milvus.auth).lower()}
token_file = "{config.milvus.token_file}"
[serving]
top_k = {config.serving.top_k}
retrieval_k = {config.serving.retrieval_k}
max_batch_users = {config.serving.max_batch_users}
""")
    return path


def test_a_killed_run_resumes_without_duplicates_or_holes(first_run, tmp_path, capsys):
    config, path, first = first_run
    toml = _write_config(config, tmp_path)
    url = f"sqlite:///{tmp_path / 'killed.db'}"
    recsys = str(Path(sys.executable).parent / "recsys")
    process = subprocess.Popen([recsys, "--config", str(toml), "batch", "--db", url, "--k",
                                str(config.serving.top_k), "--chunk-size", "32", "--pause", "3",
                                "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    run = None
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            if (tmp_path / "killed.db").exists():
                with sqlite3.connect(tmp_path / "killed.db", timeout=5) as db:
                    try:
                        run = db.execute("SELECT run_id, users_done FROM recommendation_runs").fetchone()
                    except sqlite3.OperationalError:  # tables not created yet
                        run = None
                if run and run[1] > 0:
                    break
            time.sleep(0.1)
        assert process.poll() is None, process.communicate()[0]
        os.kill(process.pid, signal.SIGKILL)  # after the first chunk committed
        process.wait(60)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(60)
    assert run and run[1] > 0, run
    run_id = run[0]
    store = BatchStore(url)
    killed = store.get_run(run_id)
    stored = store.run_rows(run_id)
    assert killed["status"] == RUNNING and 0 < killed["users_done"] < killed["users_total"]
    assert killed["users_done"] % 32 == 0 and len(stored) == killed["users_done"] * config.serving.top_k
    assert store.current_run() is None  # readers never see the unfinished run

    capsys.readouterr()
    assert main(["--config", str(toml), "batch", "--resume", run_id, "--db", url, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"run {run_id} complete" in out, out
    resumed = store.get_run(run_id)
    assert resumed["status"] == COMPLETE and resumed["users_done"] == resumed["users_total"]
    assert store.current_run()["run_id"] == run_id
    before = stored_lists(f"sqlite:///{path}", first.run_id)
    after = stored_lists(url, run_id)  # ranks 1..K checked inside
    assert set(after) == set(before) and resumed["rows"] == len(before) * config.serving.top_k
    assert all(after[u][0] == before[u][0] and after[u][2] == before[u][2] for u in before)
    assert not (config.workdir / "batch" / run_id).exists()  # the run's export is cleaned up
    store.close()


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="module")
def postgres():
    """A real PostgreSQL server (Debian's package, installed if missing) on a free loopback
    port, its data and socket in a temporary directory, password authentication; stopped by
    PID at the end."""
    import secrets

    bindir = _pg_bin()
    if bindir is None:
        apt_install("postgresql")
        bindir = _pg_bin()
        assert bindir is not None, "apt-get installed postgresql but no pg_ctl under /usr/lib/postgresql"
    root = Path(tempfile.mkdtemp(prefix="recsys-pg-"))  # not under pytest's root-only tmp
    shutil.chown(root, "postgres", "postgres")
    password = secrets.token_urlsafe(12)
    (root / "pwfile").write_text(password + "\n")
    shutil.chown(root / "pwfile", "postgres", "postgres")
    as_postgres = ["runuser", "-u", "postgres", "--"]
    subprocess.run(as_postgres + [str(bindir / "initdb"), "-D", str(root / "data"), "-U", "postgres",
                                  "--pwfile", str(root / "pwfile"), "--auth=scram-sha-256", "-E", "UTF8",
                                  "--no-sync"], check=True, capture_output=True)
    port = free_port()
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off"
    subprocess.run(as_postgres + [str(bindir / "pg_ctl"), "-D", str(root / "data"), "-o", options,
                                  "-l", str(root / "server.log"), "-w", "-t", "60", "start"],
                   check=True, capture_output=True)
    pid = int((root / "data" / "postmaster.pid").read_text().split()[0])
    try:
        import psycopg2

        admin = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", password=password,
                                 dbname="postgres")
        admin.autocommit = True
        admin.cursor().execute("CREATE DATABASE recs")
        admin.close()
        yield f"postgresql://postgres:{password}@127.0.0.1:{port}/recs"
    finally:
        os.kill(pid, signal.SIGINT)  # fast shutdown
        deadline = time.monotonic() + 60
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(pid), f"PostgreSQL (pid {pid}) did not stop"
        shutil.rmtree(root, ignore_errors=True)


def test_postgresql_with_two_workers_stores_the_same_lists_as_sqlite(first_run, postgres, tmp_path, capsys):
    config, path, first = first_run
    # two worker processes (each loads the exported cascade) and a chunk size that leaves a
    # short last chunk: the same lists as the single-process run
    result = run_batch(config, BatchOptions(k=config.serving.top_k, db_url=postgres, chunk_size=50,
                                            progress=False, workers=2))
    on_pg = stored_lists(postgres, result.run_id)
    on_sqlite = stored_lists(f"sqlite:///{path}", first.run_id)
    assert set(on_pg) == set(on_sqlite)
    for user, (items, scores, sources) in on_sqlite.items():
        assert on_pg[user][0] == items and on_pg[user][2] == sources, user
        np.testing.assert_allclose(on_pg[user][1], scores, rtol=1e-6)
    store = BatchStore(postgres)
    run = store.get_run(result.run_id)
    assert run["status"] == COMPLETE and run["parameters"]["users"] == "all" and result.users_computed == len(on_sqlite)
    user = next(iter(on_sqlite))
    assert [r["item_id"] for r in store.current_recommendations(user)] == on_sqlite[user][0]
    store.close()
    # the command line reaches it too (a user list; the password never printed)
    capsys.readouterr()
    assert main(["--config", str(_write_config(config, tmp_path)), "batch", "--db", postgres,
                 "--users", str(user), str(UNKNOWN[0]), "--k", "5", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "2 users x k=5 -> 10 rows" in out and postgres.split(":")[2].split("@")[0] not in out, out
