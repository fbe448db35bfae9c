"""Model training with merlin-models (TensorFlow, CPU): a Two-Tower retrieval model and a DLRM
ranking model. Both consume the encoded output of the saved NVTabular workflows."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402
import merlin.models.tf as mm  # noqa: E402
from merlin.io import Dataset  # noqa: E402
from merlin.models.tf.transforms.bias import PopularityLogitsCorrection  # noqa: E402
from merlin.schema import Schema, Tags  # noqa: E402

from recsys.config import TrainingConfig  # noqa: E402

RANKING_TARGET = "click"


def _seed(seed: int) -> None:
    tf.keras.utils.set_random_seed(seed)


def train_two_tower(encoded_pairs: pd.DataFrame, schema: Schema, cfg: TrainingConfig):
    """Train a Two-Tower model on clicked (user, item) pairs with in-batch negatives and
    dot-product scoring (the same inner product Milvus searches with).

    In-batch negatives are drawn in proportion to popularity; without the logQ correction the
    model learns to push popular items down (it estimates P(item|user) / P(item)), which ruins
    retrieval on skewed click data. The correction uses the training click frequencies.
    """
    _seed(cfg.seed)
    shuffled = encoded_pairs.sample(frac=1.0, random_state=cfg.seed).reset_index(drop=True)
    item_id = schema.select_by_tag(Tags.ITEM_ID).first
    cardinality = int(item_id.int_domain.max) + 1
    frequencies = np.bincount(shuffled[item_id.name].to_numpy(), minlength=cardinality).astype(np.float32)
    task = mm.ItemRetrievalTask(
        schema,
        samplers=[mm.InBatchSampler()],
        post_logits=PopularityLogitsCorrection(frequencies + 1.0, schema=schema),
        logits_temperature=cfg.logits_temperature,
    )
    model = mm.TwoTowerModel(
        schema,
        query_tower=mm.MLPBlock(list(cfg.tower_layers), no_activation_last_layer=True),
        embedding_options=mm.EmbeddingOptions(infer_embedding_sizes=True),
        prediction_tasks=task,
    )
    model.compile(optimizer=tf.keras.optimizers.Adam(cfg.learning_rate), run_eagerly=False,
                  loss="categorical_crossentropy", metrics=[mm.RecallAt(10), mm.NDCGAt(10)])
    model.fit(Dataset(shuffled, schema=schema), batch_size=cfg.batch_size,
              epochs=cfg.retrieval_epochs, verbose=0)
    return model


def export_two_tower(model, encoded_items: pd.DataFrame, raw_item_ids: np.ndarray,
                     item_schema: Schema, out_dir: Path) -> pd.DataFrame:
    """Save the user (query) tower as a SavedModel and return the item vectors keyed by the
    raw catalogue id (``item_id``, ``embedding``)."""
    model.retrieval_block.query_block().save(str(out_dir / "query_tower"))
    item_ds = Dataset(encoded_items[item_schema.column_names], schema=item_schema)
    vectors = model.item_embeddings(item_ds, batch_size=4096).compute()
    columns = [c for c in vectors.columns if c not in item_schema.column_names]
    matrix = vectors[columns].to_numpy(dtype=np.float32)
    # item_embeddings preserves row order, so raw ids line up with the encoded rows.
    return pd.DataFrame({"item_id": raw_item_ids.astype(np.int64), "embedding": list(matrix)})


def train_dlrm(encoded_examples: pd.DataFrame, schema: Schema, cfg: TrainingConfig):
    """Train a DLRM ranking model on clicked pairs (label 1) and sampled non-clicked pairs
    (label 0)."""
    _seed(cfg.seed)
    model = mm.DLRMModel(
        schema,
        embedding_dim=cfg.embedding_dim,
        bottom_block=mm.MLPBlock([cfg.embedding_dim * 2, cfg.embedding_dim]),
        top_block=mm.MLPBlock([128, 64, 32]),
        prediction_tasks=mm.BinaryClassificationTask(RANKING_TARGET),
    )
    model.compile(optimizer=tf.keras.optimizers.Adam(cfg.learning_rate / 2), run_eagerly=False,
                  metrics=[tf.keras.metrics.AUC(name="auc")])
    model.fit(Dataset(encoded_examples, schema=schema), batch_size=cfg.batch_size,
              epochs=cfg.ranking_epochs, verbose=0)
    return model


def ranking_schema(user_schema: Schema, item_schema: Schema) -> Schema:
    """Schema of the ranking data: user + item features and the binary target."""
    from merlin.schema import ColumnSchema

    target = ColumnSchema(RANKING_TARGET, dtype=np.int32, tags=[Tags.BINARY_CLASSIFICATION, Tags.TARGET])
    return user_schema + item_schema + Schema([target])
