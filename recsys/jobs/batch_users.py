"""Which users a batch run is for: given ids, a file of ids (parquet, CSV/TSV with a
``user_id`` column, or one id per line), or every user of the training data; each once, in
order, with a hash the run keeps so a resumed run can tell its users changed."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd

from core.config import Config
from recsys.jobs import releases
from recsys.jobs.stack import require_artifacts


# -- users -----------------------------------------------------------------------------------
def read_user_ids(path: str | os.PathLike) -> np.ndarray:
    """User ids from a file: parquet or CSV/TSV with a ``user_id`` column, or plain text with
    one id per line (blank lines and ``#`` comments ignored)."""

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"users file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:
            raise ValueError(f"{path}: cannot read as parquet: {exc}") from None
        return _id_column(frame, path)
    lines = path.read_text().splitlines()
    content = [(number, line.strip()) for number, line in enumerate(lines, 1)
               if line.strip() and not line.strip().startswith("#")]
    if content and not _is_int(content[0][1]):  # a header: CSV/TSV with a user_id column
        sep = "\t" if suffix == ".tsv" or "\t" in content[0][1] else ","
        return _id_column(pd.read_csv(path, sep=sep, dtype=str), path)
    ids = []
    for number, text in content:
        if not _is_int(text):
            raise ValueError(f"{path}, line {number}: {text[:40]!r} is not an integer user id")
        ids.append(int(text))
    if not ids:
        raise ValueError(f"{path}: no user ids")
    return np.asarray(ids, dtype=np.int64)


def _is_int(text: str) -> bool:
    try:
        int(text)
        return True
    except ValueError:
        return False


def _id_column(frame, path: Path) -> np.ndarray:
    if "user_id" not in frame.columns:
        raise ValueError(f"{path}: no user_id column (columns: {', '.join(map(str, frame.columns))})")
    column = frame["user_id"]
    bad = [(row, value) for row, value in zip(range(len(column)), column.astype(str)) if not _is_int(value)]
    if bad:
        row, value = bad[0]
        raise ValueError(f"{path}, row {row + 1}, column 'user_id': {value[:40]!r} is not an integer "
                         f"({len(bad)} such rows)")
    if len(column) == 0:
        raise ValueError(f"{path}: no user ids")
    return column.astype(np.int64).to_numpy()


def unique_in_order(ids) -> np.ndarray:
    """``ids`` without repeats, first occurrence kept."""
    ids = np.asarray(ids, dtype=np.int64)
    _, first = np.unique(ids, return_index=True)
    return ids[np.sort(first)]


def resolve_users(config: Config, user_ids=None, users_file: str | None = None) -> tuple[np.ndarray, dict]:
    """The users of a run (in order, each once) and how they were chosen (for the run's
    ``parameters``): the given ids, a file, or every user of the training data."""
    if user_ids is not None and users_file:
        raise ValueError("give either --users or --users-file, not both")
    if user_ids is not None:
        users = unique_in_order(user_ids)
        spec = {"users": "list", "user_ids": users.tolist()}
    elif users_file:
        users = unique_in_order(read_user_ids(users_file))
        spec = {"users": "file", "users_file": str(Path(users_file).resolve())}
    else:
        users = training_users(config)
        spec = {"users": "all"}
    if len(users) == 0:
        raise ValueError("no users to recommend for")
    spec["users_sha256"] = hashlib.sha256(users.tobytes()).hexdigest()
    return users, spec


def training_users(config: Config) -> np.ndarray:
    """Every user of the training data (the users table of the serving release), sorted."""
    require_artifacts(config)
    artifacts = releases.serving_artifacts(config)
    return np.sort(pd.read_parquet(artifacts.users, columns=["user_id"])["user_id"].to_numpy(np.int64))
