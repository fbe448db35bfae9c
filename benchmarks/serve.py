"""End-to-end serving benchmark through Triton: latency percentiles and throughput at several
client concurrencies, over HTTP and gRPC, for batches of 1 and 32 users; the per-stage
breakdown from the model's own timers; peak memory of Triton and Milvus.

    python -m benchmarks.serve --workdir artifacts [--requests 200] [--out docs/serve.md]
                               [--compare-stock]

It starts the local Milvus and Triton of the given (built) work directory on free ports and
stops them at the end. ``--compare-stock`` then serves the same request path built from the
stock Merlin Systems operators (:mod:`benchmarks.stock_graph`: same models, Feast store,
Milvus collection and candidates) from a second model repository on a fresh Triton, measures
it the same way for single users (the only batch size it supports) and prints each p50 and
p99 as a ratio.
"""
from __future__ import annotations

import argparse
import dataclasses
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.local import add_workdir_arguments, built_workdir
from benchmarks.stock_graph import STOCK_MODEL_NAME, export_stock_model
from core.artifacts import Artifacts
from recsys.client import RecommenderClient, stage_seconds
from recsys.jobs import releases, stack
from recsys.runtime.servers import TritonProcess, running


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
         requests: int, model: str | None = None) -> dict:
    """``requests`` requests per client, ``concurrency`` clients in parallel; to ``model``
    (taking ``user_id``, answering ``ordered_ids``) instead of the recommender if given."""
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
                if model:
                    client.infer(model, "user_id", request, ("ordered_ids",))
                else:
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
    return {"graph": model or "ours", "protocol": protocol, "users_per_request": batch, "concurrency": concurrency,
            "requests": len(ms), "errors": len(errors),
            "p50_ms": np.percentile(ms, 50), "p95_ms": np.percentile(ms, 95),
            "p99_ms": np.percentile(ms, 99), "requests_per_s": len(ms) / elapsed,
            "users_per_s": len(ms) * batch / elapsed}


def _report(row: dict) -> dict:
    print(" ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    return row


def measure_stock(config, users: np.ndarray, concurrencies: list[int], requests: int) -> list[dict]:
    """Export the stock-operator graph to its own model repository, serve it on a fresh
    Triton (ours is stopped: one server at a time on the machine) and measure single users."""
    repository = export_stock_model(config, Artifacts.of(config), config.workdir / "stock_model_repository")
    stock = dataclasses.replace(config, serving=dataclasses.replace(config.serving, model_name=STOCK_MODEL_NAME))
    triton = TritonProcess(stock, repository)
    rows = []
    with running(triton):
        load(triton.grpc_url, "grpc", users, 1, 1, 10, model=STOCK_MODEL_NAME)  # warm-up
        for protocol, url in (("http", triton.http_url), ("grpc", triton.grpc_url)):
            for concurrency in concurrencies:
                rows.append(_report(load(url, protocol, users, 1, concurrency, requests, model=STOCK_MODEL_NAME)))
    return rows


def compare_stock(ours: list[dict], stock: list[dict]) -> pd.DataFrame:
    """Single-user p50 / p99 of both graphs per protocol and concurrency, with the ratios."""
    keyed = {(r["protocol"], r["concurrency"]): r for r in ours if r["users_per_request"] == 1}
    rows = []
    for s in stock:
        o = keyed.get((s["protocol"], s["concurrency"]))
        if o is None:
            continue
        rows.append({"protocol": s["protocol"], "concurrency": s["concurrency"],
                     "ours_p50_ms": o["p50_ms"], "stock_p50_ms": s["p50_ms"],
                     "p50_ratio": s["p50_ms"] / o["p50_ms"], "ours_p99_ms": o["p99_ms"],
                     "stock_p99_ms": s["p99_ms"], "p99_ratio": s["p99_ms"] / o["p99_ms"],
                     "stock_errors": s["errors"]})
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workdir_arguments(parser)
    parser.add_argument("--requests", type=int, default=200, help="requests per client")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--out", help="write the tables as markdown here")
    parser.add_argument("--stock-requests", type=int, default=50,
                        help="requests per client for the stock graph (it is slower)")
    parser.add_argument("--compare-stock", action="store_true",
                        help="also serve and measure the stock-Merlin-operator graph (single users)")
    args = parser.parse_args(argv)

    config = built_workdir(args)
    release = stack.export(config)
    users = pd.read_parquet(Artifacts.of(config).users)["user_id"].to_numpy()
    rows = []
    with stack.local_milvus(config) as milvus:
        releases.rollout(config, release)  # what was just exported serves (Triton starts below)
        triton = TritonProcess(config)
        with running(triton):
            memory = {"tritonserver": PeakMemory(triton.pid)}
            if milvus is not None:
                memory["milvus"] = PeakMemory(milvus.pid)
            metrics_url = f"http://{triton.host}:{triton.metrics_port}/metrics"
            load(triton.grpc_url, "grpc", users, 1, 1, 50)  # warm-up
            before = stage_seconds(metrics_url)
            for protocol, url in (("http", triton.http_url), ("grpc", triton.grpc_url)):
                for batch in args.batches:
                    for concurrency in args.concurrency:
                        rows.append(_report(load(url, protocol, users, batch, concurrency, args.requests)))
            after = stage_seconds(metrics_url)
            peaks = {name: sampler.stop() / 2**20 for name, sampler in memory.items()}
        stock_rows = (measure_stock(config, users, args.concurrency, args.stock_requests)
                      if args.compare_stock else [])
    total = sum(r["requests"] for r in rows)
    stages = pd.DataFrame({"stage": list(after),
                           "ms_per_request": [1000 * (after[s] - before.get(s, 0.0)) / total for s in after]})
    table = pd.DataFrame(rows)
    text = (table.to_markdown(index=False, floatfmt=".1f") + "\n\n"
            + stages.to_markdown(index=False, floatfmt=".2f") + "\n\n"
            + "peak RSS (MiB): " + ", ".join(f"{k} {v:,.0f}" for k, v in peaks.items()) + "\n")
    if stock_rows:
        text += "\n" + compare_stock(rows, stock_rows).to_markdown(index=False, floatfmt=".1f") + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
