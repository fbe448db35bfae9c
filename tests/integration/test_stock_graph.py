"""The serving benchmark's stock-Merlin-operator graph (benchmarks/stock_graph.py), exported with
Merlin's executor runtime and served by a second real Triton next to ours: it answers single
users with raw catalogue ids over HTTP and gRPC, and the comparison reports ratios."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from benchmarks.serve import compare_stock, load, measure_stock
from core.artifacts import Artifacts
from recsys.runtime.servers import free_port

pytestmark = pytest.mark.integration


def test_stock_graph_is_served_and_compared_with_ours(serving_stack, catalogue, tmp_path):
    from benchmarks.stock_graph import STOCK_MODEL_NAME, export_stock_model
    from recsys.client import RecommenderClient
    from recsys.runtime.servers import TritonProcess, running

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


def _candidates(ensemble_dir, user: int) -> tuple[np.ndarray, np.ndarray]:
    """The retrieval operator's output for one user, running the exported graph in-process."""
    from merlin.dag import postorder_iter_nodes
    from merlin.dag.executors import LocalExecutor
    from merlin.systems.dag import Ensemble
    from merlin.table import TensorTable

    from ensemble.executor import ServingExecutor
    from operators.query_milvus import QueryMilvus

    graph = Ensemble.load(str(ensemble_dir))
    nodes = list(postorder_iter_nodes(graph.graph.output_node, flatten_subgraphs=True))
    for node in nodes:
        node.op.load_artifacts(str(ensemble_dir))
    executor = ServingExecutor()
    executor._outputs = {}  # keep every node's output of this one request
    request = {"user_id": np.array([user], dtype=np.int64)}
    if "recent_items" in graph.input_schema.column_names:  # ours: no session clicks (what the runner sends)
        request["recent_items"] = np.full((1, 1), -1, dtype=np.int64)
    LocalExecutor.transform(executor, TensorTable(request), [graph.graph.output_node])
    retrieval = next(node for node in nodes if isinstance(node.op, QueryMilvus))
    table = executor._outputs[id(retrieval)]
    return np.asarray(table["candidate_ids"].values), np.asarray(table["candidate_scores"].values)


def test_stock_graph_ranks_the_same_candidates_as_ours(serving_stack, catalogue, tmp_path):
    from benchmarks.stock_graph import STOCK_MODEL_NAME, export_stock_model

    config = serving_stack[0]
    stock_dir = export_stock_model(config, Artifacts.of(config), tmp_path) / STOCK_MODEL_NAME / "1" / "ensemble"
    ours_dir = config.model_repository / config.serving.model_name / "1" / "ensemble"
    for user in catalogue[0][:3].tolist():
        ours, stock = _candidates(ours_dir, user), _candidates(stock_dir, user)
        assert ours[0].shape == (1, config.serving.retrieval_k)
        np.testing.assert_array_equal(stock[0], ours[0], err_msg=f"user {user}")
        # the same inner products up to float rounding (NVTabular's DataFrame path and our
        # compiled workflow round the user's normalized numbers differently: ~1e-7 relative)
        np.testing.assert_allclose(stock[1], ours[1], rtol=1e-5, err_msg=f"user {user}")
