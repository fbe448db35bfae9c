"""Feast jobs: register the definitions of ``feature_repo/`` and load the online store, with
the same ``feast`` CLI a user would run by hand in that directory."""
from __future__ import annotations

import re
import subprocess
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path

from core.config import Config


class FeastJobError(RuntimeError):
    """``feast apply`` or ``feast materialize-incremental`` failed."""


_TQDM_BAR = re.compile(rb"\d+%\|")


def run_showing_bars(command: list[str]) -> subprocess.CompletedProcess:
    """Run ``command`` with its output captured, drawing the tqdm bars it writes on stderr on
    this terminal as they come; everything else on stderr (warnings) is only captured."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout: list[bytes] = []
    reader = threading.Thread(target=lambda: stdout.append(process.stdout.read()), daemon=True)
    reader.start()
    stderr, pending, drawn = bytearray(), b"", False
    for chunk in iter(lambda: process.stderr.read1(4096), b""):
        stderr += chunk
        *segments, pending = re.split(rb"[\r\n]", pending + chunk)
        for segment in segments:
            if _TQDM_BAR.search(segment):
                sys.stderr.write("\r" + segment.decode(errors="replace").strip() + "\033[K")
                sys.stderr.flush()
                drawn = True
    process.wait()
    reader.join()
    if drawn:
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()
    return subprocess.CompletedProcess(command, process.returncode, b"".join(stdout).decode(errors="replace"),
                                       stderr.decode(errors="replace"))


def _feast(config: Config, *args: str, bars: bool = False) -> str:
    repo = config.feature_repo
    command = [str(Path(sys.executable).parent / "feast"), "-c", str(repo),
               "--feature-store-yaml", str(config.feature_store_file), *args]
    if bars:
        result = run_showing_bars(command)
    else:
        result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise FeastJobError(f"`feast --feature-store-yaml {config.feature_store_yaml} {' '.join(args)}` failed in {repo}:\n"
                            f"{result.stderr[-3000:]}")
    return result.stdout


def apply_and_materialize(config: Config, end: datetime | None = None) -> str:
    """``feast apply`` then ``feast materialize-incremental <end>`` (default: now, UTC)."""
    if not config.feature_store_file.is_file():
        raise FeastJobError(f"no {config.feature_store_yaml} in {config.feature_repo}")
    end = end or datetime.now(timezone.utc)
    stamp = end.strftime("%Y-%m-%dT%H:%M:%S")
    out = _feast(config, "apply")
    out += _feast(config, "materialize-incremental", stamp,
                  bars=config.training.progress and sys.stderr.isatty())
    unread = views_not_online(config)
    if unread:
        out += reload_online_store(config, end)
        unread = views_not_online(config)
        if unread:
            raise FeastJobError(f"feature views {unread} are still not readable online in "
                                f"{config.feature_store_file}")
    use_write_ahead_log(config)
    return out


def use_write_ahead_log(config: Config) -> None:
    """A SQLite online store in WAL mode (kept by the file): the ``events`` model writes while
    every Triton model reads, and neither waits for the other (Feast opens SQLite without it)."""
    import sqlite3

    online = config.open_feature_store().config.online_store
    if getattr(online, "type", "") != "sqlite":
        return
    path = Path(online.path)
    path = path if path.is_absolute() else config.feature_repo / path
    if path.is_file():
        with sqlite3.connect(path, timeout=30) as connection:
            connection.execute("PRAGMA journal_mode=WAL")


def reload_online_store(config: Config, end: datetime) -> str:
    """Recreate the online store's tables and load every view's whole history.

    For a registry that says "materialized" while the online store lacks the tables or rows
    (its file was deleted, or the store was switched to another one and back): ``feast apply``
    sees no infrastructure change and ``materialize-incremental`` nothing left to load."""
    store = config.open_feature_store()
    views = store.list_feature_views()
    # Feast has no public call for "create the online tables again"; its provider's
    # update_infra is what `feast apply` runs, and creating tables is idempotent.
    store._get_provider().update_infra(project=store.project, tables_to_delete=[], tables_to_keep=views,
                                       entities_to_delete=[], entities_to_keep=store.list_entities(),
                                       partial=False)
    store.materialize(datetime(1970, 1, 1, tzinfo=timezone.utc), end, [v.name for v in views])
    return f"reloaded the online store for {[v.name for v in views]}\n"


def views_not_online(config: Config) -> list[str]:
    """Feature views whose first offline row cannot be read back from the online store."""
    import pandas as pd

    store = config.open_feature_store()
    unread = []
    for view in store.list_feature_views():
        rows = pd.read_parquet(view.batch_source.path)
        if rows.empty or not view.features:
            continue
        key = view.entity_columns[0].name
        try:
            found = store.get_online_features(features=[f"{view.name}:{f.name}" for f in view.features],
                                              entity_rows=[{key: rows[key].iloc[0].item()}]).to_dict()
        except Exception:
            unread.append(view.name)
            continue
        if all(values[0] is None for name, values in found.items() if name != key):
            unread.append(view.name)
    return unread
