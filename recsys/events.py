"""``recsys events push FILE``: interactions from a file (or stdin) to the running ``events`` model.

The file has the interactions schema (README, Bring your own data): CSV with a header
(``user_id,item_id,timestamp[,event_type][,event_value]``) or JSON lines (one object per line
with those keys). Each line is read on its own: a line that cannot be read (an id that is not
an integer, a timestamp that is neither epoch seconds nor ISO-8601, a value that is not a
number) is reported with its line number and not sent; the others go to the server in chunks,
which checks each event again (unknown items) and applies the valid ones.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

REQUIRED = ("user_id", "item_id")
CHUNK = 1000


@dataclass
class Parsed:
    """Events read from a file: the values of the readable lines, and why the others were not."""

    lines: list[int] = field(default_factory=list)
    user_ids: list[int] = field(default_factory=list)
    item_ids: list[int] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    event_types: list[str] = field(default_factory=list)
    event_values: list[float] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)


INT64 = (-(2**63), 2**63 - 1)


def _integer(value, name: str) -> int:
    text = str(value).strip()
    if not text.lstrip("+-").isdigit() or not INT64[0] <= int(text) <= INT64[1]:
        raise ValueError(f"{name} must be a 64-bit integer, got {value!r}")
    return int(text)


def _timestamp(value) -> int:
    if value is None or str(value).strip() == "":
        return 0
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None:
        if not (math.isfinite(number) and 0 <= number < 2**62):
            raise ValueError(f"timestamp {value!r} is not epoch seconds")
        return int(number)
    try:
        stamp = pd.Timestamp(text)
    except (ValueError, TypeError):
        raise ValueError(f"timestamp {value!r} is neither epoch seconds nor ISO-8601") from None
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp
    return int(stamp.timestamp())


def _value(value) -> float:
    if value is None or str(value).strip() == "":
        return float("nan")
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"event_value must be a number, got {value!r}") from None


def parse(text: str) -> Parsed:
    """Every line of a CSV (with header) or JSON-lines text, read on its own."""
    out = Parsed()
    stripped = text.lstrip()
    if stripped.startswith("{"):
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                out.errors.append((number, f"not a JSON object: {exc}"))
                continue
            rows.append((number, row))
    else:
        reader = csv.DictReader(io.StringIO(text))
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"the header has no column(s) {missing}: expected user_id,item_id[,timestamp]"
                             f"[,event_type][,event_value]")
        rows = [(reader.line_num, row) for row in reader]
    for number, row in rows:
        try:
            user, item = _integer(row.get("user_id"), "user_id"), _integer(row.get("item_id"), "item_id")
            stamp, value = _timestamp(row.get("timestamp")), _value(row.get("event_value"))
        except ValueError as exc:
            out.errors.append((number, str(exc)))
            continue
        out.lines.append(number)
        out.user_ids.append(user)
        out.item_ids.append(item)
        out.timestamps.append(stamp)
        out.event_types.append(str(row.get("event_type") or ""))
        out.event_values.append(value)
    return out


def push(client, parsed: Parsed, model_name: str = "events") -> tuple[int, list[tuple[int, str]]]:
    """Send the readable events in chunks; returns (accepted count, [(line, error)] of the rest)."""
    accepted, rejected = 0, list(parsed.errors)
    for start in range(0, len(parsed.lines), CHUNK):
        part = slice(start, start + CHUNK)
        answer = client.put_events(parsed.user_ids[part], parsed.item_ids[part], parsed.timestamps[part],
                                   parsed.event_types[part], parsed.event_values[part], model_name=model_name)
        accepted += int(np.sum(answer["accepted"]))
        rejected += [(line, error) for line, ok, error in zip(parsed.lines[part], answer["accepted"],
                                                              answer["error"]) if not ok]
    return accepted, sorted(rejected)
