"""The jobs that turn offline artifacts into a serving stack, in the order data flows:
train -> features (Feast) -> index (Milvus) -> export (Triton model repository) -> serve."""
from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from dataclasses import replace

from core.artifacts import Artifacts
from core.config import Config
from recsys.jobs import catalog_journal, featurestore, releases
from recsys.jobs.catalog import Catalog
from recsys.runtime.servers import MilvusProcess, TritonProcess, running
from vector_index.client import MilvusUnavailable, connect, quiet_pymilvus
from vector_index.collections import aliased_collection

LOG = logging.getLogger(__name__)


def train(config: Config, production: bool = False) -> Artifacts:
    """The offline job (data, workflows, models); ``production``: on every interaction, nothing
    held out (:func:`training.pipeline.run`)."""
    from training import pipeline

    return pipeline.run(config, production=production)


def load_features(config: Config) -> None:
    """``feast apply`` + ``feast materialize-incremental`` in the configured repo, then the
    events that arrived after the build read the events log written again (materialization
    replaced the rows they had changed), all while the online store's other writers wait; then
    the features of items upserted through the catalogue written again (the items file the
    build read may hold older ones, or none)."""
    from operators import feature_updates

    artifacts = Artifacts.of(config)
    with feature_updates.writing(config.feature_data_dir):
        featurestore.apply_and_materialize(config)
        replay_events(config, artifacts)
    upserted = catalog_journal.Journal(config).edits(artifacts).upserts
    if len(upserted):
        catalog_journal.write_features(config, artifacts, upserted)


def replay_events(config: Config, artifacts: Artifacts) -> int:
    """Events logged after the build of ``artifacts`` read the log, written to the online store
    again; returns how many."""
    import pandas as pd

    from training import imported

    if not artifacts.report.is_file() or not config.events_dir.is_dir():
        return 0
    read = json.loads(artifacts.report.read_text()).get("events_read")
    if read is None:  # a build from before the events log
        return 0
    later = [imported.events_after(path, read.get(path.name, 0)) for path in sorted(config.events_dir.glob("*.csv"))]
    later = [frame for frame in later if len(frame)]
    if not later:
        return 0
    from ensemble.events import EventsRunner  # Merlin and the graph modules: only when there is work

    events = pd.concat(later, ignore_index=True)
    EventsRunner(config).replay(events["user_id"], events["item_id"], events["timestamp"])
    LOG.info("%d events that arrived during the build written again after materialization", len(events))
    return len(events)


def build_index(config: Config) -> int:
    """Load the serving release's item vectors into a new collection of Milvus
    (``config.milvus.uri``) and switch its aliases to it."""
    return Catalog(config).rebuild()


def build_evaluation_index(config: Config) -> Config:
    """The trained item vectors of the work directory (an evaluation run, not a release) in a
    collection of their own, behind ``<collection>__eval``; returns the configuration that
    searches it. Serving and its releases are untouched."""
    artifacts = require_artifacts(config)
    evaluation = replace(config, milvus=replace(config.milvus, collection=f"{config.milvus.collection}__eval"))
    releases.index_items(evaluation.milvus, artifacts, progress=config.training.progress)
    return evaluation


def export(config: Config) -> int:
    """Make a release of the trained artifacts (a new version of every model in the Triton
    repository, :func:`recsys.jobs.releases.create`); returns its id."""
    return releases.create(config, Artifacts.of(config))


def require_artifacts(config: Config) -> Artifacts:
    artifacts = Artifacts.of(config)
    if not artifacts.item_vectors.is_file():
        raise FileNotFoundError(f"no trained artifacts in {config.workdir}: run `recsys build` first")
    return artifacts


@contextmanager
def local_stack(config: Config, reindex: bool = False, release: int | None = None):
    """Start the local Milvus (unless ``milvus.uri`` points at another one) and Triton, in that
    order, (re)building the item index when asked or when the collection is missing, serving
    ``release`` if given (else the serving release); stop both on exit. Yields
    ``(milvus_process_or_None, triton_process)``."""
    triton = TritonProcess(config)
    with local_milvus(config, reindex) as milvus:
        if release is not None and release != releases.serving_release(config):
            releases.rollout(config, release)  # before Triton starts: it loads that version
        with running(triton):
            yield milvus, triton


@contextmanager
def local_milvus(config: Config, reindex: bool = False):
    """Start the local Milvus (unless ``milvus.uri`` points at another one) and (re)build the
    serving release's item index when asked or when it is missing (nothing before the first
    release); stop it on exit. Yields the process or ``None``."""
    milvus = None if config.milvus.uri else MilvusProcess(config)
    with running(*([milvus] if milvus else [])):
        if releases.serving_release(config) is not None and (reindex or not _collection_exists(config)):
            LOG.info("indexing item vectors into %s", config.milvus.collection)
            build_index(config)
        yield milvus


@contextmanager
def milvus_for_job(config: Config):
    """Use the Milvus at the configured address if it answers (e.g. the one ``recsys serve``
    runs); otherwise start the local one for the job (indexing the items if needed)."""
    if not config.milvus.uri:
        try:
            with quiet_pymilvus():
                client = connect(config.milvus, timeout_s=2)
        except MilvusUnavailable:
            client = None
        if client is None:
            with local_milvus(config) as process:
                yield process
            return
        client.close()
    yield None


def _collection_exists(config: Config) -> bool:
    """Whether the serving release's collection is there (its alias points at one)."""
    serving = releases.serving_release(config)
    if serving is None:
        return False
    client = connect(config.milvus)
    try:
        return aliased_collection(client, releases.release_alias(config, serving)) is not None
    finally:
        client.close()
