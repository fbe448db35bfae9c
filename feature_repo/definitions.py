"""Feast definitions of the recommender: entities ``user`` and ``item`` and one feature view
each. The offline source is the parquet written by the training job into ``data/``."""
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Float32, Int64, String

DATA_DIR = Path(__file__).resolve().parent / "data"
# Feature rows are stamped when training computes them; they stay servable for a year.
FEATURE_TTL = timedelta(days=365)

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64,
              description="A visitor; in YOOCHOOSE-style logs, one session")
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64,
              description="A catalogue item, keyed by its raw catalogue id")

user_features = FeatureView(
    name="user_features",
    entities=[user],
    ttl=FEATURE_TTL,
    schema=[
        Field(name="user_activity", dtype=String),
        Field(name="user_top_category", dtype=String),
        Field(name="user_start_hour", dtype=Int64),
        Field(name="user_clicks", dtype=Float32),
    ],
    source=FileSource(name="user_features_source", path=str(DATA_DIR / "user_features.parquet"),
                      timestamp_field="event_timestamp"),
    online=True,
)

item_features = FeatureView(
    name="item_features",
    entities=[item],
    ttl=FEATURE_TTL,
    schema=[
        Field(name="item_category", dtype=String),
        Field(name="item_popularity", dtype=Int64),
        Field(name="item_clicks", dtype=Float32),
    ],
    source=FileSource(name="item_features_source", path=str(DATA_DIR / "item_features.parquet"),
                      timestamp_field="event_timestamp"),
    online=True,
)
