"""The serving benchmark's stock-Merlin-operator graph (benchmarks/stock_graph.py), exported with
Merlin's executor runtime and served by a second real Triton next to ours: it answers single
users with raw catalogue ids over HTTP and gRPC, and the comparison reports ratios."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from benchmarks.serve import compare_stock, load, measure_stock
from recsys.servers import free_port
from training.pipeline import Artifacts

pytestmark = pytest.mark.integration


def test_stock_graph_is_served_and_compared_with_ours(serving_stack, catalogue, tmp_path):
    from benchmarks.stock_graph import STOCK_MODEL_NAME, export_stock_model
    from recsys.client import RecommenderClient
    from recsys.servers import TritonProcess, running

    config, _, triton = serving_stack
    users, items, _ = catalogue
    known = users[:20]
    ours = [load(url, protocol, known, 1, 1, 5) for protocol, url in (("http", triton.http_url),
                                                                       ("grpc", triton.grpc_url))]
    # a second Triton on its own ports (ours keeps serving)
    config = dataclasses.replace(config, triton=dataclasses.replace(
        config.triton, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()))
    stock = measure_stock(config, known, [1], 5)
    assert [(r["protocol"], r["errors"], r["requests"]) for r in stock] == [("http", 0, 5), ("grpc", 0, 5)]
    table = compare_stock(ours, stock)
    assert len(table) == 2 and (table["p50_ratio"] > 0).all() and (table["stock_errors"] == 0).all()

    # what it answers: top_k raw catalogue ids per user, none of the user's own items
    repository = export_stock_model(config, Artifacts.of(config), tmp_path / "stock")
    server = TritonProcess(dataclasses.replace(
        config, serving=dataclasses.replace(config.serving, model_name=STOCK_MODEL_NAME)), repository)
    history = pd.read_parquet(Artifacts.of(config).users).set_index("user_id")["history"]
    with running(server):
        client = RecommenderClient(server.grpc_url, "grpc")
        try:
            for user in known[:5]:
                answer = client.infer(STOCK_MODEL_NAME, "user_id", np.array([user]), ("ordered_ids", "ordered_scores"))
                ids = answer["ordered_ids"].reshape(-1).tolist()
                assert len(ids) == config.serving.top_k and set(ids) <= items
                assert not set(ids) & set(np.asarray(history[user]).tolist()), user
        finally:
            client.close()
