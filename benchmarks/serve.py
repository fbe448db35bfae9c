"""End-to-end serving benchmark through Triton: latency percentiles and throughput at several
client concurrencies, over HTTP and gRPC, for batches of 1 and 32 users; the per-stage
breakdown from the model's own timers; peak memory of Triton and Milvus.

    python -m benchmarks.serve --workdir artifacts [--requests 200] [--out docs/serve.md]

It starts the local Milvus and Triton of the given (built) work directory on free ports and
stops them at the end.
"""
from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

from recsys import stack
from recsys.client import RecommenderClient
from recsys.config import load_config
from recsys.demo import stage_seconds
from recsys.servers import free_port
from training.pipeline import Artifacts


class PeakMemory:
    """Samples the resident memory of a process tree in the background."""

    def __init__(self, pid: int, interval_s: float = 0.2):
        import psutil

        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval_s,), daemon=True)
        self._thread.start()

    def _run(self, interval_s: float) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                tree = [self.process] + self.process.children(recursive=True)
                self.peak = max(self.peak, sum(p.memory_info().rss for p in tree))
            except psutil.Error:
                pass
            self._stop.wait(interval_s)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def load(url: str, protocol: str, users: np.ndarray, batch: int, concurrency: int,
         requests: int) -> dict:
    """``requests`` requests per client, ``concurrency`` clients in parallel."""
    latencies: list[float] = []
    errors = []
    lock = threading.Lock()

    def client_loop(seed: int) -> None:
        client = RecommenderClient(url, protocol)
        rng = np.random.default_rng(seed)
        mine = []
        try:
            for _ in range(requests):
                request = rng.choice(users, size=batch, replace=False)
                started = time.perf_counter()
                client.recommend(request)
                mine.append(time.perf_counter() - started)
        except Exception as exc:  # counted, reported
            errors.append(repr(exc))
        finally:
            client.close()
            with lock:
                latencies.extend(mine)

    started = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if not latencies:
        raise RuntimeError(f"every {protocol} request failed ({len(errors)} clients), e.g. {errors[0]}")
    ms = np.array(latencies) * 1000.0
    return {"protocol": protocol, "users_per_request": batch, "concurrency": concurrency,
            "requests": len(ms), "errors": len(errors),
            "p50_ms": np.percentile(ms, 50), "p95_ms": np.percentile(ms, 95),
            "p99_ms": np.percentile(ms, 99), "requests_per_s": len(ms) / elapsed,
            "users_per_s": len(ms) * batch / elapsed}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="artifacts")
    parser.add_argument("--requests", type=int, default=200, help="requests per client")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--out", help="write the tables as markdown here")
    args = parser.parse_args(argv)

    config = load_config(overrides={
        "workdir": args.workdir,
        "milvus": {"port": free_port()},
        "triton": {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}})
    stack.require_artifacts(config)
    stack.export(config)
    users = pd.read_parquet(Artifacts.of(config).users)["user_id"].to_numpy()
    rows = []
    with stack.local_stack(config) as (milvus, triton):
        memory = {"tritonserver": PeakMemory(triton.pid)}
        if milvus is not None:
            memory["milvus"] = PeakMemory(milvus.pid)
        metrics_url = f"http://{triton.host}:{triton.metrics_port}/metrics"
        load(triton.grpc_url, "grpc", users, 1, 1, 50)  # warm-up
        before = stage_seconds(metrics_url)
        for protocol, url in (("http", triton.http_url), ("grpc", triton.grpc_url)):
            for batch in args.batches:
                for concurrency in args.concurrency:
                    row = load(url, protocol, users, batch, concurrency, args.requests)
                    rows.append(row)
                    print(" ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in row.items()), flush=True)
        after = stage_seconds(metrics_url)
        peaks = {name: sampler.stop() / 2**20 for name, sampler in memory.items()}
    total = sum(r["requests"] for r in rows)
    stages = pd.DataFrame({"stage": list(after),
                           "ms_per_request": [1000 * (after[s] - before.get(s, 0.0)) / total for s in after]})
    table = pd.DataFrame(rows)
    text = (table.to_markdown(index=False, floatfmt=".1f") + "\n\n"
            + stages.to_markdown(index=False, floatfmt=".2f") + "\n\n"
            + "peak RSS (MiB): " + ", ".join(f"{k} {v:,.0f}" for k, v in peaks.items()) + "\n")
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
