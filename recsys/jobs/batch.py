"""``recsys batch``: top-K recommendations for every user, written to a relational database.

It runs exactly the served cascade: the serving ensemble is exported with ``top_k = K`` into a
directory of the run (:func:`ensemble.export.write_ensemble`, the mechanism the offline
evaluation uses) and run in-process by :class:`ensemble.runner.Recommender`, the code Triton
runs, in chunks of users. Seen items are excluded and unknown users get the most popular items,
as online; each user's ``source`` (personalized / features / popular) is stored.

The tables, the view readers use and the run lifecycle are in :mod:`recsys.jobs.batch_store`. A
chunk is one transaction; a run becomes visible to readers when it completes; a run that was
killed or failed is continued with ``--resume RUN_ID`` (users already written are skipped).
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import socket
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from core.config import Config
from core.contract import CATEGORY_FEATURE
from ensemble.export import write_ensemble
from ensemble.graph import feast_features
from operators.filters import FeatureKinds, FilterError, compile_filter
from recsys.jobs import releases, stack
from recsys.jobs.batch_backends import cascade
from recsys.jobs.batch_options import DEFAULT_CHUNK, DEFAULT_K, BatchOptions, BatchResult
from recsys.jobs.batch_store import COMPLETE, RUNNING, BatchStore, safe_url
from recsys.jobs.batch_users import resolve_users, training_users


# -- model version -------------------------------------------------------------------------
def model_version(config: Config) -> str:
    """A content hash of everything the cascade is built from (models, workflows, popular
    items, feature list) and the serving settings that change answers (retrieval depth, seen
    exclusion). Live catalogue edits in Milvus or Feast are not part of it."""
    artifacts = releases.serving_artifacts(config)
    digest = hashlib.sha256()
    for root in (artifacts.query_tower, artifacts.ranking_model, artifacts.item_vectors, artifacts.ordering,
                 artifacts.user_workflow, artifacts.item_workflow, artifacts.popular_items, artifacts.features):
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in files:
            digest.update(str(path.relative_to(artifacts.root)).encode() + b"\0")
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    digest.update(json.dumps({"retrieval_k": config.serving.retrieval_k,
                              "exclude_seen": config.serving.exclude_seen}).encode())
    return digest.hexdigest()[:16]


# -- the job -------------------------------------------------------------------------------
def new_run_id() -> str:
    """A sortable, unique run id: UTC start time + random suffix."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run_batch(config: Config, options: BatchOptions,
              on_chunk: Callable[[str, int, int], None] | None = None) -> BatchResult:
    """Compute and store the top-``k`` of every requested user with the served cascade, in
    chunks; flip the run to complete and prune old runs at the end. ``on_chunk(run_id,
    users_done, users_total)`` is called after each committed chunk. A failure marks the run
    failed (resumable) and re-raises."""
    setup_started = time.perf_counter()
    if options.keep_runs < 1:
        raise ValueError(f"--keep-runs must be >= 1, got {options.keep_runs}")
    if options.chunk_size is not None and options.chunk_size < 1:
        raise ValueError(f"--chunk-size must be >= 1, got {options.chunk_size}")
    if options.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {options.workers}")
    if options.workers > 1 and config.dask_scheduler:
        raise ValueError("--workers and --dask-scheduler: choose one (the Dask workers run the cascade)")
    store = BatchStore(options.db_url)
    try:
        store.create_schema()
        if options.resume:
            run = _resumable_run(store, options)
            k, parameters = int(run["k"]), dict(run["parameters"])
            users, spec = _run_users(config, parameters)
            item_filter = parameters.get("filter")
        else:
            k = DEFAULT_K if options.k is None else int(options.k)
            if not 1 <= k <= config.serving.retrieval_k:
                raise ValueError(f"--k {k}: must be between 1 and serving.retrieval_k "
                                 f"({config.serving.retrieval_k}), the candidates the cascade ranks")
            users, spec = resolve_users(config, options.user_ids, options.users_file)
            item_filter = _checked_filter(config, options.filter, options.filter_values)
        stack.require_artifacts(config)
        artifacts = releases.serving_artifacts(config)  # the serving release's models, as online
        release = releases.serving_release(config)
        version = model_version(config)
        chunk_size = int(options.chunk_size or (parameters.get("chunk_size") if options.resume else 0)
                         or DEFAULT_CHUNK)
        if options.resume:
            if run["model_version"] != version:
                raise ValueError(f"run {options.resume} was computed with model version {run['model_version']}, "
                                 f"the artifacts are now {version}: start a new run instead of resuming")
            run_id = options.resume
            store.reopen_run(run_id, worker_name())
        else:
            run_id = new_run_id()
            parameters = {**spec, "k": k, "chunk_size": chunk_size, "keep_runs": options.keep_runs,
                          "retrieval_k": config.serving.retrieval_k,
                          "exclude_seen": config.serving.exclude_seen,
                          "milvus_collection": config.milvus.collection, "workdir": str(config.workdir),
                          "release": release,
                          "filter": item_filter}
            store.start_run(run_id, k, parameters, version, len(users), worker_name())
        known = training_users(config)
        unknown = int((~np.isin(users, known)).sum())
        batch_dir = config.workdir / "batch" / run_id
        try:
            with stack.milvus_for_job(config):
                serving = replace(config.serving, top_k=k, max_batch_users=max(chunk_size, 1))
                write_ensemble(replace(config, serving=serving), artifacts, batch_dir / "ensemble")
                todo = _todo(store, run_id, users)
                with cascade(batch_dir / "ensemble", min(options.workers, max(len(todo), 1)),
                              item_filter, config.dask_scheduler) as answers:
                    setup_s = time.perf_counter() - setup_started
                    computed, compute_s, stages = _compute(store, answers, run_id, users, todo, chunk_size,
                                                           options, on_chunk)
            users_per_second = computed / compute_s if compute_s > 0 else 0.0
            store.complete_run(run_id, round(users_per_second, 2))
        except BaseException as exc:
            message = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"
            try:
                store.fail_run(run_id, message)
            except Exception:  # the database itself may be what failed; the run stays 'running'
                pass
            raise
        finally:
            shutil.rmtree(batch_dir, ignore_errors=True)
        pruned = store.prune(options.keep_runs)
        final = store.get_run(run_id)
        return BatchResult(run_id=run_id, k=k, users_total=len(users), users_computed=computed,
                           rows=int(final["rows"]), sources=store.source_counts(run_id),
                           unknown_users=unknown, setup_s=setup_s, compute_s=compute_s,
                           users_per_second=users_per_second, stage_seconds=stages, pruned=pruned,
                           model_version=version, release=release)
    finally:
        store.close()


def _todo(store, run_id: str, users: np.ndarray) -> np.ndarray:
    """The run's users not stored yet (all of them for a new run), in order."""
    done = store.done_users(run_id)
    if not done:
        return users
    return users[~np.isin(users, np.fromiter(done, dtype=np.int64, count=len(done)))]


def _compute(store, answers, run_id: str, users: np.ndarray, todo: np.ndarray, chunk_size: int,
             options: BatchOptions, on_chunk) -> tuple[int, float, dict[str, float]]:
    """The chunk loop: the users not yet stored, through the cascade (``answers``, see
    :func:`recsys.jobs.batch_backends.cascade`), into the database (one transaction per chunk). Returns (users computed,
    seconds, seconds per stage summed over chunks and workers)."""
    stages: dict[str, float] = defaultdict(float)
    chunks = [todo[start:start + chunk_size] for start in range(0, len(todo), chunk_size)]
    bar = tqdm(total=len(users), initial=len(users) - len(todo), unit="user", file=sys.stderr,
               disable=not options.progress, mininterval=0.5, dynamic_ncols=True, desc=run_id)
    done = len(users) - len(todo)
    began = time.perf_counter()
    paused = 0.0
    try:
        for chunk, answer, timings, failures in answers(chunks):
            for stage, seconds in timings.items():
                stages[stage] += seconds
            if failures:
                raise RuntimeError(
                    f"the Feast online store could not be read for {failures} ids; this chunk was "
                    f"not written (the run would store degraded lists): repair it (`recsys features`) "
                    f"and continue with --resume {run_id}")
            written = time.perf_counter()
            store.write_chunk(run_id, chunk, answer["item_ids"], answer["scores"], answer["source"])
            stages["(database write)"] += time.perf_counter() - written
            done += len(chunk)
            bar.update(len(chunk))
            if on_chunk is not None:
                on_chunk(run_id, done, len(users))
            if options.pause_s > 0:
                time.sleep(options.pause_s)
                paused += options.pause_s
    finally:
        bar.close()
    return len(todo), time.perf_counter() - began - paused, dict(stages)


def _checked_filter(config: Config, expression: str | None, values) -> dict | None:
    """The run's filter as stored in its parameters (``{"expression", "values"}``), after
    checking it against the catalogue's item features, or ``None``."""
    if expression is None:
        if values is not None:
            raise ValueError("--filter-values without --filter")
        return None
    item_features = feast_features(config)["item_features"]
    try:
        values = json.loads(values) if isinstance(values, str) else values
        compile_filter(expression, values, FeatureKinds.from_feast(item_features, CATEGORY_FEATURE))
    except (FilterError, ValueError) as exc:
        raise ValueError(f"--filter: {exc}") from None
    return {"expression": expression, "values": values or {}}


def _resumable_run(store, options: BatchOptions) -> dict:
    run = store.get_run(options.resume)
    if run is None:
        recent = [r["run_id"] for r in store.list_runs()[:5]]
        raise ValueError(f"--resume {options.resume}: no such run in {safe_url(options.db_url)}"
                         + (f" (recent runs: {', '.join(recent)})" if recent else " (it has no runs)"))
    if run["status"] == COMPLETE:
        raise ValueError(f"--resume {options.resume}: that run is already complete")
    if run["status"] == RUNNING and _worker_alive(run.get("worker") or ""):
        raise ValueError(f"--resume {options.resume}: that run is still running ({run['worker']})")
    if options.k is not None and int(options.k) != int(run["k"]):
        raise ValueError(f"--resume {options.resume}: that run has k = {run['k']}; drop --k")
    if options.user_ids is not None or options.users_file:
        raise ValueError(f"--resume {options.resume} continues that run's own users; drop --users / --users-file")
    if options.filter is not None or options.filter_values is not None:
        raise ValueError(f"--resume {options.resume} continues with that run's own filter; drop --filter")
    return run


def _run_users(config: Config, parameters: dict) -> tuple[np.ndarray, dict]:
    """The users of a run being resumed, checked against the hash stored at its start."""
    how = parameters.get("users")
    if how == "list":
        users, spec = resolve_users(config, parameters["user_ids"])
    elif how == "file":
        users, spec = resolve_users(config, users_file=parameters["users_file"])
    else:
        users, spec = resolve_users(config)
    if spec["users_sha256"] != parameters.get("users_sha256"):
        source = parameters.get("users_file") or "the training users"
        raise ValueError(f"the users of this run changed since it started ({source}): start a new run")
    return users, spec


def _worker_alive(worker: str) -> bool:
    """Whether ``host:pid`` is a live process on this host (other than this one)."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (OSError, IndexError):
        return True


def render(result: BatchResult, db: str) -> str:
    """The summary ``recsys batch`` prints."""
    lines = [f"run {result.run_id} complete: {result.users_total:,} users x k={result.k} -> "
             f"{result.rows:,} rows in {db} (model version {result.model_version}"
             + (f", release {result.release}" if result.release else "") + ")"]
    lines.append("  answered by: " + ", ".join(f"{source} {count:,}" for source, count
                                              in sorted(result.sources.items(), key=lambda kv: -kv[1])))
    if result.unknown_users:
        lines.append(f"  {result.unknown_users:,} requested ids are not in the training data: answered "
                     f"by the fallback (source recorded)")
    lines.append(f"  {result.users_computed:,} users computed in {result.compute_s:.1f} s: "
                 f"{result.users_per_second:,.0f} users/s (setup {result.setup_s:.1f} s)")
    if result.stage_seconds:
        lines.append("  seconds per stage: " + ", ".join(
            f"{stage} {seconds:.2f}" for stage, seconds in sorted(result.stage_seconds.items(),
                                                                  key=lambda kv: -kv[1])))
    if result.pruned:
        lines.append(f"  deleted {len(result.pruned)} older run(s): {', '.join(result.pruned)}")
    lines.append("  read: SELECT item_id, score, source FROM current_recommendations "
                 "WHERE user_id = ? ORDER BY rank")
    return "\n".join(lines)
