"""Interactions imported after the configured data: what every build reads with it.

The daily pipeline (``recsys pipeline``) validates new interaction files and imports them here:
one parquet file per imported file, in the input schema (``user_id``, ``item_id``,
``timestamp`` in epoch seconds, optional ``event_type`` / ``event_value``), and a ledger
(``ledger.json``) naming them in import order. The ledger is written last and atomically, so a
file is part of the data exactly when the ledger lists it: an import cut off half-way adds
nothing. The ``events`` model appends the events it accepts to ``<day>.csv`` files of its own
folder (``Config.events_dir``; checked when they arrived; a line still being written is left
for the next build).
"""
from __future__ import annotations

import io
import json
import logging
from dataclasses import replace
from pathlib import Path

import pandas as pd

from training.dataset import InteractionData

LOG = logging.getLogger(__name__)
LEDGER = "ledger.json"
EVENT_COLUMNS = ("user_id", "item_id", "timestamp", "event_type", "event_value")


def ledger(folder: Path) -> list[dict]:
    """The imported files, oldest first: ``{"file", "sha256", "rows", "imported", "stored"}``."""
    path = Path(folder) / LEDGER
    return json.loads(path.read_text()) if path.is_file() else []


def record(folder: Path, entries: list[dict]) -> None:
    """Replace the ledger with ``entries`` (atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    scratch = folder / (LEDGER + ".tmp")
    scratch.write_text(json.dumps(entries, indent=2))
    scratch.replace(folder / LEDGER)


def interactions(folder: Path, events: Path | None = None) -> pd.DataFrame | None:
    """Every interaction the ledger of ``folder`` lists, in import order, then the days of
    ``events`` (``None``: nothing imported)."""
    frames = [pd.read_parquet(Path(folder) / entry["stored"]) for entry in ledger(folder)]
    if events is not None:
        frames += [_events(path) for path in sorted(Path(events).glob("*.csv"))]
    frames = [frame for frame in frames if len(frame)]
    return pd.concat(frames, ignore_index=True) if frames else None


def _events(path: Path) -> pd.DataFrame:
    """One day of events; a last line without its newline is still being written: left out."""
    text = path.read_text()
    complete = text[: text.rfind("\n") + 1]
    if not complete:
        return pd.DataFrame(columns=list(EVENT_COLUMNS))
    frame = pd.read_csv(io.StringIO(complete), dtype={"event_type": str}, keep_default_na=False,
                        na_values={"event_value": [""]})
    frame = frame.astype({"user_id": "int64", "item_id": "int64", "timestamp": "int64", "event_value": "float32"})
    return frame.assign(event_type=frame["event_type"].astype(object))


def appended(data: InteractionData, folder: Path, events: Path | None = None) -> InteractionData:
    """``data`` with the imported interactions and ``events`` after its own (users they
    introduce are new users; their items were checked against the catalogue on arrival)."""
    extra = interactions(folder, events)
    if extra is None or extra.empty:
        return data
    LOG.info("%d imported interactions appended (%s)", len(extra), folder)
    combined = pd.concat([data.interactions, extra], ignore_index=True)
    return replace(data, interactions=combined,
                   notes=data.notes + [f"{len(extra):,} interactions imported by the pipeline ({folder})"])
