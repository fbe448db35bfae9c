"""Hyper-parameter sweep on the validation split only (never the test split).

For each variant of ``[training]`` settings, runs what ``recsys train`` runs before the final
fit - the split, the feature tables, the workflows, and the validation-driven choice of epochs
and retrieval weight - and reports the validation NDCG@10 of the Two-Tower model alone and of
the final order (ranker + blend). Pick the best variant, put it in the configuration, train.

    python -m benchmarks.tune                       # MovieLens-100K, the default variants
    python -m benchmarks.tune --variants '[{"embedding_dim": 32}, {"learning_rate": 0.001}]'
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd

from core.config import load_config
from training import pipeline, tables, tuning
from training import workflows as wf

DEFAULT_VARIANTS = [
    {},
    {"embedding_dim": 32},
    {"embedding_dim": 128},
    {"learning_rate": 0.001, "retrieval_epochs": 30, "ranking_epochs": 12},
    {"tower_layers": [128, 64]},
    {"ranking_top_layers": [64]},
]


def validate(config) -> dict:
    data, train, _ = pipeline.load_data(config)
    user_features, item_features = tables.side_features(data)
    users = pipeline.features.user_table(train, data.users, config.training.max_history)
    items = pipeline.features.item_table(data.interactions, train, data.items)
    with tempfile.TemporaryDirectory() as scratch:
        workflows = wf.fit_workflows(users, items, user_features, item_features, Path(scratch))
        choice = tuning.tune(config, data, train, workflows, tables.model_specs(workflows),
                             pipeline.resolve_split(config))
    curves = choice.curves
    return {"two_tower_ndcg@10": max(curves["tower_ndcg@10"]),
            "final_ndcg@10": max(max(row) for row in curves["ranker_ndcg@10_by_weight"]),
            "tower_epochs": choice.tower_epochs, "ranker_epochs": choice.ranker_epochs,
            "retrieval_weight": choice.retrieval_weight}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="TOML configuration (data source etc.)")
    parser.add_argument("--variants", help="JSON list of [training] overrides")
    parser.add_argument("--out", help="write the table as markdown here")
    args = parser.parse_args(argv)
    variants = json.loads(args.variants) if args.variants else DEFAULT_VARIANTS
    rows = []
    for variant in variants:
        config = load_config(args.config, overrides={"training": variant})
        started = time.perf_counter()
        row = {"variant": json.dumps(variant) or "{}", **validate(config),
               "seconds": time.perf_counter() - started}
        rows.append(row)
        print(row, flush=True)
    table = pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4f")
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
