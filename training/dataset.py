"""The one input schema of the project ("bring your own data"), in the spirit of Amazon
Personalize's datasets, and its validation. Every data source is an adapter to it.

* interactions (required): ``user_id``, ``item_id``, ``timestamp``; optional ``event_type``
  (text) and ``event_value`` (number). Other columns are ignored (and said so).
* users (optional): ``user_id`` + any feature columns.
* items (optional): ``item_id`` + any feature columns, optional ``creation_timestamp``.

Files are CSV (``.csv``; ``.tsv`` tab-separated) or parquet (``.parquet``/``.pq``). Ids are
integers (they are Milvus primary keys). Timestamps are epoch seconds or ISO-8601 text.
Malformed input is refused before any work starts with a :class:`DataError` naming the file,
the row (``line N`` of a CSV, header = line 1; ``row N`` of a parquet, from 0) and the column.

Feature column kinds are declared in a schema file (JSON or TOML)::

    {"users": {"age": "continuous", "zip": "categorical"},
     "items": {"genres": "list"}, "list_separator": "|"}

or inferred, and printed by :meth:`InteractionData.summary`: text with the list separator in
some row -> ``list``; other text or booleans -> ``categorical``; integers with at most 50
distinct values -> ``categorical``, other numbers -> ``continuous``; a column with a single
value (or none) -> ``dropped``. Categorical values become text (missing: ""), continuous ones
float32 (missing: the median), lists lists of text (missing: empty).
"""
from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

KINDS = ("categorical", "continuous", "list")
MAX_CATEGORICAL_INTEGERS = 50
RESERVED = ("user_id", "item_id", "timestamp", "event_timestamp", "creation_timestamp")


class DataError(ValueError):
    """Input data that cannot be used, with where it is wrong."""

    def __init__(self, message: str, path=None, row: str | None = None, column: str | None = None):
        where = ", ".join(part for part in (str(path) if path else None, row,
                                            f"column {column!r}" if column else None) if part)
        super().__init__(f"{where}: {message}" if where else message)
        self.path, self.row, self.column = (str(path) if path else None), row, column


@dataclass
class FeatureSpec:
    """The feature columns of one side, by kind, and how each kind was decided."""

    categorical: list[str] = field(default_factory=list)
    continuous: list[str] = field(default_factory=list)
    lists: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    decided: dict[str, str] = field(default_factory=dict)  # column -> "declared" / "inferred"

    @property
    def columns(self) -> list[str]:
        return self.categorical + self.continuous + self.lists


@dataclass
class InteractionData:
    """A validated data set in the project's schema."""

    interactions: pd.DataFrame
    users: pd.DataFrame | None
    items: pd.DataFrame | None
    user_features: FeatureSpec
    item_features: FeatureSpec
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A human summary: sizes, every feature column with its kind and how it was chosen."""
        inter = self.interactions
        lines = [f"{len(inter):,} interactions, {inter['user_id'].nunique():,} users, "
                 f"{inter['item_id'].nunique():,} items interacted with"]
        for side, frame, spec in (("users", self.users, self.user_features),
                                  ("items", self.items, self.item_features)):
            if frame is None:
                lines.append(f"{side}: no file")
                continue
            lines.append(f"{side}: {len(frame):,} rows")
            for kind, columns in (("categorical", spec.categorical), ("continuous", spec.continuous),
                                  ("list", spec.lists), ("dropped", spec.dropped)):
                for column in columns:
                    how = spec.decided.get(column, "inferred")
                    if kind == "dropped":
                        lines.append(f"  {column:24} dropped     ({how}: one value or none)")
                        continue
                    distinct = (frame[column].explode() if kind == "list" else frame[column]).nunique()
                    lines.append(f"  {column:24} {kind:11} ({how}, {distinct:,} distinct)")
        return "\n".join(lines + self.notes)


def read_table(path) -> pd.DataFrame:
    """A CSV/TSV file as text columns, or a parquet file as it is."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        elif suffix in (".csv", ".tsv", ".txt"):
            frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str,
                                keep_default_na=False, na_values=[""])
        else:
            raise DataError("unknown file type: use .csv, .tsv or .parquet", path)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot read the file ({exc})", path) from exc
    if frame.empty:
        raise DataError("the file has no rows", path)
    frame.attrs["source"] = str(path)
    frame.attrs["csv"] = suffix != ".parquet" and suffix != ".pq"
    return frame


def _where(frame: pd.DataFrame, position: int) -> str:
    return f"line {position + 2}" if frame.attrs.get("csv") else f"row {position}"


def _source(frame: pd.DataFrame) -> str:
    return frame.attrs.get("source", "<memory>")


def _require(frame: pd.DataFrame, columns: list[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"missing required column(s) {missing}; the file has {list(frame.columns)}",
                        _source(frame), column=missing[0])


def _ids(frame: pd.DataFrame, column: str) -> pd.Series:
    values = frame[column]
    if values.isna().any():
        raise DataError("empty id", _source(frame), _where(frame, int(np.flatnonzero(values.isna())[0])), column)
    if pd.api.types.is_integer_dtype(values):
        return values.astype(np.int64)
    text = values.astype(str).str.strip()
    bad = ~text.str.fullmatch(r"[+-]?\d+")
    if bad.any():
        first = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"ids must be integers, got {values.iloc[first]!r} ({int(bad.sum())} such rows)",
                        _source(frame), _where(frame, first), column)
    return text.astype(np.int64)


def _timestamps(frame: pd.DataFrame, column: str) -> pd.Series:
    values = frame[column]
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = pd.to_datetime(values, utc=True)
    elif pd.api.types.is_numeric_dtype(values):
        parsed = pd.to_datetime(values, unit="s", utc=True, errors="coerce")
    else:
        text = values.astype(str).str.strip()
        numeric = pd.to_numeric(text, errors="coerce")
        parsed = pd.to_datetime(numeric, unit="s", utc=True, errors="coerce")
        needs_text = numeric.isna()
        if needs_text.any():
            parsed[needs_text] = pd.to_datetime(text[needs_text], utc=True, errors="coerce")
    bad = parsed.isna()
    if bad.any():
        first = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"unparseable timestamp {values.iloc[first]!r} (epoch seconds or ISO-8601 expected; "
                        f"{int(bad.sum())} such rows)", _source(frame), _where(frame, first), column)
    return (parsed.astype("int64") // 10**9).astype(np.int64)


def _unique(frame: pd.DataFrame, ids: pd.Series, column: str) -> None:
    duplicated = ids.duplicated()
    if duplicated.any():
        first = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise DataError(f"duplicate id {ids.iloc[first]}", _source(frame), _where(frame, first), column)


def _known(frame: pd.DataFrame, ids: pd.Series, column: str, known: pd.Series, other: str) -> None:
    """``frame`` is the interactions table as read (for the location), ``ids`` its parsed ids."""
    unknown = ~ids.isin(known)
    if unknown.any():
        first = int(np.flatnonzero(unknown.to_numpy())[0])
        raise DataError(f"{ids.iloc[first]} is not in the {other} file "
                        f"({int(unknown.sum())} interactions point at unknown ids)",
                        _source(frame), _where(frame, first), column)


def _infer(values: pd.Series, separator: str) -> str:
    present = values.dropna()
    if present.empty or present.astype(str).nunique() <= 1:
        return "dropped"
    if present.map(lambda v: isinstance(v, (list, tuple, np.ndarray))).any():
        return "list"
    if pd.api.types.is_bool_dtype(present):
        return "categorical"
    numeric = present if pd.api.types.is_numeric_dtype(present) else pd.to_numeric(present, errors="coerce")
    if numeric.isna().any():
        return "list" if present.astype(str).str.contains(separator, regex=False).any() else "categorical"
    if (numeric == np.round(numeric)).all() and numeric.nunique() <= MAX_CATEGORICAL_INTEGERS:
        return "categorical"
    return "continuous"


def _convert(values: pd.Series, kind: str, separator: str) -> pd.Series:
    if kind == "categorical":
        return values.map(lambda v: "" if pd.isna(v) else str(v)).astype(object)
    if kind == "continuous":
        numeric = pd.to_numeric(values, errors="coerce")
        return numeric.fillna(numeric.median()).astype(np.float32)

    def to_list(v):
        if isinstance(v, (list, tuple, np.ndarray)):
            return [str(t) for t in v]
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return []
        return [t.strip() for t in str(v).split(separator) if t.strip()]
    return values.map(to_list)


def _side(frame: pd.DataFrame | None, id_column: str, declared: dict, separator: str,
          schema_path) -> tuple[pd.DataFrame | None, FeatureSpec]:
    spec = FeatureSpec()
    if frame is None:
        return None, spec
    _require(frame, [id_column])
    out = pd.DataFrame({id_column: _ids(frame, id_column)})
    _unique(frame, out[id_column], id_column)
    for column in declared:
        if column not in frame.columns:
            raise DataError(f"declared column is not in {_source(frame)}", schema_path, column=column)
    if "creation_timestamp" in frame.columns and id_column == "item_id":
        out["creation_timestamp"] = _timestamps(frame, "creation_timestamp")
    for column in frame.columns:
        if column == id_column or column == "creation_timestamp":
            continue
        if column in RESERVED:
            raise DataError("reserved column name; rename it", _source(frame), column=column)
        kind = declared.get(column)
        if kind is not None and kind not in KINDS:
            raise DataError(f"unknown kind {kind!r}: use one of {', '.join(KINDS)}", schema_path, column=column)
        spec.decided[column] = "declared" if kind else "inferred"
        kind = kind or _infer(frame[column], separator)
        if kind == "dropped":
            spec.dropped.append(column)
            continue
        out[column] = _convert(frame[column], kind, separator).to_numpy()
        {"categorical": spec.categorical, "continuous": spec.continuous, "list": spec.lists}[kind].append(column)
    return out, spec


def _interactions(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    _require(frame, ["user_id", "item_id", "timestamp"])
    out = pd.DataFrame({"user_id": _ids(frame, "user_id"), "item_id": _ids(frame, "item_id"),
                        "timestamp": _timestamps(frame, "timestamp")})
    if "event_type" in frame.columns:
        out["event_type"] = frame["event_type"].fillna("").astype(str).to_numpy()
    if "event_value" in frame.columns:
        values = pd.to_numeric(frame["event_value"], errors="coerce")
        if values.isna().any():
            first = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise DataError(f"event_value must be a number, got {frame['event_value'].iloc[first]!r}",
                            _source(frame), _where(frame, first), "event_value")
        out["event_value"] = values.astype(np.float32).to_numpy()
    extra = [c for c in frame.columns if c not in out.columns]
    notes = [f"interactions: ignored column(s) {extra}"] if extra else []
    return out, notes


def from_frames(interactions: pd.DataFrame, users: pd.DataFrame | None = None,
                items: pd.DataFrame | None = None, declared: dict | None = None, source: str = "<memory>",
                list_separator: str = "|", schema_path=None) -> InteractionData:
    """Validate and convert in-memory tables (what the file reader and the adapters use)."""
    declared = declared or {}
    for frame, name in ((interactions, "interactions"), (users, "users"), (items, "items")):
        if frame is not None:
            if frame.empty:
                raise DataError(f"the {name} table has no rows", frame.attrs.get("source", source))
            frame.attrs.setdefault("source", f"{source} ({name})")
    inter, notes = _interactions(interactions)
    separator = declared.get("list_separator", list_separator)
    users_out, user_spec = _side(users, "user_id", declared.get("users", {}), separator, schema_path)
    items_out, item_spec = _side(items, "item_id", declared.get("items", {}), separator, schema_path)
    shared = set(user_spec.columns) & set(item_spec.columns)
    if shared:
        raise DataError(f"feature column(s) {sorted(shared)} appear in both the users and the items file; "
                        "rename one side", source, column=sorted(shared)[0])
    if items_out is not None:
        _known(interactions, inter["item_id"], "item_id", items_out["item_id"], "items")
    if users_out is not None:
        _known(interactions, inter["user_id"], "user_id", users_out["user_id"], "users")
    return InteractionData(inter.reset_index(drop=True), users_out, items_out, user_spec, item_spec, notes)


def read_schema(path) -> dict:
    """A schema file (JSON or TOML) declaring column kinds."""
    path = Path(path)
    if not path.is_file():
        raise DataError("schema file not found", path)
    try:
        if path.suffix.lower() == ".toml":
            return tomllib.loads(path.read_text())
        return json.loads(path.read_text())
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise DataError(f"cannot parse the schema file ({exc})", path) from exc


def load_files(interactions, users=None, items=None, schema=None, list_separator: str = "|") -> InteractionData:
    """Read, validate and convert the files of a data set (see the module docstring)."""
    declared = read_schema(schema) if schema else {}
    return from_frames(read_table(interactions), read_table(users) if users else None,
                       read_table(items) if items else None, declared, str(interactions),
                       list_separator, schema)
