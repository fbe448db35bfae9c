"""Model training with validation-chosen epochs and final-order weight.

A validation split is carved from the training interactions (the same split method, another
seed). The Two-Tower model is trained on the rest with early stopping on validation NDCG@10;
its top candidates (the user's training items excluded, as in serving) give the ranker its hard
negatives; the ranker is trained with early stopping on the validation NDCG@10 of the final
order, for each weight of the retrieval score in that order. The chosen epochs and weight are
then used to train on all training interactions (:func:`train_models`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import sparse

from core.config import Config
from core.scoring import blend_scores
from training import features, metrics
from training.models import train_dlrm, train_two_tower
from training.tables import Tables

LOG = logging.getLogger(__name__)
WEIGHTS = (0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
GATE_METRICS = ("ndcg@10", "recall@10", "hit_rate@10")


@dataclass
class Choice:
    """What validation chose, and the curves it chose from."""

    tower_epochs: int
    ranker_epochs: int
    retrieval_weight: float
    curves: dict = field(default_factory=dict)
    # The cascade's order (exact retrieval, ranker, blend) at the chosen epochs and weight on
    # the validation users: what the release gate compares (empty without validation).
    validation: dict = field(default_factory=dict)


def seen_matrix(pairs: tuple[np.ndarray, np.ndarray], n_users: int, n_items: int) -> sparse.csr_matrix:
    return sparse.csr_matrix((np.ones(len(pairs[0]), dtype=bool), pairs), shape=(n_users, n_items))


def top_candidates(user_vectors: np.ndarray, item_vectors: np.ndarray, seen: sparse.csr_matrix,
                   k: int, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top ``k`` item rows per user, seen items excluded: (rows, scores)."""
    k = min(k, item_vectors.shape[0])
    rows = np.zeros((len(user_vectors), k), dtype=np.int64)
    scores = np.zeros((len(user_vectors), k), dtype=np.float32)
    for start in range(0, len(user_vectors), chunk):
        block = user_vectors[start:start + chunk] @ item_vectors.T
        block[seen[start:start + chunk].toarray()] = -np.inf
        part = np.argpartition(-block, k - 1, axis=1)[:, :k]
        part_scores = np.take_along_axis(block, part, 1)
        order = np.argsort(-part_scores, axis=1, kind="stable")
        rows[start:start + chunk] = np.take_along_axis(part, order, 1)
        scores[start:start + chunk] = np.take_along_axis(part_scores, order, 1)
    return rows, scores


class Validation:
    """NDCG@10 of recommendations for a sample of validation users."""

    def __init__(self, tables, valid: pd.DataFrame, max_users: int, seed: int):
        user_row = pd.Series(np.arange(len(tables.users)), index=tables.users["user_id"].to_numpy())
        ids = valid["user_id"].unique()
        if len(ids) > max_users:
            ids = np.random.default_rng(seed).choice(ids, size=max_users, replace=False)
        self.user_ids = np.sort(ids)
        self.rows = user_row.loc[self.user_ids].to_numpy()
        self.truth = valid[valid["user_id"].isin(self.user_ids)][["user_id", "item_id"]]
        self.item_ids = tables.items["item_id"].to_numpy()

    def metrics(self, item_rows: np.ndarray, scores: np.ndarray | None = None) -> dict[str, float]:
        """NDCG, recall and hit rate at 10 of the first ten rows (ordered by ``scores`` if given)."""
        if scores is not None:
            item_rows = np.take_along_axis(item_rows, np.argsort(-scores, axis=1, kind="stable"), 1)
        recommended = self.item_ids[item_rows[:, :10]]
        found = metrics.ranking_metrics(recommended, self.user_ids, self.truth, ks=(10,))
        return {name: found[name] for name in GATE_METRICS}

    def ndcg(self, item_rows: np.ndarray, scores: np.ndarray | None = None) -> float:
        return self.metrics(item_rows, scores)["ndcg@10"]


def _user_inputs(tables, spec, rows=None):
    return {name: (values if rows is None else values[rows])
            for name, values in tables.user_inputs.items() if name in spec.columns}


def tune(config: Config, data, train: pd.DataFrame, workflows: dict, specs: dict, method: str) -> Choice:
    """Choose epochs and the retrieval weight on a validation split of ``train``."""
    cfg = config.training
    if not cfg.validate:
        return Choice(cfg.retrieval_epochs, cfg.ranking_epochs, cfg.retrieval_weight)
    inner = "last" if method == "sessions" else method  # validation users must be known to training
    sub_train, valid = features.split(train, inner, config.data.test_fraction, config.data.split_seed + 1)
    tables = Tables.build(data, sub_train, workflows, specs, cfg.max_history)
    check = Validation(tables, valid, cfg.validation_users, cfg.seed)
    seen = seen_matrix(tables.pairs, len(tables.users), len(tables.items))
    k = config.serving.retrieval_k
    tower_curve: list[float] = []
    best: dict = {}

    def after_tower_epoch(epoch, model):
        users = model.user_vectors(_user_inputs(tables, specs["tower"], check.rows))
        rows, _ = top_candidates(users, model.item_vectors(tables.item_inputs), seen[check.rows], k)
        tower_curve.append(check.ndcg(rows))
        LOG.info("validation: two-tower epoch %d ndcg@10 %.4f", epoch, tower_curve[-1])
        if tower_curve[-1] >= max(tower_curve):
            best["tower"] = model.user_vectors(_user_inputs(tables, specs["tower"])), \
                model.item_vectors(tables.item_inputs)
        return len(tower_curve) - int(np.argmax(tower_curve)) <= cfg.patience

    train_two_tower(_user_inputs(tables, specs["tower"]), tables.item_inputs, tables.pairs, specs["tower"],
                    specs["item"], cfg, cfg.retrieval_epochs, after_tower_epoch, label="validation two-tower")
    candidates, retrieval_scores = top_candidates(*best["tower"], seen, k)
    ranker_curve: list[list[float]] = []
    measured: list[list[dict]] = []

    def after_ranker_epoch(epoch, ranker):
        rows = candidates[check.rows]
        inputs = _user_inputs(tables, specs["ranker"], check.rows)
        inputs.update({name: values[rows] for name, values in tables.item_inputs.items()})
        ranking = ranker.score(inputs)
        measured.append([check.metrics(rows, blend_scores(retrieval_scores[check.rows], ranking, w))
                         for w in WEIGHTS])
        ranker_curve.append([found["ndcg@10"] for found in measured[-1]])
        LOG.info("validation: ranker epoch %d ndcg@10 by retrieval weight %s: %s", epoch, WEIGHTS,
                 np.round(ranker_curve[-1], 4).tolist())
        best_epoch = int(np.argmax([max(c) for c in ranker_curve]))
        return len(ranker_curve) - best_epoch <= cfg.patience

    train_dlrm(_user_inputs(tables, specs["ranker"]), tables.item_inputs, tables.pairs, specs["ranker"],
               specs["item"], hard_negatives(candidates, len(tables.items), cfg), cfg, cfg.ranking_epochs,
               after_ranker_epoch, label="validation ranker")
    curve = np.array(ranker_curve)
    epoch, weight = np.unravel_index(int(np.argmax(curve)), curve.shape)
    choice = Choice(int(np.argmax(tower_curve)) + 1, int(epoch) + 1, float(WEIGHTS[weight]),
                    {"tower_ndcg@10": tower_curve, "ranker_ndcg@10_by_weight": curve.tolist(),
                     "weights": list(WEIGHTS), "validation_users": int(len(check.user_ids))},
                    {**measured[epoch][weight], "users": int(len(check.user_ids)),
                     "interactions": int(len(check.truth))})
    LOG.info("validation chose %s", choice)
    return choice


def hard_negatives(candidates: np.ndarray, n_items: int, cfg):
    """Negatives for the ranker: ``cfg.hard_negative_share`` of ``cfg.ranking_negatives`` from
    the user's retrieval candidates (which exclude the user's items), the rest uniform."""
    count = cfg.ranking_negatives
    hard = int(round(count * cfg.hard_negative_share))

    def draw(user_rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        columns = rng.integers(0, candidates.shape[1], size=(len(user_rows), hard))
        picked = np.take_along_axis(candidates[user_rows], columns, 1)
        uniform = rng.integers(0, n_items, size=(len(user_rows), count - hard))
        return np.concatenate([picked, uniform], axis=1)

    return draw


def train_models(config: Config, tables, specs: dict, choice: Choice):
    """Train both models on all training interactions with the chosen epochs."""
    cfg = config.training
    two_tower = train_two_tower(_user_inputs(tables, specs["tower"]), tables.item_inputs, tables.pairs,
                                specs["tower"], specs["item"], cfg, choice.tower_epochs)
    seen = seen_matrix(tables.pairs, len(tables.users), len(tables.items))
    candidates, _ = top_candidates(two_tower.user_vectors(_user_inputs(tables, specs["tower"])),
                                   two_tower.item_vectors(tables.item_inputs), seen,
                                   config.serving.retrieval_k)
    ranker = train_dlrm(_user_inputs(tables, specs["ranker"]), tables.item_inputs, tables.pairs,
                        specs["ranker"], specs["item"], hard_negatives(candidates, len(tables.items), cfg),
                        cfg, choice.ranker_epochs)
    return two_tower, ranker
