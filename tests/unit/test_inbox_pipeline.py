"""New interaction files: validated (a bad file imports nothing and names its row), imported once
(ledger last, files moved out of the inbox), read by the next build; the pipeline's steps resume
after a failure and stop at a refused gate."""
from __future__ import annotations

import json

import pytest

from recsys.jobs import inbox, pipeline
from training import imported, sources
from training.dataset import DataError


@pytest.fixture
def config(config_factory, tmp_path):
    return config_factory(tmp_path)


def _known(config):
    data = sources.load(config.data)
    return data.interactions["user_id"].iloc[0], data.items["item_id"].tolist()


def test_a_bad_file_imports_nothing_and_names_file_row_and_column(config):
    user, items = _known(config)
    config.inbox_dir.mkdir(parents=True)
    good = config.inbox_dir / "a.csv"
    good.write_text(f"user_id,item_id,timestamp\n{user},{items[0]},2026-12-01T10:00:00Z\n")
    bad = config.inbox_dir / "b.csv"
    bad.write_text(f"user_id,item_id,timestamp\n{user},{items[1]},2026-12-01T10:00:00Z\n{user},1,1764583200\n")
    with pytest.raises(DataError, match=r"b\.csv, line 3, column 'item_id': 1 is not in the items file.*nothing "
                                        r"was imported"):
        inbox.validate(config, inbox.pending(config))
    assert imported.ledger(config.imported_dir) == [] and good.exists() and bad.exists()
    bad.write_text("user_id,item_id,timestamp\n7,8,yesterday\n")
    with pytest.raises(DataError, match="unparseable timestamp 'yesterday'"):
        inbox.validate(config, inbox.pending(config))


def test_new_files_are_imported_once_and_the_next_build_reads_them(config):
    user, items = _known(config)
    config.inbox_dir.mkdir(parents=True)
    text = f"user_id,item_id,timestamp,event_type\n{user},{items[0]},1764583200,click\n12345678,{items[1]},1764583300,buy\n"
    (config.inbox_dir / "day1.csv").write_text(text)
    new, repeated = inbox.validate(config, inbox.pending(config))
    assert [f.path.name for f in new] == ["day1.csv"] and repeated == []
    assert inbox.import_files(config, new, repeated) == 2
    assert inbox.pending(config) == [] and len(list((config.inbox_dir / "imported").glob("*-day1.csv"))) == 1
    [entry] = imported.ledger(config.imported_dir)
    assert entry["file"] == "day1.csv" and entry["rows"] == 2
    base = sources.load(config.data)
    data = imported.appended(base, config.imported_dir)
    assert len(data.interactions) == len(base.interactions) + 2
    assert 12345678 in set(data.interactions["user_id"])  # a new user is a user
    (config.inbox_dir / "again.csv").write_text(text)  # the same content under another name
    new, repeated = inbox.validate(config, inbox.pending(config))
    assert new == [] and [p.name for p in repeated] == ["again.csv"]


def _steps(monkeypatch, calls, fail_at=None, refuse=False):
    def step(name):
        def run(config, run, force, outcome):
            calls.append(name)
            if name == fail_at:
                raise RuntimeError(f"{name} broke")
            if name == "export":
                run["release"] = 2
            if name == "gate" and refuse and not force:
                run["status"] = "refused"
            return f"{name} ok"
        return run
    monkeypatch.setattr(pipeline, "_STEP", {name: step(name) for name in pipeline.STEPS})


def _drop_file(config):
    user, items = _known(config)
    config.inbox_dir.mkdir(parents=True, exist_ok=True)
    (config.inbox_dir / "day.csv").write_text(f"user_id,item_id,timestamp\n{user},{items[0]},1764583200\n")


def test_nothing_new_is_a_quiet_run(config):
    assert pipeline.run_pipeline(config, say=lambda _: None).status == "nothing new"
    assert not (pipeline.folder(config) / "current.json").exists()


def test_a_failed_step_is_resumed_from_where_it_stopped(config, monkeypatch):
    _drop_file(config)
    calls: list[str] = []
    _steps(monkeypatch, calls, fail_at="train")
    with pytest.raises(pipeline.PipelineError, match="step train failed: train broke. the serving release and the online store are as before"):
        pipeline.run_pipeline(config, say=lambda _: None)
    state = json.loads((pipeline.folder(config) / "current.json").read_text())
    assert list(state["steps"]) == ["import"] and state["status"] == "failed at train"
    calls.clear()
    _steps(monkeypatch, calls)
    outcome = pipeline.run_pipeline(config, say=lambda _: None)
    assert calls == list(pipeline.STEPS[1:]) and outcome.resumed and outcome.status == "done"
    assert outcome.files == ["day.csv"] and not (pipeline.folder(config) / "current.json").exists()
    assert "release" in outcome.summary() and len(list((pipeline.folder(config) / "runs").glob("*.json"))) == 1


def test_a_refused_gate_ends_the_run_before_anything_serves(config, monkeypatch):
    _drop_file(config)
    calls: list[str] = []
    _steps(monkeypatch, calls, refuse=True)
    outcome = pipeline.run_pipeline(config, say=lambda _: None)
    assert calls == ["import", "train", "export", "gate"] and outcome.status == "refused"
    assert "NOT rolled out" in outcome.summary()


def test_one_run_at_a_time(config):
    with pipeline._one_at_a_time(config):
        with pytest.raises(pipeline.PipelineError, match="in progress"):
            pipeline.run_pipeline(config, say=lambda _: None)
