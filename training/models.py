"""The two models of the cascade, in TensorFlow/Keras, trained on the encoded output of the
saved NVTabular workflows (categorical columns are contiguous codes, continuous columns are
normalized floats, list columns are padded code matrices with 0 as padding).

* Two-Tower retrieval: a user tower and an item tower (embeddings of every feature, then an
  MLP); score = inner product (what Milvus searches with). Trained with a softmax over the
  whole catalogue (the sampled approximation is not needed at these catalogue sizes).
* DLRM ranking: one embedding per categorical feature, a masked mean embedding per list
  feature (the user's history shares the item-id table), a bottom MLP for continuous
  features, pairwise dot interactions of all those vectors, a top MLP -> one logit. Trained
  listwise: each clicked item against sampled negatives, softmax cross-entropy.

Both are saved as SavedModels whose ``serving_default`` signature takes the encoded feature
columns by name. The user tower takes ``[batch]`` (and ``[batch, length]`` list) inputs; the
ranker takes user columns as ``[batch]`` and item columns as ``[batch, k]``, so one call ranks
every candidate of every user and user-side work is done once per user.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from core.config import TrainingConfig  # noqa: E402
from core.progress import bar  # noqa: E402

LOG = logging.getLogger(__name__)


@dataclass
class SideSpec:
    """The encoded columns of one side (user or item) and their vocabulary sizes."""

    id_column: str
    categorical: dict[str, int]  # includes the id column
    continuous: list[str] = field(default_factory=list)
    lists: dict[str, int] = field(default_factory=dict)
    shared_tables: dict[str, str] = field(default_factory=dict)  # list column -> categorical it shares

    @property
    def columns(self) -> list[str]:
        return list(self.categorical) + self.continuous + list(self.lists)


def pad_lists(values, max_length: int | None = None) -> np.ndarray:
    """Lists of codes (a column of arrays) as an int64 matrix padded with 0."""
    values = list(values)
    longest = max([len(v) for v in values] + [1])
    width = min(longest, max_length) if max_length else longest
    out = np.zeros((len(values), width), dtype=np.int64)
    for row, codes in enumerate(values):
        codes = np.asarray(codes, dtype=np.int64)[:width]
        out[row, : len(codes)] = codes
    return out


def side_arrays(frame, spec: SideSpec, max_list_length: int | None = None) -> dict[str, np.ndarray]:
    """The model inputs of one side from an encoded frame."""
    arrays = {name: frame[name].to_numpy(dtype=np.int64) for name in spec.categorical}
    arrays.update({name: frame[name].to_numpy(dtype=np.float32) for name in spec.continuous})
    arrays.update({name: pad_lists(frame[name], max_list_length) for name in spec.lists})
    return arrays


class FeatureEmbeddings(tf.keras.layers.Layer):
    """One side's features as a stack of vectors ``[..., n, dim]``: an embedding per
    categorical column, a masked mean embedding per list column and, if there are continuous
    columns, a bottom MLP over them."""

    def __init__(self, spec: SideSpec, dim: int, shared: "FeatureEmbeddings | None" = None, **kwargs):
        super().__init__(**kwargs)
        self.spec = spec
        self.shared = shared  # list columns in ``spec.shared_tables`` embed with its tables
        tables = {name: tf.keras.layers.Embedding(size + 1, dim, name=f"emb_{name}")
                  for name, size in spec.categorical.items()}
        tables.update({name: tf.keras.layers.Embedding(size + 1, dim, name=f"emb_{name}")
                       for name, size in spec.lists.items() if name not in spec.shared_tables})
        self.tables = tables
        self.bottom = (tf.keras.Sequential([tf.keras.layers.Dense(dim * 2, activation="relu"),
                                            tf.keras.layers.Dense(dim)])
                       if spec.continuous else None)

    def table(self, name: str):
        if name in self.spec.shared_tables:
            return self.shared.tables[self.spec.shared_tables[name]]
        return self.tables[name]

    def call(self, inputs: dict) -> tf.Tensor:
        vectors = [self.table(name)(tf.clip_by_value(inputs[name], 0, size))
                   for name, size in self.spec.categorical.items()]
        for name, size in self.spec.lists.items():
            codes = tf.clip_by_value(inputs[name], 0, size)
            mask = tf.cast(codes > 0, tf.float32)[..., None]
            summed = tf.reduce_sum(self.table(name)(codes) * mask, axis=-2)
            vectors.append(summed / tf.maximum(tf.reduce_sum(mask, axis=-2), 1.0))
        if self.bottom is not None:
            dense = tf.stack([tf.cast(inputs[name], tf.float32) for name in self.spec.continuous], -1)
            vectors.append(self.bottom(dense))
        return tf.stack(vectors, axis=-2)


def _mlp(layers, output_dim: int) -> tf.keras.Sequential:
    return tf.keras.Sequential([tf.keras.layers.Dense(units, activation="relu") for units in layers]
                               + [tf.keras.layers.Dense(output_dim)])


class Tower(tf.keras.Model):
    """Features of one side -> one vector (embeddings, flattened, MLP)."""

    def __init__(self, spec: SideSpec, cfg: TrainingConfig, **kwargs):
        super().__init__(**kwargs)
        self.spec = spec
        self.features = FeatureEmbeddings(spec, cfg.embedding_dim)
        self.mlp = _mlp(cfg.tower_layers[:-1], cfg.tower_layers[-1])

    def call(self, inputs: dict) -> tf.Tensor:
        stacked = self.features(inputs)
        flat = tf.reshape(stacked, [-1, stacked.shape[-2] * stacked.shape[-1]])
        return self.mlp(flat)


class DLRM(tf.keras.Model):
    """User columns ``[batch]`` + item columns ``[batch, k]`` -> logits ``[batch, k]``."""

    def __init__(self, user: SideSpec, item: SideSpec, cfg: TrainingConfig, **kwargs):
        super().__init__(**kwargs)
        self.user_spec, self.item_spec = user, item
        self.item_features = FeatureEmbeddings(item, cfg.embedding_dim)
        # The user's history is a list of item codes: it shares the item-id embedding table.
        self.user_features = FeatureEmbeddings(user, cfg.embedding_dim, shared=self.item_features)
        self.top = _mlp(cfg.ranking_top_layers, 1)

    def call(self, inputs: dict) -> tf.Tensor:
        users = self.user_features({n: inputs[n] for n in self.user_spec.columns})  # [B, nu, d]
        items = self.item_features({n: inputs[n] for n in self.item_spec.columns})  # [B, K, ni, d]
        k = tf.shape(items)[1]
        users = tf.repeat(users[:, None], k, axis=1)
        vectors = tf.concat([users, items], axis=2)  # [B, K, n, d]
        n = vectors.shape[2]
        dots = tf.linalg.matmul(vectors, vectors, transpose_b=True)
        upper = np.triu_indices(n, 1)
        pairs = tf.gather(tf.reshape(dots, [-1, k, n * n]), upper[0] * n + upper[1], axis=2)
        logits = self.top(tf.concat([pairs, tf.reshape(vectors, [-1, k, n * vectors.shape[3]])], -1))
        return logits[..., 0]


def _signature(spec_inputs: dict[str, tuple]) -> dict[str, tf.TensorSpec]:
    return {name: tf.TensorSpec(shape, dtype, name=name) for name, (shape, dtype) in spec_inputs.items()}


def _input_specs(spec: SideSpec, lead: list) -> dict[str, tuple]:
    specs = {name: (lead, tf.int64) for name in spec.categorical}
    specs.update({name: (lead, tf.float32) for name in spec.continuous})
    specs.update({name: (lead + [None], tf.int64) for name in spec.lists})
    return specs


def _batches(n: int, batch_size: int, rng: np.random.Generator):
    order = rng.permutation(n)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def _take(arrays: dict, rows) -> dict:
    return {name: tf.constant(values[rows]) for name, values in arrays.items()}


@dataclass
class TwoTower:
    """A trained Two-Tower model: ``user_vectors`` / ``item_vectors`` and export."""

    user_tower: Tower
    item_tower: Tower

    def user_vectors(self, users: dict[str, np.ndarray], batch_size: int = 8192) -> np.ndarray:
        n = len(next(iter(users.values())))
        return np.concatenate([self.user_tower({k: v[s:s + batch_size] for k, v in users.items()}).numpy()
                               for s in range(0, n, batch_size)] or [np.zeros((0, 1), np.float32)])

    def item_vectors(self, items: dict[str, np.ndarray]) -> np.ndarray:
        return self.item_tower({k: tf.constant(v) for k, v in items.items()}).numpy()

    def save_user_tower(self, path: Path) -> None:
        _save_tower(self.user_tower, "user_vector", path)

    def save_item_tower(self, path: Path) -> None:
        """The item tower, for vectors of items added to the catalogue after training."""
        _save_tower(self.item_tower, "item_vector", path)


def _save_tower(tower: "Tower", output: str, path: Path) -> None:
    serve = tf.function(lambda **inputs: {output: tower(inputs)}, input_signature=None)
    concrete = serve.get_concrete_function(**_signature(_input_specs(tower.spec, [None])))
    tf.saved_model.save(tower, str(path), signatures={"serving_default": concrete})


def train_two_tower(users: dict, items: dict, pairs: tuple[np.ndarray, np.ndarray],
                    user_spec: SideSpec, item_spec: SideSpec, cfg: TrainingConfig,
                    epochs: int, on_epoch: Callable[[int, "TwoTower"], None] | None = None,
                    label: str = "two-tower") -> TwoTower:
    """Train on (user row, item row) pairs: softmax of the clicked item over the catalogue.

    ``users`` / ``items`` are the model inputs of every user / item (rows = codes order of
    ``pairs``); ``on_epoch`` is called after every epoch (validation, early stopping).
    """
    tf.keras.utils.set_random_seed(cfg.seed)
    model = TwoTower(Tower(user_spec, cfg, name="user_tower"), Tower(item_spec, cfg, name="item_tower"))
    optimizer = tf.keras.optimizers.Adam(cfg.learning_rate)
    all_items = {k: tf.constant(v) for k, v in items.items()}
    user_rows, item_rows = pairs

    @tf.function
    def step(user_inputs, targets):
        with tf.GradientTape() as tape:
            queries = model.user_tower(user_inputs, training=True)
            candidates = model.item_tower(all_items, training=True)
            logits = tf.matmul(queries, candidates, transpose_b=True) / cfg.logits_temperature
            loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
                targets, logits, from_logits=True))
        variables = model.user_tower.trainable_variables + model.item_tower.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    rng = np.random.default_rng(cfg.seed)
    for epoch in range(epochs):
        for rows in bar(_batches(len(user_rows), cfg.batch_size, rng), -(-len(user_rows) // cfg.batch_size),
                        f"{label} epoch {epoch + 1}/{epochs}", cfg.progress):
            loss = step(_take(users, user_rows[rows]), tf.constant(item_rows[rows]))
        LOG.info("two-tower epoch %d loss %.4f", epoch + 1, float(loss))
        if on_epoch is not None and on_epoch(epoch + 1, model) is False:
            break
    return model


def _without(history: np.ndarray, codes: np.ndarray, dropout: float, rng: np.random.Generator) -> np.ndarray:
    """The history rows with the clicked item removed (the model must not see the answer) and,
    with ``dropout``, that share of the other items hidden too."""
    hidden = history == codes[:, None]
    if dropout > 0:
        hidden |= rng.random(history.shape) < dropout
    return np.where(hidden, 0, history)


class Ranker:
    """A trained DLRM: ``score`` and export."""

    def __init__(self, model: DLRM):
        self.model = model

    def score(self, inputs: dict[str, np.ndarray], batch_size: int = 256) -> np.ndarray:
        n = len(next(iter(inputs.values())))
        parts = [self.model({k: tf.constant(v[s:s + batch_size]) for k, v in inputs.items()}).numpy()
                 for s in range(0, n, batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    def save(self, path: Path) -> None:
        model = self.model
        specs = {**_input_specs(model.user_spec, [None]), **_input_specs(model.item_spec, [None, None])}
        serve = tf.function(lambda **inputs: {"score": model(inputs)})
        concrete = serve.get_concrete_function(**_signature(specs))
        tf.saved_model.save(model, str(path), signatures={"serving_default": concrete})


def train_dlrm(users: dict, items: dict, pairs: tuple[np.ndarray, np.ndarray], user_spec: SideSpec,
               item_spec: SideSpec, negatives: Callable[[np.ndarray, np.random.Generator], np.ndarray],
               cfg: TrainingConfig, epochs: int,
               on_epoch: Callable[[int, Ranker], None] | None = None, label: str = "ranker") -> Ranker:
    """Train the ranker listwise: each clicked (user row, item row) pair against the item rows
    ``negatives(user_rows, rng)`` returns (``[n, negatives]``), softmax cross-entropy with the
    clicked item at position 0."""
    tf.keras.utils.set_random_seed(cfg.seed)
    model = DLRM(user_spec, item_spec, cfg, name="dlrm")
    ranker = Ranker(model)
    optimizer = tf.keras.optimizers.Adam(cfg.learning_rate)

    @tf.function
    def step(inputs):
        with tf.GradientTape() as tape:
            logits = model(inputs, training=True)
            loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
                tf.zeros(tf.shape(logits)[0], tf.int64), logits, from_logits=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                      model.trainable_variables))
        return loss

    rng = np.random.default_rng(cfg.seed)
    user_rows, item_rows = pairs
    item_ids = items[item_spec.id_column]
    batch_size = max(cfg.batch_size // 8, 32)
    for epoch in range(epochs):
        for rows in bar(_batches(len(user_rows), batch_size, rng), -(-len(user_rows) // batch_size),
                        f"{label} epoch {epoch + 1}/{epochs}", cfg.progress):
            candidates = np.concatenate([item_rows[rows, None], negatives(user_rows[rows], rng)], 1)
            batch = {name: tf.constant(_without(values[user_rows[rows]], item_ids[item_rows[rows]],
                                                cfg.history_dropout, rng)
                                       if user_spec.shared_tables.get(name) == item_spec.id_column
                                       else values[user_rows[rows]])
                     for name, values in users.items()}
            batch.update({name: tf.constant(values[candidates]) for name, values in items.items()})
            loss = step(batch)
        LOG.info("ranker epoch %d loss %.4f", epoch + 1, float(loss))
        if on_epoch is not None and on_epoch(epoch + 1, ranker) is False:
            break
    return ranker
