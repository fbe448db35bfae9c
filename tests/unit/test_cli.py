"""User mistakes on the command line get one clear line and a non-zero exit, no traceback."""
from __future__ import annotations

import pytest

from recsys.cli import main


@pytest.mark.parametrize("argv, message", [
    (["--config", "{tmp}/missing.toml", "status"], "missing.toml"),
    (["index", "--workdir", "{tmp}/empty"], "no trained artifacts in"),
    (["--workdir", "{tmp}/empty", "export"], "no trained artifacts in"),
    (["evaluate", "--no-train", "--interactions", "x.csv", "--workdir", "{tmp}/empty"],
     "--no-train evaluates the existing artifacts"),
    (["train", "--interactions", "{tmp}/missing.csv", "--workdir", "{tmp}/empty"], "file not found"),
])
def test_mistakes_are_reported_in_one_line(argv, message, tmp_path, capsys):
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert code == 1 and message in err and "Traceback" not in err, err


def test_argument_errors_exit_2_with_usage(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["recommend", "abc"])
    assert exit_.value.code == 2 and "invalid int value" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["train"], ["build"], ["evaluate"], ["batch"]])
def test_dask_scheduler_option_reaches_the_configuration(command, monkeypatch, tmp_path):
    from recsys.cli import _config, _parser

    monkeypatch.chdir(tmp_path)  # no ./recsys.toml
    args = _parser().parse_args([*command, "--dask-scheduler", "tcp://10.0.0.5:8786"])
    assert _config(args).dask_scheduler == "tcp://10.0.0.5:8786"
    monkeypatch.setenv("RECSYS_DASK_SCHEDULER", "tcp://10.0.0.6:8786")
    assert _config(_parser().parse_args(command)).dask_scheduler == "tcp://10.0.0.6:8786"


COMMANDS = [["demo"], ["build"], ["train"], ["evaluate"], ["features"], ["index"], ["export"], ["serve"],
            ["status"], ["batch"], ["recommend", "1"], ["similar", "1"], ["catalog", "count"],
            ["catalog", "rebuild"]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
@pytest.mark.parametrize("before", [True, False], ids=["before", "after"])
def test_every_common_option_works_before_and_after_the_command(command, before, monkeypatch, tmp_path):
    from recsys.cli import _config, _parser

    monkeypatch.chdir(tmp_path)
    (tmp_path / "my.toml").write_text('[serving]\ntop_k = 7\n')
    common = ["--config", str(tmp_path / "my.toml"), "--workdir", str(tmp_path / "w"),
              "--feature-repo", str(tmp_path / "repo"), "-v", "--no-progress"]
    args = _parser().parse_args(common + command if before else command + common)
    config = _config(args)
    assert config.serving.top_k == 7
    assert config.workdir == tmp_path / "w" and config.feature_repo == tmp_path / "repo"
    assert args.verbose is True and config.training.progress is False


@pytest.mark.parametrize("command", ["build", "train"])
def test_build_and_train_are_production_builds(command, monkeypatch, tmp_path, capsys):
    from recsys.jobs import stack

    calls = []
    monkeypatch.setattr(stack, "train", lambda config, production=False: calls.append(production))
    monkeypatch.setattr(stack, "load_features", lambda config: None)
    monkeypatch.setattr(stack, "export", lambda config: None)
    monkeypatch.chdir(tmp_path)
    assert main([command, "--workdir", str(tmp_path / "w")]) == 0
    assert calls == [True]


LIGHT_COMMAND = r'''
import contextlib, json, sys
from recsys import cli, status
from recsys.jobs import catalog, stack
from vector_index.client import MilvusUnavailable

def refused(cfg, timeout_s=None):
    raise MilvusUnavailable("not running (test)")

@contextlib.contextmanager
def no_servers(config, reindex=False):
    raise MilvusUnavailable("servers not started (test)")
    yield

catalog.connect = status.connect = refused
stack.require_artifacts, stack.local_stack = (lambda config: None), no_servers
code = cli.main(sys.argv[1:])
print(json.dumps({"code": code, "heavy": sorted(m for m in ("tensorflow", "nvtabular", "merlin")
                                              if m in sys.modules)}))
'''


@pytest.mark.parametrize("command", [["serve"], ["status"], ["catalog", "count"]])
def test_serve_status_and_catalog_do_not_load_tensorflow(command, tmp_path):
    """The parent process of `recsys serve`, `status` and `catalog` only needs paths, the
    configuration and clients: TensorFlow and NVTabular (seconds to import) stay out of it."""
    import json
    import subprocess
    import sys

    (tmp_path / "model_repository" / "recommender").mkdir(parents=True)
    result = subprocess.run([sys.executable, "-c", LIGHT_COMMAND, *command, "--workdir", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["heavy"] == [], (report, result.stderr[-2000:])
    assert report["code"] != 0  # it got as far as the (refused) servers
