"""The quality gate on recorded release figures: refused beyond the margin, passed within it,
not gated without figures, and `recsys release rollout` says why and exits 3 (--force goes on)."""
from __future__ import annotations

import json

import pytest

from core.config import load_config
from recsys import cli
from recsys.jobs import gate, releases

GOOD = {"ndcg@10": 0.40, "recall@10": 0.20, "hit_rate@10": 0.80, "users": 300}


def _config(tmp_path, **release):
    return load_config(base={}, overrides={"workdir": str(tmp_path / "work"), "release": release}, environ={})


def _release(config, number: int, validation: dict, serving: bool = False) -> None:
    folder = releases.releases_dir(config) / str(number)
    folder.mkdir(parents=True)
    (folder / releases.RELEASE_FILE).write_text(json.dumps(
        {"id": number, "created": "2026-12-07T00:00:00Z", "alias": f"items__r{number}",
         "interactions": 1000 * number, "validation": validation}))
    if serving:
        releases._save_state(config, number, None)


def test_a_release_worse_than_the_margin_is_refused_with_both_figures(tmp_path):
    config = _config(tmp_path, max_regression=0.05)
    _release(config, 1, GOOD, serving=True)
    _release(config, 2, {**GOOD, "recall@10": 0.18})  # -10%
    verdict = gate.check(config, 2)
    assert not verdict.passed
    table = verdict.table()
    assert "release 1 (serving)" in table and "release 2" in table
    assert "0.2000" in table and "0.1800" in table and "-10.0%" in table
    assert "Recall@10" in verdict.reasons[0] and "NDCG@10" not in verdict.reasons[0]


def test_within_the_margin_or_better_passes(tmp_path):
    config = _config(tmp_path, max_regression=0.05)
    _release(config, 1, GOOD, serving=True)
    _release(config, 2, {**GOOD, "ndcg@10": 0.39, "hit_rate@10": 0.9})  # -2.5%, +12.5%
    assert gate.check(config, 2).passed


def test_the_margin_is_configurable(tmp_path):
    config = _config(tmp_path, max_regression=0.2)
    _release(config, 1, GOOD, serving=True)
    _release(config, 2, {**GOOD, "recall@10": 0.18})
    assert gate.check(config, 2).passed


def test_without_figures_or_without_a_serving_release_it_passes_and_says_so(tmp_path):
    config = _config(tmp_path)
    _release(config, 1, {}, serving=False)
    assert "nothing else serves" in gate.check(config, 1).reasons[0]
    releases._save_state(config, 1, None)
    _release(config, 2, GOOD)
    verdict = gate.check(config, 2)
    assert verdict.passed and "no validation figures" in verdict.reasons[0] and "[1]" in verdict.reasons[0]


def test_rollout_command_refuses_with_exit_3_and_the_table(tmp_path, capsys, monkeypatch):
    config = _config(tmp_path)
    _release(config, 1, GOOD, serving=True)
    _release(config, 2, {**GOOD, "ndcg@10": 0.2})
    rolled = []
    monkeypatch.setattr(releases, "rollout", lambda config, release, url: rolled.append(release) or release)
    monkeypatch.setattr(releases, "live_triton", lambda config: None)
    argv = ["--workdir", str(config.workdir), "release", "rollout"]
    assert cli.main(argv) == 3
    out = capsys.readouterr().out
    assert "refused" in out and "0.4000" in out and "0.2000" in out and rolled == []
    assert cli.main(argv + ["--force"]) == 0
    assert "--force" in capsys.readouterr().out and rolled == [None]


def test_release_list_shows_the_figures(tmp_path, capsys):
    config = _config(tmp_path)
    _release(config, 1, GOOD, serving=True)
    assert cli.main(["--workdir", str(config.workdir), "release", "list"]) == 0
    assert "serving" in (out := capsys.readouterr().out) and "NDCG@10 0.4000" in out


def test_an_unknown_release_is_an_error(tmp_path):
    config = _config(tmp_path)
    _release(config, 1, GOOD, serving=True)
    with pytest.raises(releases.ReleaseError, match="no release 99"):
        gate.check(config, 99)
