"""The ANN benchmark (benchmarks/ann.py) at tiny size in CI: its own Milvus, the trained
embeddings' three scenarios and a clustered synthetic set, every index type it sweeps, the
markdown table, the CSV and one PNG plot per scenario."""
from __future__ import annotations

import pandas as pd
import pytest

from benchmarks import ann

pytestmark = pytest.mark.integration

TINY = ["--nq", "40", "--batch", "20", "--latency-queries", "5", "--top-k", "10"]


def test_trained_embeddings_scenarios(trained_config, tmp_path):
    out = tmp_path / "trained.md"
    ann.main(["--workdir", str(trained_config.workdir), "--indexes", "FLAT", "HNSW",
              "--scratch", str(tmp_path / "milvus"), "--out", str(out), *TINY])
    table = pd.read_csv(out.with_suffix(".csv"))
    assert list(table["scenario"].unique()) == ["item->item", "user->user", "user->item"]
    flat = table[table["index"] == "FLAT"]
    assert (flat["recall"] > 0.99).all()  # brute force in Milvus finds the exact neighbours
    assert (table["qps"] > 0).all() and (table["ratio_to_exact"] > 0).all()
    text = out.read_text()
    assert "recall@10" in text and "x exact" in text
    for slug in ("item--item", "user--user", "user--item"):
        assert (tmp_path / f"trained-{slug}.png").stat().st_size > 1000


def test_synthetic_set_sweeps_ivf_pq_scann_and_hnsw(tmp_path):
    out = tmp_path / "synthetic.md"
    ann.main(["--synthetic", "3000", "--centres", "30", "--indexes", "IVF_PQ", "SCANN", "HNSW",
              "--scratch", str(tmp_path / "milvus"), "--out", str(out), *TINY])
    table = pd.read_csv(out.with_suffix(".csv"))
    built = table[table["index"] != "exact (numpy)"]
    assert set(built["index"]) == {"IVF_PQ", "SCANN", "HNSW"}
    assert built["search_params"].str.contains("failed").sum() == 0
    assert (built["recall"].between(0, 1)).all()
    assert (built[built["index"] != "FLAT"]["index_mib"] > 0).all()
    # the HNSW sweep is monotone in ef: a larger beam never finds fewer true neighbours
    hnsw = built[built["index"] == "HNSW"]["recall"].to_numpy()
    assert (hnsw[1:] >= hnsw[:-1] - 1e-9).all()
    assert "Fastest configuration with recall@10 >= 0.95" in out.read_text()
    assert (tmp_path / "synthetic-synthetic-3000.png").exists()
