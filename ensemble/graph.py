"""The serving graphs, one per served model (:data:`GRAPHS`, keyed by the contract's kind).

``recommender``:

    user_id -> Feast(user) -> the session's clicks (recent_items) merged into the history
            -> NVTabular(user) -> user tower -> QueryMilvus (retrieval_k, the
            user's own items excluded, the request filter's Milvus part pushed down)
            -> Feast(items) -> NVTabular(item) -> DLRM -> the request filter on the raw item
            features -> order by the blended score (top_k) -> fallback / cold start

Every column after retrieval is ``[batch, retrieval_k]``, so each user's candidates stay in
that user's row from end to end. Feature names and types are the ones training wrote for the
Feast repo, so the graph follows the data set.

``similar_items``:

    item_id -> SimilarItems (retrieval_k nearest items, the item itself excluded, the request
            filter's Milvus part pushed down) -> Feast(items) -> the request filter -> the first
            top_k, filled from the popular items within the filter
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
from merlin.schema import ColumnSchema, Schema
from merlin.systems.dag import Ensemble

from core.artifacts import Artifacts
from core.config import Config
from core.contract import CATEGORY_FEATURE, RECOMMENDER, SIMILAR_ITEMS, ModelContract
from operators.feast_lookup import QueryFeatures
from operators.ordering import FilterCandidates, OrderCandidates, PopularFallback, TopSimilar
from operators.query_milvus import QueryMilvus
from operators.session import RECENT_ITEMS, SESSION_USER, MergeSession
from operators.similar_items import SimilarItems
from operators.tensorflow import PredictSavedModel
from operators.workflow import TransformFeatures
from training.features import HISTORY, USER_COUNT


def request_schema(contract: ModelContract, session: bool = False) -> Schema:
    """The graph's input: the contract's id column, ``[batch]`` INT64 (and with ``session``
    the visitors' recent clicks, ``[batch, clicks]`` INT64 padded with -1)."""
    columns = [ColumnSchema(contract.id_input, dtype=np.int64, dims=(None,))]
    if session:
        columns.append(ColumnSchema(RECENT_ITEMS, dtype=np.int64, dims=(None, None)))
    return Schema(columns)


def popular_item_features(config: Config, popular_ids: np.ndarray, features: dict[str, str]) -> dict[str, list]:
    """The raw Feast features of the popular items (aligned with ``popular_ids``), for filling
    filtered rows with popular items that pass the filter."""
    rows = pd.read_parquet(config.feature_data_dir / "item_features.parquet").set_index("item_id")
    rows = rows.reindex(popular_ids)
    return {name: [None if not isinstance(v, (list, np.ndarray)) and pd.isna(v) else
                   (list(v) if isinstance(v, np.ndarray) else v) for v in rows[name]]
            for name in features if name in rows.columns}


def feast_features(config: Config) -> dict[str, dict[str, str]]:
    """Feature view -> {feature: value type}, as training wrote them for the Feast repo."""
    return json.loads((config.feature_data_dir / "features.json").read_text())


def build_recommender(config: Config, artifacts: Artifacts) -> Ensemble:
    """Assemble the cascade from the offline artifacts (nothing is fitted here)."""
    serving = config.serving
    views = feast_features(config)
    ordering = json.loads(artifacts.ordering.read_text())
    popular = pd.read_parquet(artifacts.popular_items)
    embedding_dim = int(pd.read_parquet(artifacts.item_vectors).iloc[0]["embedding"].shape[0])
    ttl = serving.feature_cache_ttl_s
    stored = ["user_id"] >> QueryFeatures("user_features", "user_id", views["user_features"],
                                          found_column="user_found", cache_ttl_s=ttl)
    user_raw = (stored + [RECENT_ITEMS]) >> MergeSession(
        ordering.get("max_history", config.training.max_history),
        count_column=USER_COUNT if USER_COUNT in views["user_features"] else None)
    user_encoded = user_raw >> TransformFeatures(artifacts.user_workflow, "user")
    user_vector = user_encoded >> PredictSavedModel(artifacts.query_tower, "query_tower",
                                                    "user_embedding", (None, embedding_dim))
    retrieval_input = user_vector + user_raw[HISTORY] if serving.exclude_seen else user_vector
    item_views = views["item_features"]
    candidates = retrieval_input >> QueryMilvus(
        top_k=serving.retrieval_k, exclude_column=HISTORY if serving.exclude_seen else None,
        fill_ids=popular["item_id"].to_numpy(),
        category_feature=CATEGORY_FEATURE if CATEGORY_FEATURE in item_views else None)
    item_raw = candidates["candidate_ids"] >> QueryFeatures(
        "item_features", "item_id", views["item_features"], entity_column="candidate_ids",
        cache_ttl_s=ttl, warm_ids=pd.read_parquet(artifacts.items)["item_id"].to_numpy(), on_update="refresh")
    item_encoded = item_raw >> TransformFeatures(artifacts.item_workflow, "item")
    ranked = (user_encoded + item_encoded) >> PredictSavedModel(
        artifacts.ranking_model, "dlrm", "ranking_score", (None, serving.retrieval_k))
    kept = ((candidates["candidate_ids"] + item_raw[list(item_views)]) if item_views
            else candidates["candidate_ids"]) >> FilterCandidates()
    ordered = (kept + candidates["candidate_scores"] + ranked) >> OrderCandidates(
        serving.top_k, ordering["retrieval_weight"])
    answer = (ordered + user_raw["user_found", HISTORY, SESSION_USER]) >> PopularFallback(
        popular["item_id"].to_numpy(), popular["score"].to_numpy(), serving.top_k,
        popular_features=popular_item_features(config, popular["item_id"].to_numpy(), item_views),
        session_column=SESSION_USER)
    return Ensemble(answer, request_schema(RECOMMENDER, session=True))


def build_similar_items(config: Config, artifacts: Artifacts) -> Ensemble:
    """item_id -> the ``retrieval_k`` nearest items in Milvus (the request filter's Milvus part
    pushed down) -> their Feast features -> the request filter -> the first ``top_k``, filled
    from the popular items within the filter."""
    popular = pd.read_parquet(artifacts.popular_items)["item_id"].to_numpy()
    views = feast_features(config)["item_features"]
    nearest = ["item_id"] >> SimilarItems(
        top_k=config.serving.retrieval_k, fill_ids=popular,
        category_feature=CATEGORY_FEATURE if CATEGORY_FEATURE in views else None)
    candidates = nearest["item_ids"]
    if views:
        item_raw = nearest["item_ids"] >> QueryFeatures(
            "item_features", "item_id", views, entity_column="item_ids",
            cache_ttl_s=config.serving.feature_cache_ttl_s,
            warm_ids=pd.read_parquet(artifacts.items)["item_id"].to_numpy(), on_update="refresh")
        candidates = candidates + item_raw[list(views)]
    kept = candidates >> FilterCandidates(id_column="item_ids")
    answer = (kept + nearest["scores", "found"] + ["item_id"]) >> TopSimilar(
        popular, config.serving.top_k, popular_features=popular_item_features(config, popular, views))
    return Ensemble(answer, request_schema(SIMILAR_ITEMS))


GRAPHS = {RECOMMENDER.kind: build_recommender, SIMILAR_ITEMS.kind: build_similar_items}
