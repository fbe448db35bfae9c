"""Offline evaluation of what the project serves, on the held-out interactions of the split.

Four systems, each recommending ``max(ks)`` items per test user with the user's training
items excluded (relevance = the user's test items):

1. ``most_popular`` - training popularity;
2. ``two_tower_exact`` - the exported user tower, exact inner-product search (numpy);
3. ``two_tower_milvus`` - the same vectors searched in the Milvus collection serving uses,
   through the serving ``QueryMilvus`` operator (so the cost of ANN shows);
4. ``cascade`` - the exported ensemble itself (Feast -> NVTabular -> user tower -> Milvus ->
   Feast -> NVTabular -> DLRM -> ordering), run in-process by the same runner Triton runs.

Needs Feast materialized and the Milvus collection built (``recsys evaluate`` does both).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from core.artifacts import Artifacts
from core.config import Config
from ensemble.export import write_ensemble
from ensemble.runner import Recommender
from operators.query_milvus import QueryMilvus
from training import metrics
from training import workflows as wf

LOG = logging.getLogger(__name__)
SYSTEMS = ("most_popular", "two_tower_exact", "two_tower_milvus", "cascade")


def seen_lists(train: pd.DataFrame, user_ids: np.ndarray) -> list[np.ndarray]:
    """Each user's distinct training items."""
    grouped = train.drop_duplicates(["user_id", "item_id"]).groupby("user_id")["item_id"].apply(np.array)
    empty = np.zeros(0, dtype=np.int64)
    return [np.asarray(grouped.get(u, empty), dtype=np.int64) for u in user_ids]


def most_popular(train: pd.DataFrame, seen: list[np.ndarray], k: int) -> np.ndarray:
    order = train["item_id"].value_counts().index.to_numpy(dtype=np.int64)
    out = np.full((len(seen), k), -1, dtype=np.int64)
    for row, items in enumerate(seen):
        head = order[: k + len(items)]
        kept = head[~np.isin(head, items)][:k]
        out[row, : len(kept)] = kept
    return out


def user_vectors(artifacts: Artifacts, user_ids: np.ndarray) -> np.ndarray:
    """The exported user tower applied to the users' encoded features (as training left them)."""
    import tensorflow as tf

    users = pd.read_parquet(artifacts.users).set_index("user_id").loc[user_ids].reset_index()
    encoded = wf.transform(wf.load_workflow(artifacts.user_workflow), users)
    signature = tf.saved_model.load(str(artifacts.query_tower)).signatures["serving_default"]
    specs = signature.structured_input_signature[1]
    out = []
    for start in range(0, len(encoded), 4096):
        part = encoded.iloc[start:start + 4096]
        inputs = {name: tf.constant(part[name].to_numpy(), dtype=spec.dtype) for name, spec in specs.items()}
        out.append(next(iter(signature(**inputs).values())).numpy())
    return np.concatenate(out)


def exact_search(vectors: np.ndarray, artifacts: Artifacts, seen: list[np.ndarray], k: int) -> np.ndarray:
    items = pd.read_parquet(artifacts.item_vectors)
    item_ids = items["item_id"].to_numpy(dtype=np.int64)
    matrix = np.stack(items["embedding"].to_numpy()).astype(np.float32)
    position = pd.Index(item_ids)
    out = np.empty((len(vectors), k), dtype=np.int64)
    for start in range(0, len(vectors), 2048):
        scores = vectors[start:start + 2048] @ matrix.T
        for row, items_seen in enumerate(seen[start:start + 2048]):
            scores[row, position.get_indexer(items_seen)] = -np.inf
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        out[start:start + 2048] = item_ids[top]
    return out


def milvus_search(config: Config, ensemble_dir: Path, vectors: np.ndarray, seen: list[np.ndarray],
                  k: int) -> np.ndarray:
    from merlin.table import TensorTable

    op = QueryMilvus(top_k=k, exclude_column="history")
    op.load_artifacts(str(ensemble_dir))
    out = []
    for start in range(0, len(vectors), 256):
        history = np.empty(len(seen[start:start + 256]), dtype=object)
        history[:] = seen[start:start + 256]
        table = TensorTable({"user_embedding": vectors[start:start + 256], "history": history})
        out.append(np.asarray(op.transform(None, table)["candidate_ids"].values))
    return np.concatenate(out)


def export_evaluation_ensemble(config: Config, artifacts: Artifacts, top_k: int) -> Path:
    """The serving ensemble with ``top_k`` outputs, written under the workdir."""
    config = replace(config, serving=replace(config.serving, top_k=top_k))
    return write_ensemble(config, artifacts, config.workdir / "evaluation" / "ensemble")


def cascade(ensemble_dir: Path, user_ids: np.ndarray, batch: int = 256) -> tuple[np.ndarray, dict]:
    recommender = Recommender.load(ensemble_dir)
    out, sources = [], []
    for start in range(0, len(user_ids), batch):
        answer = recommender.recommend(user_ids[start:start + batch])
        out.append(answer["item_ids"])
        sources += list(answer["source"])
    failures = {view: n for view, n in recommender.feature_store_failures.items() if n}
    if failures:  # serving degrades gracefully; an evaluation must not measure the degraded path
        raise RuntimeError(f"the Feast online store could not be read during the evaluation "
                           f"(ids per feature view: {failures}); run `recsys features` and retry")
    return np.concatenate(out), pd.Series(sources).value_counts().to_dict()


def evaluate(config: Config, ks=(10, 50), systems=SYSTEMS, max_users: int | None = None) -> dict:
    """Metrics of every system at every k; written to ``workdir/evaluation/metrics.json``."""
    artifacts = Artifacts.of(config)
    train = pd.read_parquet(artifacts.train_interactions)
    test = pd.read_parquet(artifacts.test_interactions)
    if test.empty:
        raise ValueError(f"nothing was held out in {config.workdir} (a production build trains on every "
                         f"interaction): run `recsys evaluate` without --no-train, or give --test-interactions")
    user_ids = np.sort(test["user_id"].unique())
    if max_users and len(user_ids) > max_users:
        user_ids = np.sort(np.random.default_rng(0).choice(user_ids, size=max_users, replace=False))
    truth = test[test["user_id"].isin(user_ids)][["user_id", "item_id"]]
    catalogue = len(pd.read_parquet(artifacts.items, columns=["item_id"]))
    k = max(ks)
    seen = seen_lists(train, user_ids)
    results, seconds, notes = {}, {}, {}
    vectors = None
    ensemble_dir = None
    for system in systems:
        started = time.perf_counter()
        if system == "most_popular":
            recommended = most_popular(train, seen, k)
        elif system in ("two_tower_exact", "two_tower_milvus"):
            vectors = user_vectors(artifacts, user_ids) if vectors is None else vectors
            if system == "two_tower_exact":
                recommended = exact_search(vectors, artifacts, seen, k)
            else:
                ensemble_dir = ensemble_dir or export_evaluation_ensemble(config, artifacts, k)
                recommended = milvus_search(config, ensemble_dir, vectors, seen, k)
        elif system == "cascade":
            ensemble_dir = ensemble_dir or export_evaluation_ensemble(config, artifacts, k)
            recommended, notes["cascade_sources"] = cascade(ensemble_dir, user_ids)
        else:
            raise ValueError(f"unknown system {system!r}: use {', '.join(SYSTEMS)}")
        seconds[system] = time.perf_counter() - started
        results[system] = metrics.ranking_metrics(recommended, user_ids, truth, ks=ks,
                                                  catalogue_size=catalogue)
        LOG.info("%s: ndcg@10 %.4f (%.1fs)", system, results[system].get("ndcg@10", float("nan")),
                 seconds[system])
    report = {"data": config.data.source, "split": json.loads(artifacts.report.read_text())["split"],
              "users": int(len(user_ids)), "catalogue": int(catalogue), "ks": list(ks),
              "results": results, "seconds": seconds, **notes,
              "training": json.loads(artifacts.report.read_text())}
    out = config.workdir / "evaluation" / "metrics.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=float))
    report["table"] = metrics.format_table(results, ks)
    return report


SESSION_SYSTEMS = ("most_popular", "item_to_item", "cascade")


def session_cases(test: pd.DataFrame, max_sessions: int | None = None,
                  seed: int = 0) -> tuple[np.ndarray, list[list[int]], np.ndarray]:
    """Held-out sessions with at least two clicks: (session ids, the first n-1 clicks most
    recent first and deduplicated, the n-th click)."""
    ordered = test.sort_values(["user_id", "timestamp"], kind="stable")
    sessions = ordered.groupby("user_id")["item_id"].apply(lambda s: s.to_numpy(np.int64))
    sessions = sessions[sessions.apply(len) > 1]
    if max_sessions and len(sessions) > max_sessions:
        sessions = sessions.loc[np.sort(np.random.default_rng(seed).choice(sessions.index, max_sessions,
                                                                           replace=False))]
    recent = [list(dict.fromkeys(clicks[:-1][::-1].tolist())) for clicks in sessions]
    targets = np.array([clicks[-1] for clicks in sessions], dtype=np.int64)
    return sessions.index.to_numpy(np.int64), recent, targets


def next_click_metrics(recommended: np.ndarray, targets: np.ndarray, k: int) -> dict[str, float]:
    """HitRate@k and MRR@k of the next click (the session-based literature's metrics)."""
    top = recommended[:, :k]
    hit = top == targets[:, None]
    ranks = np.argmax(hit, axis=1) + 1
    found = hit.any(axis=1)
    return {f"hit_rate@{k}": float(found.mean()), f"mrr@{k}": float(np.where(found, 1.0 / ranks, 0.0).mean())}


def _excluding(order: np.ndarray, seen: list[int], k: int) -> np.ndarray:
    kept = order[~np.isin(order, seen)][:k]
    return np.pad(kept, (0, k - len(kept)), constant_values=-1)


def item_to_item(artifacts: Artifacts, recent: list[list[int]], popular: np.ndarray, k: int) -> np.ndarray:
    """The last click's nearest items by inner product of the trained item vectors (the session's
    clicks excluded); the popular items where the last click has no vector."""
    vectors = pd.read_parquet(artifacts.item_vectors)
    ids = vectors["item_id"].to_numpy(np.int64)
    matrix = np.stack(vectors["embedding"].to_numpy()).astype(np.float32)
    row_of = pd.Series(np.arange(len(ids)), index=ids)
    out = np.empty((len(recent), k), dtype=np.int64)
    for row, clicks in enumerate(recent):
        last = row_of.get(clicks[0])
        order = popular if last is None else ids[np.argsort(-(matrix @ matrix[last]), kind="stable")]
        out[row] = _excluding(order, clicks, k)
    return out


def evaluate_sessions(config: Config, k: int = 20, max_sessions: int | None = 2000) -> dict:
    """Session-based evaluation on a ``sessions`` split: each held-out session's first n-1
    clicks are sent as ``recent_items`` (the sessions are unknown to Feast), the n-th is the
    truth; most-popular and item-to-item (the last click's nearest items) beside the served
    cascade. Every system excludes the session's clicks, as serving does, so a next click that
    repeats one is a miss for all (its share is reported). Written to
    ``workdir/evaluation/sessions.json``."""
    artifacts = Artifacts.of(config)
    train = pd.read_parquet(artifacts.train_interactions)
    test = pd.read_parquet(artifacts.test_interactions)
    user_ids, recent, targets = session_cases(test, max_sessions)
    if not len(user_ids):
        raise ValueError("no held-out session has two clicks: evaluate sessions on a `sessions` split "
                         "(recsys evaluate --split sessions)")
    popular = train["item_id"].value_counts().index.to_numpy(np.int64)
    results, seconds, sources = {}, {}, {}
    for system in SESSION_SYSTEMS:
        started = time.perf_counter()
        if system == "most_popular":
            recommended = np.stack([_excluding(popular, clicks, k) for clicks in recent])
        elif system == "item_to_item":
            recommended = item_to_item(artifacts, recent, popular, k)
        else:
            ensemble_dir = export_evaluation_ensemble(config, artifacts, k)
            recommender = Recommender.load(ensemble_dir)
            rows, answered, step = [], [], recommender.max_batch
            for start in range(0, len(user_ids), step):
                part = recent[start:start + step]
                padded = np.full((len(part), max(len(c) for c in part)), -1, dtype=np.int64)
                for row, clicks in enumerate(part):
                    padded[row, :len(clicks)] = clicks
                answer = recommender.recommend(user_ids[start:start + step], recent_items=padded)
                rows.append(answer["item_ids"])
                answered += list(answer["source"])
            recommended = np.concatenate(rows)
            sources = pd.Series(answered).value_counts().to_dict()
        seconds[system] = time.perf_counter() - started
        results[system] = next_click_metrics(recommended, targets, k)
    repeats = float(np.mean([t in clicks for t, clicks in zip(targets.tolist(), recent)]))
    report = {"data": config.data.source, "split": "sessions", "sessions": int(len(user_ids)), "k": k,
              "results": results, "seconds": seconds, "cascade_sources": sources,
              "repeat_next_click_share": repeats}
    out = config.workdir / "evaluation" / "sessions.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=float))
    report["table"] = "\n".join([f"{'system':16}{'HitRate@' + str(k):>12}{'MRR@' + str(k):>10}"] + [
        f"{system:16}{m[f'hit_rate@{k}']:>12.4f}{m[f'mrr@{k}']:>10.4f}" for system, m in results.items()])
    return report
