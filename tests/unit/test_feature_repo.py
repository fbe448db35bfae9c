"""The Feast repo works the way a user drives it: `feast apply` by hand in a brand-new copy."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from core.config import PROJECT_ROOT


def _new_repository(root: Path, features: dict) -> Path:
    """A brand-new copy of the project's Feast repo with the given feature list."""
    repo = root / "feature_repo"
    (repo / "data").mkdir(parents=True)
    for name in ("feature_store.yaml", "definitions.py"):
        shutil.copy(PROJECT_ROOT / "feature_repo" / name, repo / name)
    (repo / "data" / "features.json").write_text(json.dumps(features))
    return repo


def test_feast_apply_by_hand_in_a_new_repository(tmp_path):
    repo = _new_repository(tmp_path, {"user_features": {"age": "float32", "history": "int64_list"},
                                      "item_features": {"genres": "string_list", "release_year": "string"}})
    env = {k: v for k, v in os.environ.items() if k != "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"}
    feast = str(Path(sys.executable).parent / "feast")
    result = subprocess.run([feast, "-c", str(repo), "apply"], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert "user_features" in result.stdout and (repo / "data" / "registry.db").is_file()


def test_load_features_repairs_an_online_store_that_lost_its_tables(tmp_path):
    from datetime import datetime, timezone

    import pandas as pd

    from core.config import load_config
    from recsys.jobs.featurestore import apply_and_materialize, views_not_online

    repo = _new_repository(tmp_path, {"user_features": {"age": "float32"},
                                      "item_features": {"release_year": "string"}})
    stamp = pd.Timestamp("2026-01-01", tz="UTC")
    pd.DataFrame({"user_id": [1, 2], "age": [20.0, 30.0], "event_timestamp": [stamp] * 2}).to_parquet(
        repo / "data" / "user_features.parquet")
    pd.DataFrame({"item_id": [7], "release_year": ["1999"], "event_timestamp": [stamp]}).to_parquet(
        repo / "data" / "item_features.parquet")
    config = load_config(base={"feature_repo": str(repo)}, environ={})
    apply_and_materialize(config, end=datetime(2026, 6, 1, tzinfo=timezone.utc))
    assert views_not_online(config) == []
    (repo / "data" / "online_store.db").unlink()  # the registry still says "materialized"
    assert sorted(views_not_online(config)) == ["item_features", "user_features"]
    out = apply_and_materialize(config, end=datetime(2026, 6, 2, tzinfo=timezone.utc))
    assert "reloaded the online store" in out
    assert views_not_online(config) == []


def test_materialization_bars_reach_the_terminal_and_warnings_do_not(capfd):
    from recsys.jobs.featurestore import run_showing_bars

    script = ("import sys, time\n"
              "sys.stderr.write('FutureWarning: something deprecated\\n')\n"
              "for done in (0, 50, 100):\n"
              "    sys.stderr.write(f'\\r{done}%|####| {done}/100'); sys.stderr.flush(); time.sleep(0.05)\n"
              "sys.stderr.write('\\n'); print('Materializing 2 feature views')\n")
    result = run_showing_bars([sys.executable, "-c", script])
    shown = capfd.readouterr().err
    assert result.returncode == 0 and "Materializing 2 feature views" in result.stdout
    assert "100%|####| 100/100" in shown and "50%|" in shown
    assert "FutureWarning" not in shown and "FutureWarning" in result.stderr
