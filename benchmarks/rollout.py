"""How long a rollout takes, and what it does to latency: one run, before / during / after.

    python -m benchmarks.rollout --workdir artifacts [--clients 4] [--phase-s 20] [--retrain]

On a built work directory (``make demo`` leaves one): the trained artifacts are exported as
release A, served by a local Milvus and Triton on free ports, and exported again as release B
(``--retrain``: after a production retrain with another seed, so B's models differ). Clients
send single-user gRPC requests throughout; after ``--phase-s`` seconds B is rolled out live
(its collection built and loaded, both models loaded and warmed while A serves, the swap), then
the clients go on for ``--phase-s`` seconds more. Prints the rollout's duration and, per phase,
requests, errors, p50 / p99 / max latency and which releases answered. Releases beyond
``release.keep`` are pruned at the end. It makes and serves releases of the work directory
without the quality gate: run it on a copy of a work directory you serve from.
"""
from __future__ import annotations

import argparse
import dataclasses
import threading
import time

import numpy as np
import pandas as pd

from benchmarks.local import add_workdir_arguments, built_workdir
from recsys.client import RecommenderClient
from recsys.jobs import releases, stack
from recsys.runtime.servers import TritonProcess, running


def clients(url: str, users: np.ndarray, count: int, stop: threading.Event, log: list) -> list[threading.Thread]:
    """``count`` gRPC clients sending one user per request until ``stop``; each answer or error
    goes to ``log`` as ``(sent_at, seconds, release or None)``."""
    def loop(seed: int) -> None:
        client = RecommenderClient(url, "grpc")
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            started = time.monotonic()
            try:
                release = int(client.recommend(rng.choice(users, size=1))["release"][0])
            except Exception:  # counted as an error of its phase
                release = None
            log.append((started, time.monotonic() - started, release))
        client.close()

    threads = [threading.Thread(target=loop, args=(seed,), daemon=True) for seed in range(count)]
    for thread in threads:
        thread.start()
    return threads


def phases(log: list, rollout_start: float, rollout_end: float) -> pd.DataFrame:
    """Per phase (before / during / after the rollout): requests, errors, latency percentiles."""
    frame = pd.DataFrame(log, columns=["sent_at", "seconds", "release"])
    frame["phase"] = np.where(frame["sent_at"] < rollout_start, "before",
                              np.where(frame["sent_at"] < rollout_end, "during", "after"))
    rows = []
    for phase in ("before", "during", "after"):
        part = frame[frame["phase"] == phase]
        ok = part[part["release"].notna()]
        ms = ok["seconds"].to_numpy() * 1000.0
        rows.append({"phase": phase, "requests": len(part), "errors": int(part["release"].isna().sum()),
                     "p50_ms": np.percentile(ms, 50) if len(ms) else np.nan,
                     "p99_ms": np.percentile(ms, 99) if len(ms) else np.nan,
                     "max_ms": ms.max() if len(ms) else np.nan,
                     "releases": ",".join(str(int(r)) for r in sorted(ok["release"].unique()))})
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workdir_arguments(parser)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--phase-s", type=float, default=20.0, help="seconds of load before and after")
    parser.add_argument("--retrain", action="store_true", help="train release B anew (another seed)")
    args = parser.parse_args(argv)

    config = built_workdir(args)
    first = stack.export(config)
    users = pd.read_parquet(releases.release_artifacts(config, first).users)["user_id"].to_numpy()
    with stack.local_milvus(config):
        releases.rollout(config, first)  # served from Triton's start below
        if args.retrain:
            other = dataclasses.replace(config.training, seed=config.training.seed + 1)
            stack.train(dataclasses.replace(config, training=other), production=True)
        second = stack.export(config)
        triton = TritonProcess(config)
        with running(triton):
            stop, log = threading.Event(), []
            RecommenderClient(triton.grpc_url, "grpc").recommend(users[:1])  # warm
            threads = clients(triton.grpc_url, users, args.clients, stop, log)
            time.sleep(args.phase_s)
            rollout_start = time.monotonic()
            releases.rollout(config, second, triton.grpc_url)
            rollout_end = time.monotonic()
            time.sleep(args.phase_s)
            stop.set()
            for thread in threads:
                thread.join(30)
        pruned = releases.prune(config, config.release.keep)
    table = phases(log, rollout_start, rollout_end)
    print(f"rollout of release {second} (from {first}): {rollout_end - rollout_start:.1f} s "
          f"with {args.clients} gRPC clients sending single-user requests"
          + (" (retrained)" if args.retrain else " (same models, exported again)"))
    print(table.to_markdown(index=False, floatfmt=".1f"))
    if pruned:
        print(f"pruned releases {pruned}")


if __name__ == "__main__":
    main()
