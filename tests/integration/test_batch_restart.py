"""`recsys batch` while the serving Triton crashes and is restarted: the batch job runs the
exported cascade in its own process (not through Triton), so the run completes, readers see the
previous complete run until then, every user is stored once with ranks 1..K, and the lists
equal what the restarted Triton serves."""
from __future__ import annotations

import os
import signal
import sqlite3
import time

import numpy as np
import pandas as pd
import pytest

from core.artifacts import Artifacts
from recsys.jobs.batch import BatchOptions, run_batch
from recsys.jobs.batch_store import COMPLETE, RUNNING, BatchStore
from support import batch_held_after, settled

pytestmark = pytest.mark.integration


def test_triton_crash_and_restart_under_a_running_batch(serving_stack, clients, tmp_path):
    config, _, triton = serving_stack
    users = np.sort(pd.read_parquet(Artifacts.of(config).users)["user_id"].to_numpy())[:96].tolist()
    url = f"sqlite:///{tmp_path / 'recs.db'}"
    k = config.serving.top_k
    previous = run_batch(config, BatchOptions(k=k, db_url=url, user_ids=users, chunk_size=32, progress=False))
    options = BatchOptions(k=k, db_url=url, user_ids=users, chunk_size=32, progress=False)
    # held once the first chunk is committed: Triton goes down now
    with batch_held_after(config, options, users_done=32) as (outcome, release):
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
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
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
    assert settled(clients["grpc"], users, 32) == lists
