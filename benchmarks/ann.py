"""ANN retrieval benchmark: recall@k vs queries per second for Milvus indexes, next to exact
brute-force search (numpy matrix product + partial sort) on the same machine.

    python -m benchmarks.ann --workdir artifacts --out docs/ann/trained.md    # trained embeddings
    python -m benchmarks.ann --synthetic 1000000 --out docs/ann/synthetic-1m.md  # clustered vectors

Scenarios with trained embeddings (as in the source study): item->item (half of the item
vectors indexed, the other half queried), user->user (85% of user vectors indexed, 15%
queried), user->item (all items indexed, users queried). ``--synthetic N`` instead indexes N
vectors drawn from a mixture of ``--centres`` Gaussian clusters (centres N(0, 1) in ``--dim``
dimensions; cluster sizes Zipf-distributed, as categories of a catalogue are; noise ``--noise``
per dimension, 1.0 by default so that clusters overlap: the true top-100 of a query spans ~9
clusters, and index choice matters - well separated clusters make every IVF index look perfect,
pure random vectors are the worst case for any ANN) and queries ``--nq`` more from the same
mixture.

Ground truth is exact inner product; recall@k is computed per query and averaged. Throughput
is measured with ``--batch`` queries per search call (nq); latency with single-query calls
(p50/p99 over ``--latency-queries`` calls). Every QPS is also given as a ratio to the exact
search's QPS measured in the same run. Memory: the size of the index files the build wrote
(what a query node loads; FLAT has none and searches the raw vectors, whose size the exact row
shows), and the growth of the Milvus process tree's resident memory over the build (noisy:
memory of the previous, dropped index is returned late). Results: a
markdown table (``--out``) and one PNG plot of recall vs QPS per scenario beside it.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from core.artifacts import Artifacts
from core.config import load_config
from recsys.jobs.evaluation import user_vectors as tower_vectors
from recsys.runtime.servers import MilvusProcess, free_port, running
from vector_index.client import connect, search_arrays
from vector_index.collections import aliased_collection, build_item_index


def sweeps(n: int, top_k: int) -> dict[str, tuple[dict, list[dict]]]:
    """Index type -> (build parameters, search parameter sweep), sized for ``n`` vectors."""
    nlist = ivf_nlist(n)
    probes = [p for p in (8, 32, 128) if p <= nlist] or [nlist]
    return {
        "FLAT": ({}, [{}]),
        "IVF_FLAT": ({"nlist": nlist}, [{"nprobe": p} for p in probes]),
        "IVF_PQ": ({"nlist": nlist, "m": 16, "nbits": 8}, [{"nprobe": p} for p in probes]),
        "SCANN": ({"nlist": nlist, "with_raw_data": True},
                  [{"nprobe": p, "reorder_k": max(2 * top_k, 200)} for p in probes]),
        "HNSW": ({"M": 16, "efConstruction": 200}, [{"ef": max(e, top_k)} for e in (100, 200, 400)]),
    }


INDEX_TYPES = ("FLAT", "IVF_FLAT", "IVF_PQ", "SCANN", "HNSW")


def ivf_nlist(n: int) -> int:
    """IVF cluster count: about 4 * sqrt(n), a power of two in [16, 4096]."""
    return int(min(4096, max(16, 2 ** round(math.log2(4 * math.sqrt(max(n, 1)))))))


def exact_top_k(queries: np.ndarray, base: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """Exact top-k by inner product and the QPS it ran at: BLAS matrix product and a partial
    sort per block of 64 queries, blocks spread over one thread per core (both release the GIL)."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    def block(start: int) -> np.ndarray:
        scores = queries[start:start + 64] @ base.T
        np.negative(scores, out=scores)
        part = np.argpartition(scores, k - 1, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(scores, part, axis=1), axis=1)
        return np.take_along_axis(part, order, axis=1)

    started = time.perf_counter()
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        result = np.concatenate(list(pool.map(block, range(0, len(queries), 64))))
    return result.astype(np.int64), len(queries) / (time.perf_counter() - started)


def clustered_vectors(n: int, rng: np.random.Generator, centres: np.ndarray, noise: float) -> np.ndarray:
    """``n`` vectors around the given centres, float32: cluster sizes follow a Zipf law (the
    first centre is the most popular, like catalogue categories), Gaussian noise ``noise`` per
    dimension around the centre."""
    weights = 1.0 / np.arange(1, len(centres) + 1)
    weights /= weights.sum()
    out = np.empty((n, centres.shape[1]), dtype=np.float32)
    for start in range(0, n, 100_000):  # bounded temporary memory at 1M+
        size = min(100_000, n - start)
        which = rng.choice(len(centres), size=size, p=weights)
        out[start:start + size] = centres[which] + noise * rng.standard_normal((size, centres.shape[1]),
                                                                               dtype=np.float32)
    return out


def scenarios(args) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (indexed vectors, query vectors)."""
    rng = np.random.default_rng(0)
    if args.synthetic:
        centres = rng.normal(size=(args.centres, args.dim)).astype(np.float32)
        return {f"synthetic-{args.synthetic}": (clustered_vectors(args.synthetic, rng, centres, args.noise),
                                                clustered_vectors(args.nq, rng, centres, args.noise))}
    artifacts = Artifacts(Path(args.workdir))
    items = np.stack(pd.read_parquet(artifacts.item_vectors)["embedding"].to_numpy()).astype(np.float32)
    users = pd.read_parquet(artifacts.users, columns=["user_id"])
    users = users.sample(min(len(users), args.max_users), random_state=0)
    user_vectors = tower_vectors(artifacts, users["user_id"].to_numpy()).astype(np.float32)
    items = items[rng.permutation(len(items))]
    user_vectors = user_vectors[rng.permutation(len(user_vectors))]
    half, cut = len(items) // 2, int(0.85 * len(user_vectors))
    return {
        "item->item": (items[:half], items[half:][: args.nq]),
        "user->user": (user_vectors[:cut], user_vectors[cut:][: args.nq]),
        "user->item": (items, user_vectors[: args.nq]),
    }


def search_all(client, collection: str, queries: np.ndarray, k: int, params: dict,
               batch: int) -> tuple[list[np.ndarray], float]:
    """Hit ids of every query, searched ``batch`` at a time, and the QPS."""
    hits: list[np.ndarray] = []
    started = time.perf_counter()
    for start in range(0, len(queries), batch):
        hits += [ids for ids, _ in search_arrays(client, collection, queries[start:start + batch], k,
                                                 {"metric_type": "IP", "params": params}, "", 600)]
    return hits, len(queries) / (time.perf_counter() - started)


def single_query_latency(client, collection: str, queries: np.ndarray, k: int, params: dict) -> tuple[float, float]:
    """p50 and p99 in ms of one-query search calls."""
    times = []
    for vector in queries:
        started = time.perf_counter()
        search_arrays(client, collection, vector[None, :], k, {"metric_type": "IP", "params": params}, "", 60)
        times.append(1000 * (time.perf_counter() - started))
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def recall_at_k(hits: list[np.ndarray], truth: np.ndarray, k: int) -> float:
    """Mean over queries of |hits & exact top-k| / k."""
    return float(np.mean([len(np.intersect1d(row, t, assume_unique=True)) / k for row, t in zip(hits, truth)]))


def _resident_mib(pid: int) -> float:
    import psutil

    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process] + process.children(recursive=True)) / 2**20


def _index_builds(index_dir: Path) -> set[Path]:
    return set(index_dir.iterdir()) if index_dir.is_dir() else set()


def _files_mib(directories) -> float:
    return sum(f.stat().st_size for d in directories for f in d.rglob("*") if f.is_file()) / 2**20


def _drop(client, alias: str) -> None:
    physical = aliased_collection(client, alias)
    if physical:
        client.drop_alias(alias)
        client.drop_collection(physical)


def _quiet_pymilvus() -> None:
    import logging

    # pymilvus logs an ERROR for the expected "alias not found" of every fresh collection name
    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)


def run(args) -> pd.DataFrame:
    """Every scenario x index x search parameter; one row each (plus exact search's)."""
    config = load_config(base={}, environ={}, overrides={
        "workdir": str(Path(args.scratch)), "milvus": {"port": free_port(), "insert_chunk_size": 20_000,
                                                     "timeout_s": 600}})
    rows = []
    _quiet_pymilvus()
    milvus = MilvusProcess(config)
    index_dir = config.milvus_data_dir / "data" / "index_files"
    with running(milvus):
        for name, (base, queries) in scenarios(args).items():
            truth, exact_qps = exact_top_k(queries, base, args.top_k)
            rows.append({"scenario": name, "vectors": len(base), "index": "exact (numpy)", "build_params": "",
                         "search_params": "", "recall": 1.0, "qps": exact_qps, "ratio_to_exact": 1.0,
                         "p50_ms": np.nan, "p99_ms": np.nan, "build_s": np.nan,
                         "index_mib": base.nbytes / 2**20})
            print(f"{name}: {len(base):,} indexed, {len(queries):,} queries, exact {exact_qps:,.0f} QPS",
                  flush=True)
            ids = np.arange(len(base), dtype=np.int64)
            for index_type in args.indexes:
                build, sweep = sweeps(len(base), args.top_k)[index_type]
                cfg = dataclasses.replace(config.milvus, collection=f"bench_{index_type.lower()}",
                                          index_type=index_type, index_params=build)
                before, builds_before = _resident_mib(milvus.pid), _index_builds(index_dir)
                started = time.perf_counter()
                try:
                    build_item_index(cfg, ids, base)
                except Exception as error:  # report the index as failed and go on with the others
                    print(f"  {index_type:9} build failed: {error}", flush=True)
                    rows.append({"scenario": name, "vectors": len(base), "index": index_type,
                                 "build_params": _text(build), "search_params": f"build failed: {error}"})
                    continue
                build_s = time.perf_counter() - started
                rss_growth = _resident_mib(milvus.pid) - before
                index_mib = _files_mib(_index_builds(index_dir) - builds_before)
                client = connect(cfg, 600)
                try:
                    for params in sweep:
                        search_all(client, cfg.collection, queries[: args.batch], args.top_k, params, args.batch)
                        hits, qps = search_all(client, cfg.collection, queries, args.top_k, params, args.batch)
                        recall = recall_at_k(hits, truth, args.top_k)
                        p50, p99 = single_query_latency(client, cfg.collection, queries[: args.latency_queries],
                                                        args.top_k, params)
                        rows.append({"scenario": name, "vectors": len(base), "index": index_type,
                                     "build_params": _text(build), "search_params": _text(params),
                                     "recall": recall, "qps": qps, "ratio_to_exact": qps / exact_qps,
                                     "p50_ms": p50, "p99_ms": p99, "build_s": build_s, "index_mib": index_mib,
                                     "rss_growth_mib": rss_growth})
                        print(f"  {index_type:9} {_text(params):22} recall@{args.top_k} {recall:.3f} "
                              f"{qps:9,.0f} QPS ({qps / exact_qps:5.1f}x exact), 1 query p50 {p50:.2f} ms, "
                              f"build {build_s:.0f}s, index {index_mib:.1f} MiB", flush=True)
                finally:
                    _drop(client, cfg.collection)
                    client.close()
    return pd.DataFrame(rows)


def _text(params: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in params.items())


def plot(table: pd.DataFrame, path_stem: Path, top_k: int) -> list[Path]:
    """One PNG per scenario: recall@k vs QPS (log scale), a line per index through its sweep
    in order (nprobe or ef growing), exact search as a marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for scenario, rows in table.groupby("scenario", sort=False):
        figure, axes = plt.subplots(figsize=(7, 4.5))
        for index, points in rows[rows["index"] != "exact (numpy)"].groupby("index", sort=False):
            axes.plot(points["qps"], points["recall"], marker="o", label=index)
        exact = rows[rows["index"] == "exact (numpy)"].iloc[0]
        axes.scatter([exact["qps"]], [1.0], marker="*", s=160, color="black", label="exact (numpy)", zorder=3)
        axes.set_xscale("log")
        axes.set_xlabel("queries per second (log)")
        axes.set_ylabel(f"recall@{top_k}")
        axes.set_title(f"{scenario}: {int(exact['vectors']):,} vectors indexed")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(loc="lower left", fontsize=8)
        slug = "".join(c if c.isalnum() else "-" for c in str(scenario)).strip("-")
        path = path_stem.with_name(f"{path_stem.name}-{slug}.png")
        figure.tight_layout()
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written


def best_at_recall(table: pd.DataFrame, recall: float) -> pd.DataFrame:
    """Per scenario: the fastest configuration reaching ``recall``, with its ratio to exact."""
    reached = table[(table["index"] != "exact (numpy)") & (table["recall"] >= recall)]
    return reached.loc[reached.groupby("scenario", sort=False)["qps"].idxmax()] if len(reached) else reached


def render(table: pd.DataFrame, args) -> str:
    shown = table.drop(columns=["vectors"]).rename(columns={
        "recall": f"recall@{args.top_k}", "qps": f"QPS (nq {args.batch})", "ratio_to_exact": "x exact",
        "p50_ms": "1-query p50 ms", "p99_ms": "1-query p99 ms", "build_s": "build s", "index_mib": "index MiB",
        "rss_growth_mib": "Milvus RSS growth MiB"})
    text = shown.to_markdown(index=False, floatfmt=".3g")
    best = best_at_recall(table, 0.95)
    lines = [f"Fastest configuration with recall@{args.top_k} >= 0.95:"]
    for _, row in best.iterrows():
        lines.append(f"- {row['scenario']}: {row['index']} ({row['search_params']}), recall "
                     f"{row['recall']:.3f}, {row['qps']:,.0f} QPS = {row['ratio_to_exact']:.3g}x exact")
    missing = set(table["scenario"]) - set(best["scenario"])
    lines += [f"- {s}: no configuration reached it" for s in missing]
    return text + "\n\n" + "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="artifacts", help="trained artifacts (recsys build)")
    parser.add_argument("--synthetic", type=int, default=0, help="use N clustered vectors instead")
    parser.add_argument("--centres", type=int, default=2000, help="cluster centres of --synthetic")
    parser.add_argument("--noise", type=float, default=1.0, help="per-dimension noise of --synthetic around its centres")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--nq", type=int, default=1000, help="number of queries")
    parser.add_argument("--batch", type=int, default=1000, help="queries per search call (nq per request)")
    parser.add_argument("--latency-queries", type=int, default=200, help="single-query calls for p50/p99")
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--max-users", type=int, default=20_000)
    parser.add_argument("--indexes", nargs="+", default=list(INDEX_TYPES), choices=INDEX_TYPES)
    parser.add_argument("--scratch", default="artifacts/bench", help="Milvus data directory for the run")
    parser.add_argument("--out", help="write the table as markdown here, and the plots beside it")
    args = parser.parse_args(argv)
    table = run(args)
    text = render(table, args)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        plots = plot(table, out.with_suffix(""), args.top_k)
        header = (f"nq {args.nq}, {args.batch} queries per search call, top-k {args.top_k}, single-query "
                  f"latency over {args.latency_queries} calls\n\n")
        out.write_text(header + text + "\n\n" + "\n".join(f"![{p.stem}]({p.name})" for p in plots) + "\n")
        table.to_csv(out.with_suffix(".csv"), index=False)
        print(f"written: {out}, {', '.join(p.name for p in plots)}")


if __name__ == "__main__":
    main()
