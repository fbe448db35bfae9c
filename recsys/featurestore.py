"""Feast jobs: register the definitions of ``feature_repo/`` and load the online store, with
the same ``feast`` CLI a user would run by hand in that directory."""
from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from recsys.config import Config


class FeastJobError(RuntimeError):
    """``feast apply`` or ``feast materialize-incremental`` failed."""


def _feast(repo: Path, *args: str) -> str:
    command = [str(Path(sys.executable).parent / "feast"), "-c", str(repo), *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise FeastJobError(f"`feast {' '.join(args)}` failed in {repo}:\n{result.stderr[-3000:]}")
    return result.stdout


def apply_and_materialize(config: Config, end: datetime | None = None) -> str:
    """``feast apply`` then ``feast materialize-incremental <end>`` (default: now, UTC)."""
    repo = config.feature_repo
    if not (repo / "feature_store.yaml").is_file():
        raise FeastJobError(f"no feature_store.yaml in {repo}")
    end = end or datetime.now(timezone.utc)
    out = _feast(repo, "apply")
    out += _feast(repo, "materialize-incremental", end.strftime("%Y-%m-%dT%H:%M:%S"))
    return out
