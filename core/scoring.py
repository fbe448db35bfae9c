"""How the final order combines the two stages' scores (used by training to choose the weight
and by the serving ``OrderCandidates`` operator, so both compute the same thing)."""
from __future__ import annotations

import numpy as np


def standardize(scores: np.ndarray) -> np.ndarray:
    """Per row: (score - mean) / std over the row's finite entries; others become -inf."""
    scores = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(scores)
    count = np.maximum(finite.sum(axis=1, keepdims=True), 1)
    values = np.where(finite, scores, 0.0)
    mean = values.sum(axis=1, keepdims=True) / count
    std = np.sqrt((np.where(finite, values - mean, 0.0) ** 2).sum(axis=1, keepdims=True) / count)
    return np.where(finite, (values - mean) / np.where(std > 0, std, 1.0), -np.inf)


def blend_scores(retrieval: np.ndarray, ranking: np.ndarray, retrieval_weight: float) -> np.ndarray:
    """The final score of each candidate ``[batch, k]``: a weighted sum of the per-user
    standardized retrieval score (the Two-Tower inner product) and ranking score (the DLRM
    logit). Weight 0 orders by the ranker alone."""
    w = float(retrieval_weight)
    if w <= 0:
        return standardize(ranking).astype(np.float32)
    if w >= 1:
        return standardize(retrieval).astype(np.float32)
    return (w * standardize(retrieval) + (1 - w) * standardize(ranking)).astype(np.float32)
