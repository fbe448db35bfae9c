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


def interactions(folder: Path, events: Path | None = None, read: dict | None = None) -> pd.DataFrame | None:
    """Every interaction the ledger of ``folder`` lists, in import order, then the days of
    ``events`` (``None``: nothing imported); ``read`` gets the bytes read of each day's file."""
    frames = [pd.read_parquet(Path(folder) / entry["stored"]) for entry in ledger(folder)]
    if events is not None:
        frames += [events_after(path, 0, read) for path in sorted(Path(events).glob("*.csv"))]
    frames = [frame for frame in frames if len(frame)]
    return pd.concat(frames, ignore_index=True) if frames else None


def events_after(path: Path, offset: int, read: dict | None = None) -> pd.DataFrame:
    """The events of one day's file from byte ``offset`` on (0: the whole file); a last line
    without its newline is still being written: left out. ``read`` gets the bytes read."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if read is not None:
        read[path.name] = end
    header = data[: data.find(b"\n") + 1] if offset else b""
    complete = (header + data[offset:end]).decode("utf-8", errors="replace") if end > offset else ""
    if not complete:
        return pd.DataFrame(columns=list(EVENT_COLUMNS))
    frame = pd.read_csv(io.StringIO(complete), dtype=str, keep_default_na=False, on_bad_lines="skip")
    numeric = {name: pd.to_numeric(frame[name], errors="coerce") for name in ("user_id", "item_id", "timestamp")}
    broken = pd.concat(numeric, axis=1).isna().any(axis=1)  # a line cut by a killed writer
    if broken.any():
        LOG.warning("%s: %d unreadable line(s) left out", path, int(broken.sum()))
    frame = frame[~broken].assign(**{name: values[~broken] for name, values in numeric.items()},
                                  event_value=pd.to_numeric(frame["event_value"][~broken], errors="coerce"))
    frame = frame.astype({"user_id": "int64", "item_id": "int64", "timestamp": "int64", "event_value": "float32"})
    return frame.assign(event_type=frame["event_type"].astype(object))


def appended(data: InteractionData, folder: Path, events: Path | None = None) -> InteractionData:
    """``data`` with the imported interactions and ``events`` after its own. Users they
    introduce are new users; with an items file, interactions on items it does not have (an
    event on an item upserted through the catalogue but not yet in the file) are left out and
    counted in the notes: the model can only learn items of the catalogue it is built from."""
    read: dict[str, int] = {}
    extra = interactions(folder, events, read)
    if extra is None or extra.empty:
        return replace(data, events_read=read)
    notes = [f"{len(extra):,} interactions imported by the pipeline or sent as events ({folder}, {events})"]
    if data.items is not None:
        unknown = ~extra["item_id"].isin(data.items["item_id"])
        if unknown.any():
            notes.append(f"{int(unknown.sum()):,} of them are on items the items file does not have "
                         f"(e.g. {extra.loc[unknown, 'item_id'].iloc[0]}): left out until it has them")
            extra = extra[~unknown]
    LOG.info("; ".join(notes))
    combined = pd.concat([data.interactions, extra], ignore_index=True)
    return replace(data, interactions=combined, notes=data.notes + notes, events_read=read)
