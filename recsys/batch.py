"""``recsys batch``: top-K recommendations for every user, written to a relational database.

It runs exactly the served cascade: the serving ensemble is exported with ``top_k = K`` into a
directory of the run (:func:`ensemble.export.write_ensemble`, the mechanism the offline
evaluation uses) and run in-process by :class:`ensemble.runner.Recommender`, the code Triton
runs, in chunks of users. Seen items are excluded and unknown users get the most popular items,
as online; each user's ``source`` (personalized / features / popular) is stored.

The tables, the view readers use and the run lifecycle are in :mod:`recsys.batch_store`. A
chunk is one transaction; a run becomes visible to readers when it completes; a run that was
killed or failed is continued with ``--resume RUN_ID`` (users already written are skipped).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from core.config import Config

DEFAULT_K = 50
DEFAULT_CHUNK = 1024
DEFAULT_DB = "sqlite:///recs.db"
DEFAULT_KEEP = 3


@dataclass
class BatchOptions:
    """What one batch run computes and where it writes (``recsys batch`` options)."""

    k: int | None = None  # None: DEFAULT_K, or the resumed run's k
    db_url: str = DEFAULT_DB
    user_ids: list[int] | None = None  # None and no users_file: every user of the training data
    users_file: str | None = None
    chunk_size: int | None = None  # None: DEFAULT_CHUNK, or the resumed run's chunk size
    resume: str | None = None
    keep_runs: int = DEFAULT_KEEP
    pause_s: float = 0.0  # sleep after each chunk (leaves CPU to a co-located server)
    progress: bool = True
    workers: int = 1  # processes running the cascade (each loads its own copy); 1: in this process
    filter: str | None = None  # a filter expression (operators.filters), as online
    filter_values: dict | str | None = None  # its $PARAMETER values (dict or JSON object)


@dataclass
class BatchResult:
    """What a finished run did (printed by ``recsys batch``)."""

    run_id: str
    k: int
    users_total: int
    users_computed: int  # by this process (a resumed run skips the users written before)
    rows: int  # rows of the whole run
    sources: dict[str, int]  # users per answering path, whole run
    unknown_users: int  # requested ids the training data does not know (answered by the fallback)
    setup_s: float  # export, model load, Milvus
    compute_s: float  # the chunk loop: cascade + database writes (pauses excluded)
    users_per_second: float
    stage_seconds: dict[str, float] = field(default_factory=dict)
    pruned: list[str] = field(default_factory=list)
    model_version: str = ""


# -- users -----------------------------------------------------------------------------------
def read_user_ids(path: str | os.PathLike) -> np.ndarray:
    """User ids from a file: parquet or CSV/TSV with a ``user_id`` column, or plain text with
    one id per line (blank lines and ``#`` comments ignored)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"users file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:
            raise ValueError(f"{path}: cannot read as parquet: {exc}") from None
        return _id_column(frame, path)
    lines = path.read_text().splitlines()
    content = [(number, line.strip()) for number, line in enumerate(lines, 1)
               if line.strip() and not line.strip().startswith("#")]
    if content and not _is_int(content[0][1]):  # a header: CSV/TSV with a user_id column
        sep = "\t" if suffix == ".tsv" or "\t" in content[0][1] else ","
        return _id_column(pd.read_csv(path, sep=sep, dtype=str), path)
    ids = []
    for number, text in content:
        if not _is_int(text):
            raise ValueError(f"{path}, line {number}: {text[:40]!r} is not an integer user id")
        ids.append(int(text))
    if not ids:
        raise ValueError(f"{path}: no user ids")
    return np.asarray(ids, dtype=np.int64)


def _is_int(text: str) -> bool:
    try:
        int(text)
        return True
    except ValueError:
        return False


def _id_column(frame, path: Path) -> np.ndarray:
    if "user_id" not in frame.columns:
        raise ValueError(f"{path}: no user_id column (columns: {', '.join(map(str, frame.columns))})")
    column = frame["user_id"]
    bad = [(row, value) for row, value in zip(range(len(column)), column.astype(str)) if not _is_int(value)]
    if bad:
        row, value = bad[0]
        raise ValueError(f"{path}, row {row + 1}, column 'user_id': {value[:40]!r} is not an integer "
                         f"({len(bad)} such rows)")
    if len(column) == 0:
        raise ValueError(f"{path}: no user ids")
    return column.astype(np.int64).to_numpy()


def unique_in_order(ids) -> np.ndarray:
    """``ids`` without repeats, first occurrence kept."""
    ids = np.asarray(ids, dtype=np.int64)
    _, first = np.unique(ids, return_index=True)
    return ids[np.sort(first)]


def resolve_users(config: Config, user_ids=None, users_file: str | None = None) -> tuple[np.ndarray, dict]:
    """The users of a run (in order, each once) and how they were chosen (for the run's
    ``parameters``): the given ids, a file, or every user of the training data."""
    if user_ids is not None and users_file:
        raise ValueError("give either --users or --users-file, not both")
    if user_ids is not None:
        users = unique_in_order(user_ids)
        spec = {"users": "list", "user_ids": users.tolist()}
    elif users_file:
        users = unique_in_order(read_user_ids(users_file))
        spec = {"users": "file", "users_file": str(Path(users_file).resolve())}
    else:
        users = training_users(config)
        spec = {"users": "all"}
    if len(users) == 0:
        raise ValueError("no users to recommend for")
    spec["users_sha256"] = hashlib.sha256(users.tobytes()).hexdigest()
    return users, spec


def training_users(config: Config) -> np.ndarray:
    """Every user of the training data (the users table of the artifacts), sorted."""
    import pandas as pd

    from recsys.stack import require_artifacts

    artifacts = require_artifacts(config)
    return np.sort(pd.read_parquet(artifacts.users, columns=["user_id"])["user_id"].to_numpy(np.int64))


# -- model version -------------------------------------------------------------------------
def model_version(config: Config) -> str:
    """A content hash of everything the cascade is built from (models, workflows, popular
    items, feature list) and the serving settings that change answers (retrieval depth, seen
    exclusion). Live catalogue edits in Milvus or Feast are not part of it."""
    from core.artifacts import Artifacts

    artifacts = Artifacts.of(config)
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
    from recsys.batch_store import BatchStore

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
        from recsys.stack import require_artifacts

        artifacts = require_artifacts(config)
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
                          "filter": item_filter}
            store.start_run(run_id, k, parameters, version, len(users), worker_name())
        known = training_users(config)
        unknown = int((~np.isin(users, known)).sum())
        batch_dir = config.workdir / "batch" / run_id
        try:
            with _milvus(config):
                from ensemble.export import write_ensemble

                serving = replace(config.serving, top_k=k, max_batch_users=max(chunk_size, 1))
                write_ensemble(replace(config, serving=serving), artifacts, batch_dir / "ensemble")
                todo = _todo(store, run_id, users)
                with _cascade(batch_dir / "ensemble", min(options.workers, max(len(todo), 1)),
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
                           model_version=version)
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
    :func:`_cascade`), into the database (one transaction per chunk). Returns (users computed,
    seconds, seconds per stage summed over chunks and workers)."""
    from tqdm import tqdm

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
    from ensemble.graph import feast_features
    from core.contract import CATEGORY_FEATURE
    from operators.filters import FeatureKinds, FilterError, compile_filter

    item_features = feast_features(config)["item_features"]
    try:
        values = json.loads(values) if isinstance(values, str) else values
        compile_filter(expression, values, FeatureKinds.from_feast(item_features, CATEGORY_FEATURE))
    except (FilterError, ValueError) as exc:
        raise ValueError(f"--filter: {exc}") from None
    return {"expression": expression, "values": values or {}}


def _recommend(recommender, users: np.ndarray, item_filter: dict | None = None) -> tuple[dict, dict[str, float], int]:
    """One chunk through the cascade: (answer, seconds per stage, ids Feast could not read)."""
    before = sum(recommender.feature_store_failures.values())
    began = time.perf_counter()
    compiled = recommender.compile_filter(item_filter["expression"], item_filter["values"]) if item_filter else None
    answer = recommender.recommend(users, compiled)
    elapsed = time.perf_counter() - began
    timings = recommender.last_timings
    timings["(graph overhead)"] = max(elapsed - sum(timings.values()), 0.0)
    return answer, timings, sum(recommender.feature_store_failures.values()) - before


@contextmanager
def _cascade(ensemble_dir: Path, workers: int, item_filter: dict | None = None, dask_scheduler: str = ""):
    """Yields ``answers(chunks)``, an iterator of ``(chunk, answer, timings, failures)``: the
    served cascade of ``ensemble_dir`` (:class:`ensemble.runner.Recommender`) in this process,
    in ``workers`` processes, or on the workers of a Dask cluster (each loads the ensemble
    once; chunks come back as they finish)."""
    if dask_scheduler:
        with _dask_cascade(ensemble_dir, item_filter, dask_scheduler) as answers:
            yield answers
        return
    if workers <= 1:
        from ensemble.runner import Recommender

        recommender = Recommender.load(ensemble_dir)

        def in_process(chunks):
            for chunk in chunks:
                yield (chunk, *_recommend(recommender, chunk, item_filter))

        yield in_process
        return
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # TensorFlow and gRPC do not survive fork
    tasks, results = context.Queue(), context.Queue()
    processes = [context.Process(target=_worker, args=(str(ensemble_dir), tasks, results, item_filter), daemon=True,
                                 name=f"recsys-batch-{n}") for n in range(workers)]
    for process in processes:
        process.start()
    try:
        for _ in processes:  # every worker loaded the cascade (or says why not)
            _expect(_receive(results, processes), "ready")

        def from_workers(chunks):
            for index, chunk in enumerate(chunks):
                tasks.put((index, chunk))
            for _ in range(len(chunks)):
                _, index, answer, timings, failures = _expect(_receive(results, processes), "ok")
                yield chunks[index], answer, timings, failures

        yield from_workers
    finally:
        for _ in processes:
            tasks.put(None)
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join(10)


@contextmanager
def _dask_cascade(ensemble_dir: Path, item_filter: dict | None, address: str):
    """The chunks as Dask tasks on the cluster at ``address``, at most two per worker in flight
    (results stream back to the database writer instead of piling up). Every worker must see
    ``ensemble_dir`` at the same path (a shared volume on a multi-machine cluster) and import
    this project (run ``dask worker`` from the project's environment)."""
    from distributed import Client, as_completed

    with Client(address, set_as_default=False) as client:
        workers = len(client.scheduler_info()["workers"])
        if workers == 0:
            raise RuntimeError(f"the Dask scheduler at {address} has no workers")

        def on_dask(chunks):
            pending = iter(enumerate(chunks))
            position = {}

            def submit(queue) -> None:
                for index, chunk in pending:
                    future = client.submit(_dask_recommend, str(ensemble_dir), chunk, item_filter, pure=False)
                    position[future.key] = index
                    queue.add(future)
                    return

            queue = as_completed(loop=client.loop)
            for _ in range(2 * workers):
                submit(queue)
            for future in queue:
                answer, timings, failures = future.result()  # a worker's error stops the run here
                index = position.pop(future.key)
                future.release()
                submit(queue)
                yield chunks[index], answer, timings, failures

        yield on_dask


def _dask_recommender(ensemble_dir: str):
    """The cascade of ``ensemble_dir`` on this Dask worker, loaded at its first use (the worker
    keeps the latest one only) with a lock, since a worker may run tasks on several threads."""
    import threading

    from distributed import get_worker

    worker = get_worker()
    cached = getattr(worker, "_recsys_cascade", None)
    if cached is None or cached[0] != ensemble_dir:
        from ensemble.runner import Recommender

        cached = (ensemble_dir, Recommender.load(Path(ensemble_dir)), threading.Lock())
        worker._recsys_cascade = cached
    return cached


def _dask_recommend(ensemble_dir: str, chunk: np.ndarray, item_filter: dict | None):
    """A Dask task: one chunk through the worker's cascade."""
    _, recommender, lock = _dask_recommender(ensemble_dir)
    with lock:
        return _recommend(recommender, chunk, item_filter)


def _receive(results, processes) -> tuple:
    """The next message of a worker; fails if a worker died without one (e.g. killed)."""
    import queue

    while True:
        try:
            return results.get(timeout=2)
        except queue.Empty:
            for process in processes:
                if not process.is_alive():
                    raise RuntimeError(f"batch worker {process.name} (pid {process.pid}) exited "
                                       f"with code {process.exitcode}") from None


def _expect(message: tuple, kind: str) -> tuple:
    if message[0] == "error":
        raise RuntimeError(f"batch worker failed: {message[-1]}")
    assert message[0] == kind, message
    return message


def _worker(ensemble_dir: str, tasks, results, item_filter: dict | None = None) -> None:
    """A worker process: load the cascade once, then answer chunks until told to stop."""
    _die_with_parent()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import warnings

    warnings.filterwarnings("ignore")
    try:
        from ensemble.runner import Recommender

        recommender = Recommender.load(ensemble_dir)
    except BaseException as exc:
        results.put(("error", f"cannot load {ensemble_dir}: {type(exc).__name__}: {exc}"))
        return
    results.put(("ready",))
    while (task := tasks.get()) is not None:
        index, chunk = task
        try:
            answer, timings, failures = _recommend(recommender, chunk, item_filter)
        except BaseException as exc:
            results.put(("error", f"{type(exc).__name__}: {exc}"))
            return
        results.put(("ok", index, answer, timings, failures))


def _die_with_parent() -> None:
    """SIGKILL this process when its parent dies (Linux), so a killed job leaves no worker."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the parent died before the call
        os._exit(1)


def _resumable_run(store, options: BatchOptions) -> dict:
    from recsys.batch_store import COMPLETE, RUNNING, safe_url

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


@contextmanager
def _milvus(config: Config):
    """Use the Milvus at the configured address if it answers (e.g. the one ``recsys serve``
    runs); otherwise start the local one for the run (indexing the items if needed)."""
    from vector_index.client import MilvusUnavailable, connect, quiet_pymilvus

    if not config.milvus.uri:
        try:
            with quiet_pymilvus():
                client = connect(config.milvus, timeout_s=2)
        except MilvusUnavailable:
            client = None
        if client is None:
            from recsys import stack

            with stack.local_milvus(config) as process:
                yield process
            return
        client.close()
    yield None


# -- command line --------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``recsys batch``."""
    parser.add_argument("--k", type=int, help=f"items per user (default {DEFAULT_K}; at most serving.retrieval_k)")
    parser.add_argument("--db", default=DEFAULT_DB,
                        help=f"SQLAlchemy database URL (default {DEFAULT_DB}, relative to the current "
                             "directory; e.g. postgresql://user:password@host:5432/dbname)")
    who = parser.add_mutually_exclusive_group()
    who.add_argument("--users", dest="user_ids", nargs="+", type=int, metavar="ID",
                     help="these users only (default: every user of the training data)")
    who.add_argument("--users-file", metavar="PATH",
                     help="users from a file: one id per line, or CSV/parquet with a user_id column")
    parser.add_argument("--chunk-size", type=int, help=f"users per chunk and transaction (default {DEFAULT_CHUNK})")
    parser.add_argument("--resume", metavar="RUN_ID", help="continue an interrupted or failed run")
    parser.add_argument("--keep-runs", type=int, default=DEFAULT_KEEP,
                        help=f"complete runs kept; older ones are deleted when a run completes (default {DEFAULT_KEEP})")
    parser.add_argument("--pause", type=float, default=0.0, metavar="SECONDS",
                        help="sleep after each chunk (leaves CPU to a server on the same machine)")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes running the cascade, each with its own copy of the models "
                             "(default 1: this process; the number of cores for throughput)")
    parser.add_argument("--filter", metavar="EXPRESSION",
                        help="a filter expression, as online (README, Filters), e.g. "
                             "'INCLUDE ItemID WHERE Items.genres IN ($GENRES)'")
    parser.add_argument("--filter-values", metavar="JSON",
                        help='values of the filter\'s $PARAMETERS, e.g. \'{"GENRES": ["Comedy"]}\'')


def main(config: Config, args: argparse.Namespace) -> int:
    """``recsys batch``: run (or resume) a batch and print what it did."""
    from recsys.batch_store import safe_url

    options = BatchOptions(k=args.k, db_url=args.db, user_ids=args.user_ids, users_file=args.users_file,
                           chunk_size=args.chunk_size, resume=args.resume, keep_runs=args.keep_runs,
                           pause_s=args.pause, progress=config.training.progress and not args.no_progress, workers=args.workers,
                           filter=args.filter, filter_values=args.filter_values)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = run_batch(config, options)
    except KeyboardInterrupt:
        print("recsys batch: interrupted; the run is marked failed and can be continued with --resume "
              "(see recommendation_runs)", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(render(result, safe_url(options.db_url)))
    return 0


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def render(result: BatchResult, db: str) -> str:
    """The summary ``recsys batch`` prints."""
    lines = [f"run {result.run_id} complete: {result.users_total:,} users x k={result.k} -> "
             f"{result.rows:,} rows in {db} (model version {result.model_version})"]
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
