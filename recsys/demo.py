"""The end-to-end demo: build everything, serve it from real Milvus + Triton, query it over
HTTP and gRPC, and print recommendations, latency and per-stage timings."""
from __future__ import annotations

import re
import time
import urllib.request

import numpy as np
import pandas as pd

from recsys import stack
from recsys.client import RecommenderClient
from recsys.config import Config
from training.pipeline import Artifacts


def _say(message: str = "") -> None:
    print(message, flush=True)


def stage_seconds(metrics_url: str) -> dict[str, float]:
    """Cumulative per-stage seconds from Triton's metrics endpoint (our custom counters)."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    pattern = re.compile(r'^recsys_stage_seconds_total\{stage="([^"]+)"\} ([0-9.eE+-]+)$', re.M)
    return {stage: float(value) for stage, value in pattern.findall(text)}


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


def hit_rate(client: RecommenderClient, test: pd.DataFrame, popular: np.ndarray, k: int,
             batch: int = 50) -> tuple[float, float]:
    """HitRate@k of the served cascade and of the most-popular list on held-out last clicks."""
    hits = 0
    for start in range(0, len(test), batch):
        chunk = test.iloc[start:start + batch]
        answer = client.recommend(chunk["user_id"].to_numpy())["item_ids"]
        hits += int((answer == chunk["item_id"].to_numpy()[:, None]).any(axis=1).sum())
    baseline = float(np.isin(test["item_id"].to_numpy(), popular[:k]).mean())
    return hits / len(test), baseline


def run_demo(config: Config, requests: int = 300, eval_users: int = 1000) -> None:
    """Train, load Feast, index, export, serve, query; stop everything it started."""
    started = time.perf_counter()
    _say(f"== 1/5 training on a synthetic YOOCHOOSE-format click log ({config.data.num_sessions:,} sessions)")
    artifacts: Artifacts = stack.train(config)
    report = pd.read_json(artifacts.report, typ="series")
    _say(f"   {report['clicks']:,} clicks, {report['users']:,} users, {report['items']:,} items; "
         f"Two-Tower {report['timings']['two_tower_s']:.0f}s, DLRM {report['timings']['dlrm_s']:.0f}s")
    _say("== 2/5 Feast: apply + materialize-incremental (SQLite online store)")
    stack.load_features(config)
    _say("== 3/5 exporting the Triton model repository")
    repository = stack.export(config)
    _say(f"   {repository / config.serving.model_name}")
    _say("== 4/5 starting Milvus and Triton, indexing item vectors")
    with stack.local_stack(config, reindex=True) as (milvus, triton):
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
    items = pd.read_parquet(artifacts.items).set_index("item_id")
    test = pd.read_parquet(artifacts.test_clicks)
    popular = pd.read_parquet(artifacts.popular_items)["item_id"].to_numpy()

    sample = users.sample(3, random_state=1)
    unknown = int(users["user_id"].max()) + 1_000_000
    request = np.r_[sample["user_id"].to_numpy(), unknown]
    answer_http = http.recommend(request)
    answer_grpc = grpc.recommend(request)
    same = all(np.array_equal(answer_http[k], answer_grpc[k]) for k in ("item_ids", "fallback"))
    _say(f"   one batched request of {len(request)} users, HTTP and gRPC answers identical: {same}")
    users_by_id = users.set_index("user_id")
    for row, user_id in enumerate(request):
        known = users_by_id.reindex([user_id]).iloc[0]
        who = ("unknown user -> most-popular fallback" if answer_grpc["fallback"][row]
               else f"activity {known['user_activity']}, top category {known['user_top_category']}")
        _say(f"   user {user_id} ({who})")
        ids, scores = answer_grpc["item_ids"][row], answer_grpc["scores"][row]
        cats = items.reindex(ids)["item_category"].fillna("?").to_numpy()
        _say("     " + "  ".join(f"{i}[cat {c}] {s:.3f}" for i, c, s in zip(ids[:5], cats[:5], scores[:5]))
             + "  ...")

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

    evaluated = test.sample(min(eval_users, len(test)), random_state=2)
    cascade, baseline = hit_rate(grpc, evaluated, popular, config.serving.top_k)
    _say(f"   HitRate@{config.serving.top_k} on {len(evaluated)} held-out last clicks: "
         f"served cascade {cascade:.3f} vs most-popular {baseline:.3f}")
    http.close()
    grpc.close()
