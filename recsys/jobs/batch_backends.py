"""Where a batch run's chunks go through the served cascade: in this process, in worker
processes (each loads its own copy of the models), or on the workers of a Dask cluster.
Every backend yields the same ``(chunk, answer, timings, failures)`` per chunk
(:func:`cascade`), so the run does not depend on which one computed it."""
from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ensemble.runner import Recommender


def recommend_chunk(recommender, users: np.ndarray, item_filter: dict | None = None) -> tuple[dict, dict[str, float], int]:
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
def cascade(ensemble_dir: Path, workers: int, item_filter: dict | None = None, dask_scheduler: str = ""):
    """Yields ``answers(chunks)``, an iterator of ``(chunk, answer, timings, failures)``: the
    served cascade of ``ensemble_dir`` (:class:`ensemble.runner.Recommender`) in this process,
    in ``workers`` processes, or on the workers of a Dask cluster (each loads the ensemble
    once; chunks come back as they finish)."""
    if dask_scheduler:
        with _dask_cascade(ensemble_dir, item_filter, dask_scheduler) as answers:
            yield answers
        return
    if workers <= 1:
        recommender = Recommender.load(ensemble_dir)

        def in_process(chunks):
            for chunk in chunks:
                yield (chunk, *recommend_chunk(recommender, chunk, item_filter))

        yield in_process
        return
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
    from distributed import get_worker

    worker = get_worker()
    cached = getattr(worker, "_recsys_cascade", None)
    if cached is None or cached[0] != ensemble_dir:
        cached = (ensemble_dir, Recommender.load(Path(ensemble_dir)), threading.Lock())
        worker._recsys_cascade = cached
    return cached


def _dask_recommend(ensemble_dir: str, chunk: np.ndarray, item_filter: dict | None):
    """A Dask task: one chunk through the worker's cascade."""
    _, recommender, lock = _dask_recommender(ensemble_dir)
    with lock:
        return recommend_chunk(recommender, chunk, item_filter)


def _receive(results, processes) -> tuple:
    """The next message of a worker; fails if a worker died without one (e.g. killed)."""
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
    warnings.filterwarnings("ignore")
    try:
        recommender = Recommender.load(ensemble_dir)
    except BaseException as exc:
        results.put(("error", f"cannot load {ensemble_dir}: {type(exc).__name__}: {exc}"))
        return
    results.put(("ready",))
    while (task := tasks.get()) is not None:
        index, chunk = task
        try:
            answer, timings, failures = recommend_chunk(recommender, chunk, item_filter)
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
