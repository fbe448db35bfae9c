"""Feast definitions of the recommender: entities ``user`` and ``item`` and one feature view
each. The offline sources are the parquet files the training job writes into ``data/``, and
the feature columns are the ones it chose for the data set (``data/features.json``: name ->
value type), so a bring-your-own data set gets its own columns without editing this file."""
import json
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Array, Float32, Int64, String

DATA_DIR = Path(__file__).resolve().parent / "data"
# Feature rows are stamped when training computes them; they stay servable for a year.
FEATURE_TTL = timedelta(days=365)
VALUE_TYPES = {"string": String, "float32": Float32, "int64": Int64,
               "string_list": Array(String), "int64_list": Array(Int64)}


def _columns(view: str) -> dict:
    spec = DATA_DIR / "features.json"
    return json.loads(spec.read_text())[view] if spec.is_file() else {}


def _view(name: str, entity: Entity) -> FeatureView:
    return FeatureView(
        name=name,
        entities=[entity],
        ttl=FEATURE_TTL,
        schema=[Field(name=column, dtype=VALUE_TYPES[kind]) for column, kind in _columns(name).items()],
        source=FileSource(name=f"{name}_source", path=str(DATA_DIR / f"{name}.parquet"),
                          timestamp_field="event_timestamp"),
        online=True,
    )


user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64,
              description="A user (in click logs such as YOOCHOOSE, one session)")
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64,
              description="A catalogue item, keyed by its raw catalogue id")

user_features = _view("user_features", user)
item_features = _view("item_features", item)
