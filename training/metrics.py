"""Offline top-K ranking metrics (binary relevance), vectorized.

For a user with relevant (held-out) items R and recommendations r_1..r_K (-1 = padding):
precision@k = hits@k / k; recall@k = hits@k / |R|; ndcg@k = DCG / IDCG with
DCG = sum over hits at rank i of 1/log2(i+1) and IDCG = sum_{i=1..min(|R|,k)} 1/log2(i+1);
map@k = (sum over hit ranks i of precision@i) / min(|R|, k); hit_rate@k = 1 if any hit.
These follow Microsoft Recommenders' precision/recall/ndcg_at_k with binary relevance.
coverage@k = distinct items recommended in the top k over all evaluated users / catalogue size.
Users are averaged with equal weight; a user with truth but absent from ``users`` counts as a
user with no hits.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

METRICS = ("precision", "recall", "ndcg", "map", "hit_rate", "coverage")
_LABELS = {"precision": "Precision", "recall": "Recall", "ndcg": "NDCG", "map": "MAP",
           "hit_rate": "HitRate", "coverage": "Coverage"}


def ranking_metrics(recommended: np.ndarray, users: np.ndarray, truth: pd.DataFrame, ks=(10, 50),
                    catalogue_size: int | None = None) -> dict[str, float]:
    """Metrics averaged over the users with truth (see the module docstring)."""
    recommended = np.asarray(recommended, dtype=np.int64)
    users = np.asarray(users, dtype=np.int64)
    if recommended.ndim != 2 or recommended.shape[0] != len(users):
        raise ValueError("recommended must be [n_users, K] with one row per user")
    if recommended.shape[1] < max(ks):
        raise ValueError(f"recommendations have {recommended.shape[1]} columns, fewer than k={max(ks)}")
    truth = truth[["user_id", "item_id"]].drop_duplicates()
    relevant = truth.groupby("user_id").size()
    evaluated = relevant.index.to_numpy(dtype=np.int64)
    n_relevant = relevant.to_numpy(dtype=np.float64)
    row_of = pd.Series(np.arange(len(users)), index=users)
    rows = row_of.reindex(evaluated).to_numpy()
    present = ~np.isnan(rows)
    kmax = max(ks)
    recs = np.full((len(evaluated), kmax), -1, dtype=np.int64)
    recs[present] = recommended[rows[present].astype(np.int64), :kmax]
    flat = pd.DataFrame({"user_id": np.repeat(evaluated, kmax), "item_id": recs.reshape(-1)})
    hits = pd.MultiIndex.from_frame(flat).isin(pd.MultiIndex.from_frame(truth))
    hits = hits.reshape(len(evaluated), kmax) & (recs >= 0)
    ranks = np.arange(1, kmax + 1)
    discounts = 1.0 / np.log2(ranks + 1)
    out: dict[str, float] = {"users": float(len(evaluated))}
    for k in ks:
        h = hits[:, :k]
        count = h.sum(axis=1)
        ideal = np.cumsum(discounts[:k])[np.minimum(n_relevant, k).astype(int) - 1]
        precision_at = np.cumsum(h, axis=1) / ranks[:k]
        out[f"precision@{k}"] = float(np.mean(count / k))
        out[f"recall@{k}"] = float(np.mean(count / n_relevant))
        out[f"ndcg@{k}"] = float(np.mean((h * discounts[:k]).sum(axis=1) / ideal))
        out[f"map@{k}"] = float(np.mean((precision_at * h).sum(axis=1) / np.minimum(n_relevant, k)))
        out[f"hit_rate@{k}"] = float(np.mean(count > 0))
        if catalogue_size:
            top = recs[:, :k]
            out[f"coverage@{k}"] = float(len(np.unique(top[top >= 0])) / catalogue_size)
    return out


def format_table(results: dict[str, dict[str, float]], ks=(10, 50)) -> str:
    """A markdown table: one row per system, each metric at each k."""
    any_row = next(iter(results.values()), {})
    columns = [(m, k) for m in METRICS for k in ks if f"{m}@{k}" in any_row]
    header = "| system | " + " | ".join(f"{_LABELS[m]}@{k}" for m, k in columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 1)]
    for system, values in results.items():
        lines.append(f"| {system} | " + " | ".join(f"{values[f'{m}@{k}']:.4f}" for m, k in columns) + " |")
    return "\n".join(lines)
