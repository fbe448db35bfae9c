"""The serving graph of the ``recommender`` model:

    user_id -> Feast(user) -> NVTabular(user) -> user tower -> QueryMilvus (retrieval_k)
            -> Feast(items) -> NVTabular(item) -> DLRM -> order by score (top_k) -> fallback

Every column after retrieval is ``[batch, retrieval_k]``, so each user's candidates stay in
that user's row from end to end.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from merlin.schema import ColumnSchema, Schema
from merlin.systems.dag import Ensemble

from operators.feast_lookup import QueryFeatures
from operators.milvus import QueryMilvus
from operators.ordering import OrderCandidates, PopularFallback
from operators.tensorflow import PredictSavedModel
from operators.workflow import TransformFeatures
from recsys.config import Config
from training.pipeline import Artifacts

# Feature names and their dtypes as served by Feast (see feature_repo/definitions.py).
USER_FEATURE_TYPES = {"user_activity": "str", "user_top_category": "str",
                      "user_start_hour": "int64", "user_clicks": "float32"}
ITEM_FEATURE_TYPES = {"item_category": "str", "item_popularity": "int64", "item_clicks": "float32"}
REQUEST_SCHEMA = Schema([ColumnSchema("user_id", dtype=np.int64, dims=(None,))])


def build_ensemble(config: Config, artifacts: Artifacts) -> Ensemble:
    """Assemble the cascade from the offline artifacts (nothing is fitted here)."""
    serving = config.serving
    popular = pd.read_parquet(artifacts.popular_items)
    embedding_dim = int(pd.read_parquet(artifacts.item_vectors).iloc[0]["embedding"].shape[0])

    ttl = serving.feature_cache_ttl_s
    user_raw = ["user_id"] >> QueryFeatures("user_features", "user_id", USER_FEATURE_TYPES,
                                            found_column="user_found", cache_ttl_s=ttl)
    user_encoded = user_raw >> TransformFeatures(artifacts.user_workflow, "user")
    user_vector = user_encoded >> PredictSavedModel(artifacts.query_tower, "query_tower",
                                                    "user_embedding", output_dim=embedding_dim)
    candidates = user_vector >> QueryMilvus(top_k=serving.retrieval_k)
    item_raw = candidates["candidate_ids"] >> QueryFeatures(
        "item_features", "item_id", ITEM_FEATURE_TYPES, entity_column="candidate_ids",
        cache_ttl_s=ttl, warm_ids=pd.read_parquet(artifacts.items)["item_id"].to_numpy())
    item_encoded = item_raw >> TransformFeatures(artifacts.item_workflow, "item")
    ranked = (user_encoded + item_encoded) >> PredictSavedModel(artifacts.ranking_model, "dlrm",
                                                                "ranking_score")
    ordered = (candidates["candidate_ids"] + ranked) >> OrderCandidates(serving.top_k)
    answer = (ordered + user_raw["user_found"]) >> PopularFallback(
        popular["item_id"].to_numpy(), popular["score"].to_numpy(), serving.top_k)
    return Ensemble(answer, REQUEST_SCHEMA)
