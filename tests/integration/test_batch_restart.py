"""`recsys batch` while the serving Triton crashes and is restarted: the batch job runs the
exported cascade in its own process (not through Triton), so the run completes, readers see the
previous complete run until then, every user is stored once with ranks 1..K, and the lists
equal what the restarted Triton serves."""
from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time

import numpy as np
import pandas as pd
import pytest

from core.artifacts import Artifacts
from recsys.jobs.batch import BatchOptions, run_batch
from recsys.jobs.batch_store import COMPLETE, RUNNING, BatchStore

pytestmark = pytest.mark.integration


def _served(client, users: list[int], batch: int) -> dict[int, list[int]]:
    out = {}
    for start in range(0, len(users), batch):
        answer = client.recommend(users[start:start + batch])
        for row, user in enumerate(users[start:start + batch]):
            out[user] = answer["item_ids"][row].tolist()
    return out


def _settled(client, users: list[int], batch: int, timeout_s: float = 90.0) -> dict[int, list[int]]:
    """Answers once two passes agree (Milvus' first search of a query vector can differ from
    its repeats; see tests/integration/test_batch.py)."""
    previous, deadline = None, time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        current = _served(client, users, batch)
        if current == previous:
            return current
        previous = current
    raise AssertionError(f"the served answers did not settle within {timeout_s:.0f}s")


def test_triton_crash_and_restart_under_a_running_batch(serving_stack, clients, tmp_path):
    config, _, triton = serving_stack
    users = np.sort(pd.read_parquet(Artifacts.of(config).users)["user_id"].to_numpy())[:96].tolist()
    url = f"sqlite:///{tmp_path / 'recs.db'}"
    k = config.serving.top_k
    previous = run_batch(config, BatchOptions(k=k, db_url=url, user_ids=users, chunk_size=32, progress=False))
    paused, release, results, errors = threading.Event(), threading.Event(), [], []

    def after_chunk(run_id, done, total):
        if done == 32:  # the first chunk is committed: Triton goes down now
            paused.set()
            release.wait(300)

    def job():
        try:
            results.append(run_batch(config, BatchOptions(k=k, db_url=url, user_ids=users, chunk_size=32,
                                                          progress=False), on_chunk=after_chunk))
        except BaseException as exc:  # reported by the assertions below
            errors.append(exc)
            paused.set()

    thread = threading.Thread(target=job)
    thread.start()
    try:
        assert paused.wait(300) and not errors, errors
        pid = triton.pid
        os.killpg(pid, signal.SIGKILL)  # a crash: tritonserver and its Python backend stubs
        deadline = time.monotonic() + 30
        while triton.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not triton.alive() and not triton.ready()
        with sqlite3.connect(tmp_path / "recs.db", timeout=5) as reader:
            in_view = reader.execute("SELECT DISTINCT run_id FROM current_recommendations").fetchall()
        assert in_view == [(previous.run_id,)]  # the unfinished run is invisible
        release.set()  # the job goes on while Triton is down ...
        triton.stop()  # ... and while it restarts (reaps the crashed process)
        triton.start()
    finally:
        release.set()
        thread.join(600)
    assert not errors, errors
    result = results[0]
    store = BatchStore(url)
    run = store.get_run(result.run_id)
    assert run["status"] == COMPLETE and run["users_done"] == run["users_total"] == len(users)
    assert store.current_run()["run_id"] == result.run_id
    rows = store.run_rows(result.run_id)
    assert len(rows) == len(users) * k
    assert len({(user, rank) for user, rank, *_ in rows}) == len(rows)  # no duplicates
    lists: dict[int, list[int]] = {}
    for user, rank, item, _, _ in sorted(rows):
        lists.setdefault(user, []).append(item)
        assert rank == len(lists[user])  # no holes
    assert set(lists) == set(users)
    assert RUNNING not in {r["status"] for r in store.list_runs()}
    store.close()
    # the restarted Triton serves what the batch stored
    assert _settled(clients["grpc"], users, 32) == lists
