"""ANN retrieval benchmark: recall@k vs queries per second for Milvus indexes, next to exact
brute-force search (numpy matrix product + partial sort) on the same machine.

    python -m benchmarks.ann --workdir artifacts --out docs/ann.md          # trained embeddings
    python -m benchmarks.ann --synthetic 1000000 --out docs/ann-1m.md       # clustered vectors

Scenarios with trained embeddings (as in the source study): item->item (half of the item
vectors indexed, the other half queried), user->user (85% of user vectors indexed, 15%
queried), user->item (all items indexed, users queried). ``--synthetic N`` instead indexes N
vectors drawn around 2,000 Gaussian cluster centres (a realistic structure: random vectors are
the worst case for ANN) and queries 1,000 more from the same mixture.

Ground truth is exact inner product; recall@k is computed per query and averaged. Every QPS is
also given as a ratio to the exact search's QPS measured in the same run.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd

from operators.milvus import build_item_index, connect, rpc_timeout
from recsys.config import load_config
from recsys.servers import MilvusProcess, free_port, running

SWEEPS = {
    "FLAT": ({}, [{}]),
    "IVF_FLAT": ({"nlist": 1024}, [{"nprobe": p} for p in (8, 32, 128)]),
    "IVF_PQ": ({"nlist": 1024, "m": 16, "nbits": 8}, [{"nprobe": p} for p in (8, 32, 128)]),
    "HNSW": ({"M": 16, "efConstruction": 200}, [{"ef": e} for e in (100, 200, 400)]),
}


def exact_top_k(queries: np.ndarray, base: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """Exact top-k by inner product and the QPS it ran at."""
    started = time.perf_counter()
    result = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), 256):
        scores = queries[start:start + 256] @ base.T
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1)
        result[start:start + 256] = np.take_along_axis(part, order, axis=1)
    return result, len(queries) / (time.perf_counter() - started)


def clustered_vectors(n: int, dim: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    which = rng.integers(0, len(centres), size=n)
    return (centres[which] + 0.35 * rng.normal(size=(n, dim))).astype(np.float32)


def scenarios(args) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (indexed vectors, query vectors)."""
    rng = np.random.default_rng(0)
    if args.synthetic:
        centres = rng.normal(size=(2000, args.dim)).astype(np.float32)
        return {f"synthetic-{args.synthetic}": (clustered_vectors(args.synthetic, args.dim, rng, centres),
                                                clustered_vectors(args.nq, args.dim, rng, centres))}
    from recsys.evaluation import user_vectors as tower_vectors
    from training.pipeline import Artifacts

    artifacts = Artifacts(Path(args.workdir))
    items = np.stack(pd.read_parquet(artifacts.item_vectors)["embedding"].to_numpy()).astype(np.float32)
    users = pd.read_parquet(artifacts.users, columns=["user_id"]).sample(
        min(20_000, args.max_users), random_state=0)
    user_vectors = tower_vectors(artifacts, users["user_id"].to_numpy()).astype(np.float32)
    items = items[rng.permutation(len(items))]
    user_vectors = user_vectors[rng.permutation(len(user_vectors))]
    half, cut = len(items) // 2, int(0.85 * len(user_vectors))
    return {
        "item->item": (items[:half], items[half:][: args.nq]),
        "user->user": (user_vectors[:cut], user_vectors[cut:][: args.nq]),
        "user->item": (items, user_vectors[: args.nq]),
    }


def search_all(client, collection: str, queries: np.ndarray, k: int, params: dict, batch: int):
    hits = []
    started = time.perf_counter()
    for start in range(0, len(queries), batch):
        hits += client.search(collection, data=queries[start:start + batch].tolist(), limit=k,
                              search_params={"metric_type": "IP", "params": params},
                              timeout=rpc_timeout(600))
    return hits, len(queries) / (time.perf_counter() - started)


def run(args) -> pd.DataFrame:
    config = load_config(base={}, environ={}, overrides={
        "workdir": str(Path(args.scratch)), "milvus": {"port": free_port(), "insert_chunk_size": 20_000,
                                                     "timeout_s": 600}})
    rows = []
    with running(MilvusProcess(config)):
        for name, (base, queries) in scenarios(args).items():
            truth, exact_qps = exact_top_k(queries, base, args.top_k)
            rows.append({"scenario": name, "index": "exact (numpy)", "build_params": "", "search_params": "",
                         "recall": 1.0, "qps": exact_qps, "ratio_to_exact": 1.0, "build_s": 0.0})
            print(f"{name}: {len(base):,} indexed, {len(queries):,} queries, exact {exact_qps:,.0f} QPS",
                  flush=True)
            ids = np.arange(len(base), dtype=np.int64)
            for index_type in args.indexes:
                build, sweep = SWEEPS[index_type]
                cfg = dataclasses.replace(config.milvus, collection=f"bench_{index_type.lower()}",
                                          index_type=index_type, index_params=build)
                started = time.perf_counter()
                build_item_index(cfg, ids, base)
                build_s = time.perf_counter() - started
                client = connect(cfg, 600)
                for params in sweep:
                    if index_type == "HNSW":
                        params = {"ef": max(params["ef"], args.top_k)}
                    search_all(client, cfg.collection, queries[: args.batch], args.top_k, params, args.batch)
                    hits, qps = search_all(client, cfg.collection, queries, args.top_k, params, args.batch)
                    recall = np.mean([len({h["id"] for h in row} & set(t.tolist())) / args.top_k
                                      for row, t in zip(hits, truth)])
                    rows.append({"scenario": name, "index": index_type, "build_params": str(build),
                                 "search_params": str(params), "recall": recall, "qps": qps,
                                 "ratio_to_exact": qps / exact_qps, "build_s": build_s})
                    print(f"  {index_type:9} {str(params):16} recall@{args.top_k} {recall:.3f} "
                          f"{qps:9,.0f} QPS ({qps / exact_qps:5.1f}x exact) build {build_s:.0f}s", flush=True)
                client.drop_collection(cfg.collection)
                client.close()
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="artifacts", help="trained artifacts (recsys build)")
    parser.add_argument("--synthetic", type=int, default=0, help="use N clustered vectors instead")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--nq", type=int, default=1000, help="number of queries")
    parser.add_argument("--batch", type=int, default=1000, help="queries per search call (nq per request)")
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--max-users", type=int, default=20_000)
    parser.add_argument("--indexes", nargs="+", default=list(SWEEPS), choices=list(SWEEPS))
    parser.add_argument("--scratch", default="artifacts/bench", help="Milvus data directory for the run")
    parser.add_argument("--out", help="write the table as markdown here")
    args = parser.parse_args(argv)
    table = run(args)
    text = table.to_markdown(index=False, floatfmt=".3f") if hasattr(table, "to_markdown") else table.to_string()
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(f"nq={args.nq}, batch={args.batch}, top-k={args.top_k}\n\n{text}\n")


if __name__ == "__main__":
    main()
