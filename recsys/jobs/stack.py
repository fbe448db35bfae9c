"""The jobs that turn offline artifacts into a serving stack, in the order data flows:
train -> features (Feast) -> index (Milvus) -> export (Triton model repository) -> serve."""
from __future__ import annotations

import logging
from contextlib import contextmanager

from core.artifacts import Artifacts
from core.config import Config
from recsys.jobs import featurestore
from recsys.jobs.catalog import Catalog
from recsys.runtime.servers import MilvusProcess, TritonProcess, running
from vector_index.client import connect

LOG = logging.getLogger(__name__)


def train(config: Config, production: bool = False) -> Artifacts:
    """The offline job (data, workflows, models); ``production``: on every interaction, nothing
    held out (:func:`training.pipeline.run`)."""
    from training import pipeline

    return pipeline.run(config, production=production)


def load_features(config: Config) -> None:
    """``feast apply`` + ``feast materialize-incremental`` in the configured repo."""
    featurestore.apply_and_materialize(config)


def build_index(config: Config) -> int:
    """Load the trained item vectors into Milvus (``config.milvus.uri``)."""
    return Catalog(config).rebuild()


def export(config: Config):
    """Write the Triton model repository from the artifacts."""
    from ensemble.export import export_model_repository

    return export_model_repository(config, Artifacts.of(config))


def require_artifacts(config: Config) -> Artifacts:
    artifacts = Artifacts.of(config)
    if not artifacts.item_vectors.is_file():
        raise FileNotFoundError(f"no trained artifacts in {config.workdir}: run `recsys build` first")
    return artifacts


@contextmanager
def local_stack(config: Config, reindex: bool = False):
    """Start the local Milvus (unless ``milvus.uri`` points at another one) and Triton, in that
    order, (re)building the item index when asked or when the collection is missing; stop both
    on exit. Yields ``(milvus_process_or_None, triton_process)``."""
    triton = TritonProcess(config)
    with local_milvus(config, reindex) as milvus:
        with running(triton):
            yield milvus, triton


@contextmanager
def local_milvus(config: Config, reindex: bool = False):
    """Start the local Milvus (unless ``milvus.uri`` points at another one) and (re)build the
    item index when asked or when the collection is missing; stop it on exit. Yields the
    process or ``None``."""
    milvus = None if config.milvus.uri else MilvusProcess(config)
    with running(*([milvus] if milvus else [])):
        if reindex or not _collection_exists(config):
            LOG.info("indexing item vectors into %s", config.milvus.collection)
            build_index(config)
        yield milvus


def _collection_exists(config: Config) -> bool:
    client = connect(config.milvus)
    try:
        return bool(client.has_collection(config.milvus.collection))
    finally:
        client.close()
