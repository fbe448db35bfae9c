"""The end-to-end demo: build everything, serve it from real Milvus + Triton, query it over
HTTP and gRPC, and print recommendations, latency and per-stage timings."""
from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd

from core.artifacts import Artifacts
from core.config import Config
from recsys.client import RecommenderClient, stage_seconds
from recsys.jobs import stack
from recsys.jobs.evaluation import most_popular, seen_lists
from training.metrics import ranking_metrics

DATA_NAMES = {"synthetic": "a synthetic YOOCHOOSE-format click log",
              "movielens": "MovieLens-100K (from the recbole wheel)",
              "yoochoose": "a YOOCHOOSE click file", "files": "your data files"}


def _say(message: str = "") -> None:
    print(message, flush=True)


def measure_latency(client: RecommenderClient, user_ids: np.ndarray, batch: int, n: int) -> np.ndarray:
    """Latency in ms of ``n`` requests of ``batch`` users each."""
    rng = np.random.default_rng(0)
    latencies = np.empty(n)
    for i in range(n):
        request = rng.choice(user_ids, size=batch, replace=False)
        started = time.perf_counter()
        client.recommend(request)
        latencies[i] = (time.perf_counter() - started) * 1000.0
    return latencies


def served_quality(client: RecommenderClient, train: pd.DataFrame, test: pd.DataFrame, k: int,
                   batch: int = 64) -> dict[str, dict[str, float]]:
    """NDCG@k and HitRate@k of the cascade answered by Triton for the users of ``test`` (their
    held-out items are the relevant ones), next to the most-popular list (seen items excluded
    in both)."""
    users = np.sort(test["user_id"].unique())
    served = np.concatenate([client.recommend(users[s:s + batch])["item_ids"][:, :k]
                             for s in range(0, len(users), batch)])
    popular = most_popular(train, seen_lists(train, users), k)
    truth = test[["user_id", "item_id"]]
    return {name: ranking_metrics(recs, users, truth, ks=(k,))
            for name, recs in (("served cascade", served), ("most popular", popular))}


def run_demo(config: Config, requests: int = 300, eval_users: int = 1000) -> None:
    """Train, load Feast, index, export, serve, query; stop everything it started."""
    started = time.perf_counter()
    _say(f"== 1/5 training on {DATA_NAMES.get(config.data.source, config.data.source)}")
    artifacts: Artifacts = stack.train(config)
    report = json.loads(artifacts.report.read_text())
    tuning = report["tuning"]
    _say(f"   {report['interactions']:,} interactions, {report['users']:,} users, {report['items']:,} items, "
         f"{report['split']} split; validation chose {tuning['tower_epochs']} Two-Tower and "
         f"{tuning['ranker_epochs']} DLRM epochs, retrieval weight {tuning['retrieval_weight']}; "
         f"tuning {report['timings']['tuning_s']:.0f}s, training {report['timings']['models_s']:.0f}s")
    _say("== 2/5 Feast: apply + materialize-incremental (SQLite online store)")
    stack.load_features(config)
    _say("== 3/5 exporting the Triton model repository")
    release = stack.export(config)
    _say(f"   release {release}: {config.model_repository / config.serving.model_name / str(release)}")
    _say("== 4/5 starting Milvus and Triton, indexing item vectors")
    with stack.local_stack(config, reindex=True, release=release) as (milvus, triton):
        _say(f"   Milvus {config.milvus.endpoint}; Triton HTTP {triton.http_url}, "
             f"gRPC {triton.grpc_url}, metrics {triton.host}:{triton.metrics_port} (pid {triton.pid})")
        _say(f"   ready after {time.perf_counter() - started:.0f}s")
        _say("== 5/5 querying")
        _query(config, artifacts, triton, requests, eval_users)
    _say(f"== done in {time.perf_counter() - started:.0f}s; Milvus and Triton stopped")


def _query(config: Config, artifacts: Artifacts, triton, requests: int, eval_users: int) -> None:
    http = RecommenderClient(triton.http_url, "http", config.serving.model_name)
    grpc = RecommenderClient(triton.grpc_url, "grpc", config.serving.model_name)
    users = pd.read_parquet(artifacts.users)
    train = pd.read_parquet(artifacts.train_interactions)
    test = pd.read_parquet(artifacts.test_interactions)

    sample = users[users["history"].apply(len) > 0].sample(3, random_state=1)
    unknown = int(users["user_id"].max()) + 1_000_000
    request = np.r_[sample["user_id"].to_numpy(), unknown]
    answer_http = http.recommend(request)
    answer_grpc = grpc.recommend(request)
    same = all(np.array_equal(answer_http[k], answer_grpc[k]) for k in ("item_ids", "fallback", "source"))
    _say(f"   one batched request of {len(request)} users, HTTP and gRPC answers identical: {same}")
    for row, user_id in enumerate(request):
        seen = sample.set_index("user_id")["history"].get(user_id, [])
        _say(f"   user {user_id}: answered by '{answer_grpc['source'][row]}', "
             f"{len(seen)} items already seen (excluded)")
        ids, scores = answer_grpc["item_ids"][row], answer_grpc["scores"][row]
        _say("     " + "  ".join(f"{i}:{s:.2f}" for i, s in zip(ids[:6], scores[:6])) + "  ...")

    metrics_url = f"http://{triton.host}:{triton.metrics_port}/metrics"
    known_ids = users["user_id"].to_numpy()
    measure_latency(grpc, known_ids, 1, 20)  # warm-up
    before = stage_seconds(metrics_url)
    _say(f"   latency over {requests} requests each (ms):")
    _say(f"     {'protocol':8} {'users/req':>9} {'p50':>7} {'p99':>7} {'mean':>7}")
    total_requests = 0
    for name, client in (("HTTP", http), ("gRPC", grpc)):
        for batch in (1, 32):
            lat = measure_latency(client, known_ids, batch, requests)
            total_requests += requests
            _say(f"     {name:8} {batch:>9} {np.percentile(lat, 50):7.1f} {np.percentile(lat, 99):7.1f} "
                 f"{lat.mean():7.1f}")
    after = stage_seconds(metrics_url)
    _say("   time per request in each stage (ms, mean over the requests above, inside Triton):")
    for stage, seconds in after.items():
        _say(f"     {stage:34} {1000 * (seconds - before.get(stage, 0.0)) / total_requests:7.2f}")

    evaluated = test[test["user_id"].isin(
        pd.Series(test["user_id"].unique()).sample(min(eval_users, test["user_id"].nunique()), random_state=2))]
    quality = served_quality(grpc, train, evaluated, config.serving.top_k)
    k = config.serving.top_k
    _say(f"   on {evaluated['user_id'].nunique()} test users through Triton (their seen items excluded):")
    for name, values in quality.items():
        _say(f"     {name:15} NDCG@{k} {values[f'ndcg@{k}']:.3f}  HitRate@{k} {values[f'hit_rate@{k}']:.3f}")
    _say("   (`recsys evaluate` reports every metric and stage)")
    http.close()
    grpc.close()
