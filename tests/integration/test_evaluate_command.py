"""`recsys evaluate` on a new work directory: it trains with a held-out split, indexes the
trained vectors in a collection of their own (an evaluation run is not a release), and writes
the metrics of every stage; nothing is released or served."""
from __future__ import annotations

import json

import pytest

from recsys import cli
from recsys.jobs import releases

pytestmark = pytest.mark.integration


def test_evaluate_trains_indexes_and_reports_without_releasing(config_factory, tmp_path, monkeypatch, capsys):
    config = config_factory(tmp_path, milvus={"collection": "evaluated_items"})
    monkeypatch.setattr(cli, "_config", lambda args: config)
    assert cli.main(["evaluate", "--eval-users", "30", "--no-progress"]) == 0
    shown = capsys.readouterr().out
    metrics = json.loads((config.workdir / "evaluation" / "metrics.json").read_text())
    assert "cascade" in shown and "cascade" in json.dumps(metrics)
    assert releases.serving_release(config) is None and not config.model_repository.exists()
