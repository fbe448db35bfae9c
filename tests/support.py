"""Helpers the test modules share (import as ``from support import ...``; pytest puts this
directory on ``sys.path`` for ``tests/conftest.py``)."""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie is gone for our purposes)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def apt_install(package: str) -> None:
    """Install a Debian package the test needs (skips when apt-get is not there)."""
    if shutil.which("apt-get") is None:
        pytest.skip(f"{package} is not installed and apt-get is unavailable to install it")
    install = ["apt-get", "install", "-y", "-q", package]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        done = subprocess.run(install, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def served(client, users, batch: int, details: bool = False) -> dict:
    """user -> the served item ids (with ``details``: ``(item ids, scores rounded to 5
    places, fallback, source)``), asking ``batch`` users per request."""
    users = np.asarray(users)
    out = {}
    for start in range(0, len(users), batch):
        answer = client.recommend(users[start:start + batch])
        for row, user in enumerate(users[start:start + batch].tolist()):
            items = answer["item_ids"][row].tolist()
            out[user] = ((items, np.round(answer["scores"][row], 5).tolist(), bool(answer["fallback"][row]),
                          answer["source"][row]) if details else items)
    return out


def settled(client, users, batch: int, details: bool = False, timeout_s: float = 90.0) -> dict:
    """The served answers (:func:`served`) once two passes agree. Milvus 2.3's HNSW answers the
    first search of a query vector after a load slightly differently from every repeat of it
    (measured on the trained vectors: 3-10 of 300 queries differ between the first and second
    search, none after; not a matter of time or of a warm-up with other vectors), which shifts
    the per-user standardized scores."""
    previous, deadline = None, time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        current = served(client, users, batch, details)
        if current == previous:
            return current
        previous = current
        time.sleep(1)
    raise AssertionError(f"the answers of {getattr(client, 'endpoints', client)} did not settle "
                         f"within {timeout_s:.0f}s")


def stored_lists(url: str, run_id: str) -> dict[int, tuple[list, list, list]]:
    """user -> (item ids by rank, scores, sources) of one batch run; ranks checked to be 1..K."""
    from recsys.jobs.batch_store import BatchStore

    store = BatchStore(url)
    out: dict[int, tuple[list, list, list]] = {}
    try:
        for user, rank, item, score, source in store.run_rows(run_id):
            items, scores, sources = out.setdefault(user, ([], [], []))
            assert rank == len(items) + 1, f"user {user}: rank {rank} after {len(items)} ranks"
            items.append(item)
            scores.append(score)
            sources.append(source)
    finally:
        store.close()
    return out


@contextmanager
def batch_held_after(config, options, users_done: int, wait_s: float = 300.0):
    """Run a batch (``recsys.jobs.batch.run_batch``) in a thread, held right after the chunk
    that brings it to ``users_done`` users is committed; the body runs while it is held
    (``release.set()`` lets it go on early). On exit it is let go and joined; ``outcome`` then
    holds its ``"result"`` or the ``"error"`` it raised."""
    from recsys.jobs.batch import run_batch

    held, release, outcome = threading.Event(), threading.Event(), {}

    def after_chunk(run_id, done, total):
        if done == users_done:
            held.set()
            release.wait(wait_s)

    def job():
        try:
            outcome["result"] = run_batch(config, options, on_chunk=after_chunk)
        except BaseException as exc:  # reported by the caller's assertions
            outcome["error"] = exc
            held.set()

    thread = threading.Thread(target=job)
    thread.start()
    try:
        assert held.wait(wait_s) and "error" not in outcome, outcome.get("error")
        yield outcome, release
    finally:
        release.set()
        thread.join(2 * wait_s)
