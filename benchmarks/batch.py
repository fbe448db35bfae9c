"""Batch throughput of `recsys batch`: the served cascade run in-process over chunks of users,
written to SQLite, on a synthetic catalogue of over 50,000 items with 100 candidates ranked per
user.
The bar: >= 1,000 users/s on 2 cores. A benchmark, not a test.

    python -m benchmarks.batch [--workdir artifacts/bench-batch] [--items 60000]
                               [--sessions 100000] [--users 20000] [--k 50] [--chunk-size 1024]
                               [--workers 2] [--skip-build] [--db URL]

The first run builds the catalogue in ``--workdir`` with the project's synthetic source (the
YOOCHOOSE-shaped click log: Zipf popularity, sessions as users), trains small models (one
epoch each, no validation: answer quality is not what is measured here), applies Feast and
materializes it; ``--skip-build`` reuses them. A local Milvus is started on a free loopback
port (the items are indexed after a build or if the collection is missing; HNSW, the served
default), then the batch job
(:func:`recsys.jobs.batch.run_batch`, what ``recsys batch`` runs) computes the top ``--k`` of the
first ``--users`` training users, and the script prints users/s and the time per stage
(:attr:`ensemble.runner.Recommender.last_timings`, summed over chunks, plus the database
writes), and writes them as JSON to ``<workdir>/bench-batch.json``. Milvus shares the machine's
cores with the job, as it would in production on one box.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import pandas as pd

from core.artifacts import Artifacts
from core.config import PROJECT_ROOT, load_config
from recsys.jobs import releases, stack
from recsys.jobs.batch import BatchOptions, run_batch
from recsys.jobs.batch_users import training_users
from recsys.runtime.servers import free_port


def bench_config(workdir: Path, items: int, sessions: int, port: int):
    """The benchmark's configuration: synthetic data of the given size, small training budget,
    its own feature repo and Milvus collection under ``workdir``."""
    repo = workdir / "feature_repo"
    repo.mkdir(parents=True, exist_ok=True)
    for name in ("feature_store.yaml", "definitions.py"):
        if not (repo / name).is_file():
            shutil.copy(PROJECT_ROOT / "feature_repo" / name, repo / name)
    return load_config(base={}, overrides={
        "workdir": str(workdir), "feature_repo": str(repo),
        "data": {"source": "synthetic", "num_items": items, "num_sessions": sessions},
        "training": {"validate": False, "retrieval_epochs": 1, "ranking_epochs": 1, "ranking_negatives": 7},
        "milvus": {"port": port, "collection": "bench_batch_items", "auth": False, "token": ""},
        "serving": {"retrieval_k": 100},
    }, environ={})


def build(config) -> float:
    """Train on the synthetic click log, load Feast and make a release; returns seconds."""
    started = time.perf_counter()
    stack.train(config)
    stack.load_features(config)
    stack.export(config)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=str(PROJECT_ROOT / "artifacts" / "bench-batch"))
    parser.add_argument("--items", type=int, default=60_000,
                        help="synthetic catalogue; the items clicked at least once (~53k of 60k with the default sessions) are indexed")
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=20_000, help="users to compute (the first ones)")
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes running the cascade (default: the number of cores)")
    parser.add_argument("--db", help="database URL (default: a fresh SQLite file in the workdir)")
    parser.add_argument("--skip-build", action="store_true", help="reuse the trained workdir")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    workdir = Path(args.workdir).resolve()
    config = bench_config(workdir, args.items, args.sessions, free_port())
    build_s = 0.0
    if not args.skip_build or not Artifacts.of(config).item_vectors.is_file():
        print(f"building: {args.items:,} items, {args.sessions:,} synthetic sessions in {workdir}", flush=True)
        build_s = build(config)
        print(f"built in {build_s:.0f}s", flush=True)
    users = training_users(config)[: args.users]
    db = args.db or f"sqlite:///{workdir / 'bench-recs.db'}"
    if not args.db and (workdir / "bench-recs.db").exists():
        for suffix in ("", "-wal", "-shm"):
            Path(f"{workdir / 'bench-recs.db'}{suffix}").unlink(missing_ok=True)
    started = time.perf_counter()
    with stack.local_milvus(config):
        newest = max(r.id for r in releases.list_releases(config))
        if build_s > 0 or releases.serving_release(config) != newest:
            releases.rollout(config, newest)  # the release just built serves the batch (no Triton here)
        milvus_s = time.perf_counter() - started
        result = run_batch(config, BatchOptions(k=args.k, db_url=db, user_ids=users.tolist(),
                                                chunk_size=args.chunk_size, keep_runs=1,
                                                workers=args.workers))
    stages = dict(sorted(result.stage_seconds.items(), key=lambda kv: -kv[1]))
    total = sum(stages.values())
    items = len(pd.read_parquet(Artifacts.of(config).item_vectors, columns=["item_id"]))
    print(f"\n{result.users_computed:,} users, k = {args.k}, {config.serving.retrieval_k} candidates ranked per "
          f"user, {items:,} items, chunks of {args.chunk_size}, {args.workers} worker process(es)")
    print(f"throughput: {result.users_per_second:,.0f} users/s ({result.compute_s:.1f} s; setup "
          f"{result.setup_s:.1f} s: export, model load, Feast warm-up; Milvus start/index {milvus_s:.1f} s)")
    print(f"{'stage (summed over workers)':32} {'s':>8} {'ms/1k users':>12} {'share':>6}")
    for stage, seconds in stages.items():
        print(f"{stage:32} {seconds:8.2f} {1000 * seconds / result.users_computed * 1000:12.1f} "
              f"{seconds / total:6.1%}")
    print("answered by: " + ", ".join(f"{s} {n:,}" for s, n in result.sources.items()))
    report = {"items": items, "sessions": args.sessions, "users": result.users_computed, "k": args.k,
              "retrieval_k": config.serving.retrieval_k, "chunk_size": args.chunk_size, "workers": args.workers,
              "index_type": config.milvus.index_type, "search_params": config.milvus.search_params,
              "users_per_second": result.users_per_second, "compute_s": result.compute_s,
              "setup_s": result.setup_s, "milvus_start_s": milvus_s, "build_s": build_s,
              "stage_seconds": stages, "sources": result.sources, "cpus": os.cpu_count()}
    (workdir / "bench-batch.json").write_text(json.dumps(report, indent=2))
    print(f"written to {workdir / 'bench-batch.json'}")


if __name__ == "__main__":
    main()
