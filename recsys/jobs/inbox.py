"""New interaction files: found in the inbox, validated, imported for the next build.

A file dropped into the inbox (CSV, TSV or parquet, the interactions schema of the README) is
*pending* until imported (a file still being written must not be picked up: write it under a
name starting with ``.`` and rename it when complete). :func:`validate` reads every pending file with the input checks of
:mod:`training.dataset`, and also refuses items the catalogue does not have (when the data has
an items file); users never seen before are new users. A bad file raises a
:class:`~training.dataset.DataError` naming file, row and column, before anything is imported.
:func:`import_files` stores each one under ``<workdir>/imported/`` (the ledger of
:mod:`training.imported`, written last), then moves it to ``<inbox>/imported/``. A file whose
content was imported before (same SHA-256) is skipped, whatever its name.
"""
from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from core.config import Config
from training import imported, sources
from training.dataset import DataError, from_frames, read_table

SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")


@dataclass
class NewFile:
    """A pending file, validated: its interactions in the input schema."""

    path: Path
    sha256: str
    interactions: pd.DataFrame


def pending(config: Config) -> list[Path]:
    """The inbox's files not imported yet, by name."""
    inbox = config.inbox_dir
    if not inbox.is_dir():
        return []
    return sorted(p for p in inbox.iterdir()
                  if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.startswith("."))


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def validate(config: Config, paths: list[Path]) -> tuple[list[NewFile], list[Path]]:
    """Every file checked (raises on the first bad one); returns the new files and the ones
    whose content was imported before."""
    known = {entry["sha256"]: entry["file"] for entry in imported.ledger(config.imported_dir)}
    catalogue = sources.load(config.data).items
    fresh, repeated, seen = [], [], set()
    for path in paths:
        sha = _digest(path)
        if sha in known or sha in seen:
            repeated.append(path)
            continue
        seen.add(sha)
        frame = read_table(path)
        items = None if catalogue is None else catalogue[["item_id"]]
        try:
            data = from_frames(frame, items=items, source=str(path))
        except DataError as exc:
            raise DataError(f"{exc} (nothing was imported; fix or remove the file and run again)") from None
        fresh.append(NewFile(path, sha, data.interactions))
    return fresh, repeated


def import_files(config: Config, files: list[NewFile], repeated: list[Path] = ()) -> int:
    """Store ``files`` for the next build (ledger last), then move them and the ``repeated``
    ones out of the inbox; returns the interactions imported."""
    folder = config.imported_dir
    folder.mkdir(parents=True, exist_ok=True)
    entries = imported.ledger(folder)
    done = {entry["sha256"] for entry in entries}
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for number, new in enumerate(files, start=len(entries) + 1):
        if new.sha256 in done:  # a resumed import
            continue
        stored = f"{number:05d}-{new.path.stem}.parquet"
        scratch = folder / (stored + ".tmp")
        new.interactions.to_parquet(scratch, index=False)
        scratch.replace(folder / stored)
        entries.append({"file": new.path.name, "sha256": new.sha256, "rows": int(len(new.interactions)),
                        "imported": stamp, "stored": stored})
    imported.record(folder, entries)
    archive = config.inbox_dir / "imported"
    archive.mkdir(parents=True, exist_ok=True)
    for path in [new.path for new in files] + list(repeated):
        if path.exists():  # a daily file of the same name never replaces an earlier one
            shutil.move(str(path), archive / f"{stamp}-{_digest(path)[:8]}-{path.name}")
    return int(sum(len(new.interactions) for new in files))
