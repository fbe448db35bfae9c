"""The Feast repo works the way a user drives it: `feast apply` by hand in a brand-new copy."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from recsys.config import PROJECT_ROOT


def test_feast_apply_by_hand_in_a_new_repository(tmp_path):
    repo = tmp_path / "feature_repo"
    (repo / "data").mkdir(parents=True)
    for name in ("feature_store.yaml", "definitions.py"):
        shutil.copy(PROJECT_ROOT / "feature_repo" / name, repo / name)
    (repo / "data" / "features.json").write_text(json.dumps({
        "user_features": {"age": "float32", "history": "int64_list"},
        "item_features": {"genres": "string_list", "release_year": "string"}}))
    env = {k: v for k, v in os.environ.items() if k != "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"}
    feast = str(Path(sys.executable).parent / "feast")
    result = subprocess.run([feast, "-c", str(repo), "apply"], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert "user_features" in result.stdout and (repo / "data" / "registry.db").is_file()
