"""Load test: many clients for a fixed time, HTTP and gRPC mixed, single users and batches.

Every request must be answered (zero errors is the bar); reports latency percentiles per
request kind, throughput, and the resident memory of Triton and Milvus (process trees) sampled
through the run, with its growth from the first to the last quarter (memory must not keep
growing).

    python -m benchmarks.soak --workdir artifacts                 # 16 clients, 2 minutes
    python -m benchmarks.soak --workdir artifacts --clients 4 --seconds 10

It starts the local Milvus and Triton of the given (built) work directory on free ports and
stops them at the end; :func:`soak` runs against servers that are already up (the CI test).
"""
from __future__ import annotations

import argparse
import threading
import time

import numpy as np
import pandas as pd

from core.artifacts import Artifacts
from core.config import load_config
from recsys.client import RecommenderClient
from recsys.jobs import stack
from recsys.runtime.servers import free_port

BATCH_SIZES = (1, 32)


def tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and its descendants, MiB."""
    import psutil

    try:
        root = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [root] + root.children(recursive=True)) / 2**20
    except psutil.Error:
        return float("nan")


def soak(urls: dict[str, str], users: np.ndarray, clients: int, seconds: float,
         pids: dict[str, int], sample_every_s: float = 1.0) -> dict:
    """Run ``clients`` threads for ``seconds``; client ``i`` uses protocol ``i % 2`` (HTTP,
    gRPC) and alternates single users and batches. Returns latencies, errors and memory."""
    deadline = time.monotonic() + seconds
    results: list[tuple[str, int, float]] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client_loop(index: int) -> None:
        protocol = ("http", "grpc")[index % 2]
        client = RecommenderClient(urls[protocol], protocol)
        rng = np.random.default_rng(index)
        mine, failed = [], []
        turn = index
        while time.monotonic() < deadline:
            batch = BATCH_SIZES[turn % len(BATCH_SIZES)]
            turn += 1
            request = rng.choice(users, size=min(batch, len(users)), replace=False)
            started = time.perf_counter()
            try:
                answer = client.recommend(request)
                if answer["item_ids"].shape[0] != len(request):
                    failed.append(f"{protocol}: {len(request)} users asked, {answer['item_ids'].shape[0]} answered")
            except Exception as exc:  # counted and reported: the bar is zero
                failed.append(f"{protocol}: {exc!r}"[:300])
            mine.append((protocol, batch, time.perf_counter() - started))
        client.close()
        with lock:
            results.extend(mine)
            errors.extend(failed)

    memory: dict[str, list[float]] = {name: [tree_rss_mib(pid)] for name, pid in pids.items()}
    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        time.sleep(sample_every_s)
        for name, pid in pids.items():
            memory[name].append(tree_rss_mib(pid))
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started

    frame = pd.DataFrame(results, columns=["protocol", "users_per_request", "seconds"])
    rows = []
    for (protocol, batch), group in frame.groupby(["protocol", "users_per_request"]):
        ms = group["seconds"].to_numpy() * 1000
        rows.append({"protocol": protocol, "users_per_request": batch, "requests": len(ms),
                     "p50_ms": np.percentile(ms, 50), "p95_ms": np.percentile(ms, 95),
                     "p99_ms": np.percentile(ms, 99), "max_ms": ms.max()})
    growth = {}
    for name, samples in memory.items():
        quarter = max(1, len(samples) // 4)
        growth[name] = {"start_mib": samples[0], "first_quarter_mib": float(np.mean(samples[:quarter])),
                        "last_quarter_mib": float(np.mean(samples[-quarter:])), "peak_mib": max(samples)}
    return {"clients": clients, "seconds": elapsed, "requests": len(frame), "errors": errors,
            "requests_per_s": len(frame) / elapsed,
            "users_per_s": float(frame["users_per_request"].sum() / elapsed),
            "latency": rows, "memory": growth}


def render(report: dict) -> str:
    lines = [f"{report['clients']} clients for {report['seconds']:.0f}s: {report['requests']:,} requests "
             f"({report['requests_per_s']:.1f}/s, {report['users_per_s']:.0f} users/s), "
             f"{len(report['errors'])} errors",
             pd.DataFrame(report["latency"]).to_markdown(index=False, floatfmt=".1f"), "",
             "| process tree | at start MiB | first quarter MiB | last quarter MiB | peak MiB |",
             "|---|---|---|---|---|"]
    for name, m in report["memory"].items():
        lines.append(f"| {name} | {m['start_mib']:.0f} | {m['first_quarter_mib']:.0f} | "
                     f"{m['last_quarter_mib']:.0f} | {m['peak_mib']:.0f} |")
    lines += [f"error: {e}" for e in report["errors"][:10]]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="artifacts")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=120.0)
    args = parser.parse_args(argv)
    config = load_config(overrides={
        "workdir": args.workdir, "milvus": {"port": free_port()},
        "triton": {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}})
    stack.require_artifacts(config)
    release = stack.export(config)
    users = pd.read_parquet(Artifacts.of(config).users)["user_id"].to_numpy()
    with stack.local_stack(config, release=release) as (milvus, triton):
        pids = {"tritonserver": triton.pid, **({"milvus": milvus.pid} if milvus else {})}
        urls = {"http": triton.http_url, "grpc": triton.grpc_url}
        soak(urls, users, 2, 5.0, pids)  # warm-up
        report = soak(urls, users, args.clients, args.seconds, pids)
    print(render(report))
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
