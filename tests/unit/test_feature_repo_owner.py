"""One Feast repository per work directory: training refuses to overwrite the features that
another work directory's served model reads, and a new repository directory is set up."""
from __future__ import annotations

import shutil

import pytest

from core.config import load_config
from training.feast_source import FEATURE_REPO_FILES, FEATURE_REPO_OWNER, check_feature_repo_owner, ensure_feature_repo


def _config(workdir, repo):
    return load_config(base={}, overrides={"workdir": str(workdir), "feature_repo": str(repo)}, environ={})


def test_a_new_feature_repo_gets_the_project_definitions(tmp_path):
    config = _config(tmp_path / "work", tmp_path / "repo")
    ensure_feature_repo(config)
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == sorted(FEATURE_REPO_FILES)
    (tmp_path / "repo" / "definitions.py").write_text("# edited by the user\n")
    ensure_feature_repo(config)  # never overwrites what is there
    assert (tmp_path / "repo" / "definitions.py").read_text() == "# edited by the user\n"


def test_training_refuses_a_feature_repo_another_workdir_wrote(tmp_path):
    first, second, repo = tmp_path / "first", tmp_path / "second", tmp_path / "repo"
    first.mkdir()
    (repo / "data").mkdir(parents=True)
    check_feature_repo_owner(_config(second, repo))  # nobody owns it yet
    (repo / "data" / FEATURE_REPO_OWNER).write_text(f"{first.resolve()}\n")
    check_feature_repo_owner(_config(first, repo))  # its own work directory retrains freely
    with pytest.raises(ValueError, match="holds the features of work directory .*--feature-repo"):
        check_feature_repo_owner(_config(second, repo))
    shutil.rmtree(first)  # the owner is gone: nothing left to break
    check_feature_repo_owner(_config(second, repo))
