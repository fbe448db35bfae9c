"""The one input schema of the project ("bring your own data"), in the spirit of Amazon
Personalize's datasets, and its validation. Every data source is an adapter to it.

* interactions (required): ``user_id``, ``item_id``, ``timestamp``; optional ``event_type``
  (text) and ``event_value`` (number). Other columns are dropped (and said so in the summary).
* users (optional): ``user_id`` + any feature columns.
* items (optional): ``item_id`` + any feature columns, optional ``creation_timestamp``.

Files are CSV (``.csv``; ``.tsv`` is tab-separated) or parquet (``.parquet``/``.pq``), by
extension. Ids are int64 (they are Milvus primary keys). Timestamps are epoch seconds (integer
or decimal) or ISO-8601 text (UTC unless an offset is given); they become int64 epoch seconds.
Malformed input is refused before any work starts with a :class:`DataError` naming the file,
the row (``line N`` of a CSV, header = line 1; ``row N`` of a parquet or a data frame, from 0)
and the column. Feature columns may not be called ``user_id``, ``item_id``, ``timestamp``,
``event_timestamp`` or ``creation_timestamp`` (the latter only on items, as metadata), nor
have the same name on both sides.

Feature kinds are declared in a schema file (JSON or TOML, by extension)::

    {"users": {"age": "continuous", "gender": "categorical"},
     "items": {"genres": "list", "year": "categorical"}, "list_separator": "|"}

(``"dropped"`` is accepted too, to leave a column out). Columns not declared are inferred:

1. a column with a single distinct value, or none, -> ``dropped``;
2. a parquet list column -> ``list``;
3. booleans -> ``categorical``;
4. text (in a CSV: values that do not all parse as numbers) containing the list separator in
   at least one row -> ``list``; other text -> ``categorical``;
5. integers (in a CSV: all values integer literals) with at most 50 distinct values ->
   ``categorical``; other integers and all floats -> ``continuous``.

Values are converted: categorical -> text (missing: ""), continuous -> float32 (missing: the
column median, reported), list -> list of stripped, non-empty texts (missing: []).
:meth:`InteractionData.summary` prints every column, its kind and how it was decided.
"""
from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

KINDS = ("categorical", "continuous", "list", "dropped")
MAX_CATEGORICAL_INTEGERS = 50
RESERVED = ("user_id", "item_id", "timestamp", "event_timestamp", "creation_timestamp")
INTEGER = r"[+-]?\d+"


class DataError(ValueError):
    """Input that cannot be used; ``path``, ``row`` ("line 7", "row 3") and ``column`` say where."""

    def __init__(self, message: str, path=None, row: str | None = None, column: str | None = None):
        self.path, self.row, self.column = (str(path) if path else None), row, column
        where = ", ".join(p for p in (self.path, row, f"column {column!r}" if column else None) if p)
        super().__init__(f"{where}: {message}" if where else message)


@dataclass
class FeatureSpec:
    """The feature columns of one side by kind; ``decided`` says "declared" or "inferred"."""

    categorical: list[str] = field(default_factory=list)
    continuous: list[str] = field(default_factory=list)
    lists: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    decided: dict[str, str] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        """The columns that are kept, categorical + continuous + lists."""
        return self.categorical + self.continuous + self.lists


@dataclass
class InteractionData:
    """A validated data set in the project's schema (see the module docstring)."""

    interactions: pd.DataFrame
    users: pd.DataFrame | None
    items: pd.DataFrame | None
    user_features: FeatureSpec
    item_features: FeatureSpec
    notes: list[str] = field(default_factory=list)
    # How far into each day's events file the data was read (bytes), for the online replay
    # of what arrives later (training.imported, recsys.jobs.stack.load_features).
    events_read: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """Sizes, then every feature column with its kind, how it was decided and its distinct count."""
        inter = self.interactions
        lines = [f"{len(inter):,} interactions, {inter['user_id'].nunique():,} users, "
                 f"{inter['item_id'].nunique():,} items interacted with"]
        for side, frame, spec in (("users", self.users, self.user_features),
                                  ("items", self.items, self.item_features)):
            lines.append(f"{side}: no file" if frame is None else f"{side}: {len(frame):,} rows")
            for kind, columns in (("categorical", spec.categorical), ("continuous", spec.continuous),
                                  ("list", spec.lists), ("dropped", spec.dropped)):
                for column in columns:
                    how = spec.decided.get(column, "inferred")
                    if kind == "dropped":
                        reason = "" if how == "declared" else ": one value or none"
                        lines.append(f"  {column:24} dropped     ({how}{reason})")
                    else:
                        distinct = (frame[column].explode() if kind == "list" else frame[column]).nunique()
                        lines.append(f"  {column:24} {kind:11} ({how}, {distinct:,} distinct)")
        return "\n".join(lines + self.notes)


def read_table(path) -> pd.DataFrame:
    """A CSV/TSV file as text columns (empty cells missing), or a parquet file as it is.

    ``attrs`` records the file (``source``) and whether rows are counted as CSV lines (``csv``).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv", ".parquet", ".pq"):
        raise DataError("unknown file type: use .csv, .tsv, .parquet or .pq", path)
    try:
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
            if any(frame.index.names):  # an index pandas wrote (e.g. set_index("user_id")) is a column
                frame = frame.reset_index()
        else:
            frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str,
                                keep_default_na=False, na_values=[""])
            frame.columns = [str(c).strip() for c in frame.columns]
    except pd.errors.EmptyDataError:
        raise DataError("the file is empty", path) from None
    except Exception as exc:
        raise DataError(f"cannot read the file ({exc})", path) from exc
    if frame.empty:
        raise DataError("the file has no rows", path)
    frame.attrs.update(source=str(path), csv=suffix in (".csv", ".tsv"))
    return frame


def _fail(frame: pd.DataFrame, mask, column: str, message: str) -> None:
    """Raise at the first row where ``mask`` holds; ``{value}`` and ``{count}`` fill ``message``."""
    mask = np.asarray(mask, dtype=bool)
    if mask.any():
        first = int(np.flatnonzero(mask)[0])
        row = f"line {first + 2}" if frame.attrs.get("csv") else f"row {first}"
        text = message.format(value=frame[column].iloc[first], count=int(mask.sum()))
        raise DataError(text, frame.attrs.get("source"), row, column)


def _require(frame: pd.DataFrame, columns: list[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"missing required column(s) {missing}; the file has {list(frame.columns)}",
                        frame.attrs.get("source"), column=missing[0])


def _ids(frame: pd.DataFrame, column: str) -> pd.Series:
    values = frame[column]
    _fail(frame, values.isna(), column, "empty id ({count} such rows)")
    if pd.api.types.is_integer_dtype(values):
        return values.astype(np.int64)
    text = values.astype(str).str.strip()
    _fail(frame, text == "", column, "empty id ({count} such rows)")
    bad = ~text.str.fullmatch(INTEGER)
    long = ~bad & (text.str.len() >= 19)  # may not fit in int64
    if long.any():
        bad[long] = [not -2**63 <= int(t) < 2**63 for t in text[long]]
    _fail(frame, bad, column, "ids must be integers (int64), got {value!r} ({count} such rows)")
    return text.astype(np.int64)


def _timestamps(frame: pd.DataFrame, column: str) -> pd.Series:
    values = frame[column]
    _fail(frame, values.isna(), column, "empty timestamp ({count} such rows)")
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = pd.to_datetime(values, utc=True)
    else:
        text = values if pd.api.types.is_numeric_dtype(values) else values.astype(str).str.strip()
        numeric = pd.to_numeric(text, errors="coerce")
        parsed = pd.to_datetime(numeric, unit="s", utc=True, errors="coerce")
        iso = numeric.isna()
        if iso.any():
            parsed[iso] = pd.to_datetime(text[iso], utc=True, errors="coerce")
    _fail(frame, parsed.isna(), column, "unparseable timestamp {value!r} (epoch seconds or ISO-8601 "
                                        "expected; {count} such rows)")
    return ((parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).astype(np.int64)


def _numbers(frame: pd.DataFrame, column: str, message: str) -> pd.Series:
    values = frame[column]
    text = values if pd.api.types.is_numeric_dtype(values) else values.astype(str).str.strip()
    numeric = pd.to_numeric(text, errors="coerce")
    _fail(frame, numeric.isna() & values.notna(), column, message)
    return numeric.astype(np.float64)


def _is_list(value) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


def _infer(values: pd.Series, separator: str) -> str:
    present = values.dropna()
    if present.astype(str).nunique() <= 1:
        return "dropped"
    if present.map(_is_list).any():
        return "list"
    if pd.api.types.is_bool_dtype(present):
        return "categorical"
    if pd.api.types.is_numeric_dtype(present):
        integer = pd.api.types.is_integer_dtype(present)
    else:
        text = present.astype(str).str.strip()
        if pd.to_numeric(text, errors="coerce").isna().any():
            return "list" if text.str.contains(separator, regex=False).any() else "categorical"
        integer = text.str.fullmatch(INTEGER).all()
    return "categorical" if integer and present.nunique() <= MAX_CATEGORICAL_INTEGERS else "continuous"


def _text(value) -> str:
    if _is_list(value):
        return "|".join(map(str, value))
    if pd.isna(value):
        return ""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))  # 1995.0 (an integer column with gaps, as pandas reads it) is "1995"
    return str(value)


def _convert(frame: pd.DataFrame, column: str, kind: str, separator: str, notes: list[str]) -> pd.Series:
    values = frame[column]
    if kind == "categorical":
        return values.map(_text).astype(object)
    if kind == "continuous":
        numeric = _numbers(frame, column, "declared continuous, but {value!r} is not a number "
                                          "({count} such rows)")
        if numeric.isna().any():
            median = numeric.median()
            notes.append(f"{frame.attrs.get('source')}: {int(numeric.isna().sum())} missing "
                         f"{column!r} values set to the median {median:g}")
            numeric = numeric.fillna(median)
        return numeric.astype(np.float32)

    def to_list(value):
        if _is_list(value):
            return [str(t) for t in value if t is not None]
        if pd.isna(value):
            return []
        return [t.strip() for t in str(value).split(separator) if t.strip()]
    return values.map(to_list)


def _side(frame: pd.DataFrame | None, id_column: str, declared: dict, separator: str, where: str,
          notes: list[str]) -> tuple[pd.DataFrame | None, FeatureSpec]:
    spec = FeatureSpec()
    if frame is None:
        if declared:
            raise DataError(f"declares {id_column[:-3]}s columns, but there is no {id_column[:-3]}s file",
                            where, column=next(iter(declared)))
        return None, spec
    _require(frame, [id_column])
    out = pd.DataFrame({id_column: _ids(frame, id_column)})
    _fail(frame, out[id_column].duplicated(), id_column, "duplicate id {value} ({count} repeated rows)")
    for column in declared:
        if column not in frame.columns:
            raise DataError(f"declared column is not in {frame.attrs.get('source')}", where, column=column)
    metadata = ["creation_timestamp"] if id_column == "item_id" and "creation_timestamp" in frame else []
    for column in metadata:
        out[column] = _timestamps(frame, column)
    for column in (c for c in frame.columns if c != id_column and c not in metadata):
        if column in RESERVED:
            raise DataError("reserved column name; rename it", frame.attrs.get("source"), column=column)
        spec.decided[column] = "declared" if column in declared else "inferred"
        kind = declared.get(column) or _infer(frame[column], separator)
        if kind == "dropped":
            spec.dropped.append(column)
            continue
        out[column] = _convert(frame, column, kind, separator, notes)
        by_kind = {"categorical": spec.categorical, "continuous": spec.continuous, "list": spec.lists}
        by_kind[kind].append(column)
    return out, spec


def _interactions(frame: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    _require(frame, ["user_id", "item_id", "timestamp"])
    out = pd.DataFrame({"user_id": _ids(frame, "user_id"), "item_id": _ids(frame, "item_id"),
                        "timestamp": _timestamps(frame, "timestamp")})
    if "event_type" in frame.columns:
        out["event_type"] = frame["event_type"].map(_text).astype(object)
    if "event_value" in frame.columns:
        values = _numbers(frame, "event_value", "event_value must be a number, got {value!r} "
                                                "({count} such rows)")
        _fail(frame, values.isna(), "event_value", "empty event_value ({count} such rows)")
        out["event_value"] = values.astype(np.float32)
    extra = [c for c in frame.columns if c not in out.columns]
    if extra:
        notes.append(f"{frame.attrs.get('source')}: dropped column(s) {extra} (not in the schema)")
    return out


def _check_declared(declared: dict, where: str) -> None:
    unknown = sorted(set(declared) - {"users", "items", "list_separator"})
    if unknown:
        raise DataError(f"unknown key(s) {unknown}: use 'users', 'items' and 'list_separator'", where)
    separator = declared.get("list_separator", "|")
    if not isinstance(separator, str) or not separator:
        raise DataError(f"list_separator must be a non-empty string, got {separator!r}", where)
    for side in ("users", "items"):
        kinds = declared.get(side, {})
        if not isinstance(kinds, dict):
            raise DataError(f"{side!r} must map column names to kinds", where)
        for column, kind in kinds.items():
            if kind not in KINDS:
                raise DataError(f"unknown kind {kind!r}: use one of {', '.join(KINDS)}", where, column=column)


def _prepared(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """A shallow copy with positional row numbers and a source, refused if it has no rows."""
    copy = frame.copy(deep=False)
    copy.index = pd.RangeIndex(len(copy))
    copy.attrs = {"source": frame.attrs.get("source", source), "csv": frame.attrs.get("csv", False)}
    if copy.empty:
        raise DataError("the table has no rows", copy.attrs["source"])
    return copy


def from_frames(interactions: pd.DataFrame, users: pd.DataFrame | None = None,
                items: pd.DataFrame | None = None, declared: dict | None = None, source: str = "<memory>",
                list_separator: str = "|", schema_path=None) -> InteractionData:
    """Validate and convert in-memory tables (the in-memory adapters and :func:`load_files` use it).

    ``declared`` has the schema file's shape; ``source`` names tables without a file in errors
    (as "<source> (users)"), ``schema_path`` names the declarations (default: ``source``).
    The given frames are not modified.
    """
    declared = dict(declared or {})
    where = str(schema_path or source)
    _check_declared(declared, where)
    separator = declared.get("list_separator", list_separator)
    frames = {}
    for name, frame in (("interactions", interactions), ("users", users), ("items", items)):
        frames[name] = None if frame is None else _prepared(frame, f"{source} ({name})")
    notes: list[str] = []
    inter = _interactions(frames["interactions"], notes)
    users_out, user_spec = _side(frames["users"], "user_id", declared.get("users", {}), separator, where,
                                 notes)
    items_out, item_spec = _side(frames["items"], "item_id", declared.get("items", {}), separator, where,
                                 notes)
    shared = sorted(set(user_spec.columns) & set(item_spec.columns))
    if shared:
        raise DataError(f"feature column(s) {shared} are in both the users and the items file "
                        f"({frames['items'].attrs['source']}); rename one side",
                        frames["users"].attrs["source"], column=shared[0])
    for name, column, side in (("items", "item_id", items_out), ("users", "user_id", users_out)):
        if side is not None:
            _fail(frames["interactions"], ~inter[column].isin(side[column]), column,
                  f"{{value}} is not in the {name} file ({{count}} interactions point at unknown ids)")
    return InteractionData(inter, users_out, items_out, user_spec, item_spec, notes)


def read_schema(path) -> dict:
    """The declarations of a schema file (``.json`` or ``.toml``); checked by :func:`from_frames`."""
    path = Path(path)
    if not path.is_file():
        raise DataError("schema file not found", path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".toml"):
        raise DataError("unknown schema file type: use .json or .toml", path)
    try:
        declared = tomllib.loads(path.read_text()) if suffix == ".toml" else json.loads(path.read_text())
    except ValueError as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise DataError(f"cannot parse the schema file ({exc})", path) from exc
    if not isinstance(declared, dict):
        raise DataError("the schema file must hold an object/table", path)
    return declared


def load_files(interactions, users=None, items=None, schema=None,
               list_separator: str = "|") -> InteractionData:
    """Read, validate and convert the files of a data set (see the module docstring).

    Raises :class:`DataError` on the first problem, before anything else is done.
    """
    declared = read_schema(schema) if schema else {}
    return from_frames(read_table(interactions), read_table(users) if users else None,
                       read_table(items) if items else None, declared, str(interactions),
                       list_separator, schema)
