"""Releases: every build is a release with an id ``n``, served without restarts and never mixed.

A release is, all under its id:

- version ``n`` of every model in the Triton repository (``recommender/<n>/``,
  ``similar_items/<n>/``), whose ``serving.json`` names ``release = n`` and the release's own
  Milvus alias ``<collection>__r<n>`` - a model searches its release's item vectors, never
  another's;
- that alias, pointing at a collection of the release's item vectors with the catalogue
  journal's edits applied (built when the release is first served, caught up on the journal
  whenever it is served again: :mod:`recsys.jobs.catalog_journal`);
- ``<workdir>/releases/<n>/``: what the graph, the collection, the batch job and catalogue
  operations read later (models, workflows, item vectors, feature tables and list; the work
  directory's layout) and ``release.json``.

Rolling out ``n`` (:func:`rollout`): its collection is built and loaded first, then each
model's ``config.pbtxt`` names version ``n`` (``version_policy: specific``) and Triton is told to
load it (explicit model control over gRPC, through the admin key): Triton loads and warms the new version
while the old one serves, switches, and unloads the old one once its in-flight requests are
done. Then the public alias (``milvus.collection``, what catalogue operations and outside
readers use) points at the release's collection. Rolling back is rolling out the previous
release. Every answer carries its release (output ``release``).
"""
from __future__ import annotations

import json
import shutil
import time
import urllib.request
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from core.artifacts import Artifacts
from core.config import Config, MilvusConfig
from core.contract import model_config, model_names
from recsys.jobs import catalog_journal
from recsys.jobs.catalog_journal import Journal
from recsys.runtime.servers import TRITON_GRPC_ADMIN_HEADER, running_admin_key
from vector_index.client import connect
from vector_index.collections import aliased_collection, build_item_index, switch_alias

STATE_FILE = "state.json"
RELEASE_FILE = "release.json"
KEEP = 3


class ReleaseError(RuntimeError):
    """A release operation cannot be done as asked."""


@dataclass
class Release:
    """One release, as ``recsys release list`` shows it."""

    id: int
    created: str
    alias: str
    state: str = "built"  # built | serving | previous
    interactions: int = 0  # what its models were trained on
    # NDCG/Recall/HitRate@10 of its cascade's order on its build's validation split (the
    # selection run of training.tuning); empty when training.validate was off.
    validation: dict = field(default_factory=dict)


def releases_dir(config: Config) -> Path:
    return config.workdir / "releases"


def release_alias(config: Config, release: int) -> str:
    """The Milvus alias release ``release`` searches."""
    return f"{config.milvus.collection}__r{release}"


def release_artifacts(config: Config, release: int) -> Artifacts:
    """What release ``release`` keeps of its build (the workdir's layout, the item side only)."""
    return Artifacts(releases_dir(config) / str(release))


def state(config: Config) -> dict:
    """``{"serving": n | None, "previous": n | None}``."""
    path = releases_dir(config) / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {"serving": None, "previous": None}


def list_releases(config: Config) -> list[Release]:
    """Every release kept, oldest first, with its state."""
    now = state(config)
    found = []
    for path in sorted(releases_dir(config).glob(f"*/{RELEASE_FILE}"), key=lambda p: int(p.parent.name)):
        release = Release(**json.loads(path.read_text()))
        release.state = ("serving" if release.id == now["serving"] else
                         "previous" if release.id == now["previous"] else "built")
        found.append(release)
    return found


def serving_release(config: Config) -> int | None:
    return state(config)["serving"]


def get(config: Config, release: int) -> Release:
    """Release ``release`` as listed, or :class:`ReleaseError`."""
    for found in list_releases(config):
        if found.id == release:
            return found
    raise ReleaseError(f"no release {release} (releases: {[r.id for r in list_releases(config)] or 'none'})")


def live_triton(config: Config) -> str | None:
    """The local Triton's gRPC ``host:port`` if it is live (a running ``recsys serve``), else ``None``."""
    try:
        with urllib.request.urlopen(f"http://{config.triton.host}:{config.triton.http_port}/v2/health/live",
                                    timeout=2):
            return f"{config.triton.host}:{config.triton.grpc_port}"
    except OSError:
        return None


def create(config: Config, artifacts: Artifacts) -> int:
    """Make a release of the trained ``artifacts``: the next id, the item side kept under
    ``releases/<n>/``, version ``n`` of every model exported. The first release serves at once
    (there is nothing to roll out from); later ones wait for :func:`rollout`."""
    from ensemble.export import export_version  # TensorFlow and Merlin: only where a release is made

    existing = [r.id for r in list_releases(config)]
    versions = [int(p.name) for name in model_names(config) if (config.model_repository / name).is_dir()
                for p in (config.model_repository / name).iterdir() if p.name.isdigit()]
    release = max(existing + versions + [0]) + 1
    kept = release_artifacts(config, release)
    for source, target in _kept_files(artifacts, kept):
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        elif source.is_file():
            shutil.copyfile(source, target)
    serving = replace(config.serving, release=release)
    milvus = replace(config.milvus, collection=release_alias(config, release))
    release_config = replace(config, serving=serving, milvus=milvus)
    deleted = Journal(config).deleted()
    if deleted:  # the fallback never offers an item deleted from the catalogue
        popular = pd.read_parquet(kept.popular_items)
        popular[~popular["item_id"].isin(deleted)].to_parquet(kept.popular_items, index=False)
    for name, contract in model_names(config).items():
        export_version(release_config, kept, name, contract, release)
    report = json.loads(kept.report.read_text()) if kept.report.is_file() else {}
    record = Release(release, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), release_alias(config, release),
                     interactions=int(report.get("train_interactions", 0)),
                     validation=report.get("validation") or {})
    payload = {k: v for k, v in asdict(record).items() if k != "state"}
    (kept.root / RELEASE_FILE).write_text(json.dumps(payload, indent=2))
    if serving_release(config) is None:
        _write_model_configs(config, release)
        _save_state(config, release, None)
    return release


def _kept_files(artifacts: Artifacts, kept: Artifacts):
    """What a release keeps of its build: all that its graph, its collection, the batch job and
    the catalogue read (not the interaction files)."""
    for name in ("users", "items", "features", "popular_items", "user_id_map", "item_id_map", "user_workflow",
                 "item_workflow", "query_tower", "item_tower", "ranking_model", "item_vectors", "ordering",
                 "report"):
        yield getattr(artifacts, name), getattr(kept, name)


def serving_artifacts(config: Config) -> Artifacts:
    """The artifacts of the serving release (the work directory's before any release)."""
    serving = serving_release(config)
    return release_artifacts(config, serving) if serving else Artifacts.of(config)


def ensure_collection(config: Config, release: int, rebuild: bool = False) -> int:
    """Build release ``release``'s collection (its item vectors with the catalogue journal
    applied, behind its alias) if it has none, or anew when ``rebuild``; the public alias
    follows when the release is serving. Then catch it up on the journal. Returns the row
    count (0 when nothing was built)."""
    alias = release_alias(config, release)
    client = connect(config.milvus, max(config.milvus.timeout_s, 30.0))
    try:
        exists = aliased_collection(client, alias) is not None
    finally:
        client.close()
    count = 0
    if rebuild or not exists:
        kept = release_artifacts(config, release)
        if not kept.item_vectors.is_file():
            raise ReleaseError(f"release {release} keeps no item vectors in {kept.root}")
        edits = Journal(config).edits(kept)
        also = (config.milvus.collection,) if release == serving_release(config) else ()
        count = index_items(replace(config.milvus, collection=alias), kept, edits,
                            progress=config.training.progress, also=also)
        catalog_journal.mark_applied(kept.root, edits.last)
    journal = Journal(config)
    with journal.locked():
        catch_up(config, release, journal)
    return count


def index_items(milvus: MilvusConfig, artifacts: Artifacts, edits: catalog_journal.Edits | None = None,
                progress: bool = False, also: tuple[str, ...] = ()) -> int:
    """A new collection behind ``milvus.collection`` (and ``also``) of ``artifacts``' trained
    item vectors, with catalogue ``edits`` applied; returns its row count."""
    vectors = pd.read_parquet(artifacts.item_vectors)
    ids = vectors["item_id"].to_numpy()
    matrix = np.stack(vectors["embedding"].to_numpy()).astype(np.float32)
    items = pd.read_parquet(artifacts.items)
    if edits:
        ids, matrix, items = catalog_journal.with_edits(ids, matrix, items, artifacts, edits)
    return build_item_index(milvus, ids, matrix, items, progress=progress, also=also)


def catch_up(config: Config, release: int, journal: Journal) -> None:
    """Write the journal's edits that release ``release``'s collection has not seen into it
    (the caller holds the journal's lock)."""
    kept = release_artifacts(config, release)
    edits = journal.edits(kept, after=catalog_journal.applied(kept.root))
    if not edits:
        return
    client = connect(config.milvus, max(config.milvus.timeout_s, 30.0))
    try:
        catalog_journal.apply_to_collection(client, release_alias(config, release), kept, edits,
                                            milvus_timeout_s=config.milvus.timeout_s)
    finally:
        client.close()
    catalog_journal.mark_applied(kept.root, edits.last)


def rollout(config: Config, release: int | None = None, triton_grpc: str | None = None) -> int:
    """Serve ``release`` (default: the newest): its collection first, then every model's new
    version on the running Triton whose gRPC endpoint is ``triton_grpc`` (``host:port``;
    ``None``: no Triton runs, the next start serves it), then the public alias. Returns the
    release."""
    kept = {r.id for r in list_releases(config)}
    release = max(kept) if release is None and kept else release
    if release not in kept:
        raise ReleaseError(f"no release {release} (releases: {sorted(kept) or 'none'})")
    before = serving_release(config)
    ensure_collection(config, release)
    _write_model_configs(config, release)
    try:
        if triton_grpc:
            for name in reversed(_models_of(config, release)):  # events, similar_items, then recommender
                _load(config, triton_grpc, name)
    except BaseException:
        if before is not None:  # what runs now, and what a restart would load
            _write_model_configs(config, before)
            if triton_grpc:
                for name in _models_of(config, before):
                    _load(config, triton_grpc, name)
        raise
    journal = Journal(config)
    with journal.locked():  # no catalogue edit lands in a collection that stops serving unrecorded
        catch_up(config, release, journal)
        client = connect(config.milvus, max(config.milvus.timeout_s, 30.0))
        try:
            switch_alias(client, config.milvus.collection,
                         aliased_collection(client, release_alias(config, release)))
        finally:
            client.close()
        _save_state(config, release, before if before != release else state(config)["previous"])
    return release


def rollback(config: Config, triton_grpc: str | None = None) -> int:
    """Serve the release served before the current one again (:func:`rollout`)."""
    previous = state(config)["previous"]
    if previous is None:
        raise ReleaseError("no previous release to roll back to")
    return rollout(config, previous, triton_grpc)


def prune(config: Config, keep: int = KEEP) -> list[int]:
    """Delete releases beyond the newest ``keep`` (never the serving or the previous one): their
    model versions, collections and kept files. Returns the ids deleted."""
    now = state(config)
    releases = list_releases(config)
    protected = {now["serving"], now["previous"]} | {r.id for r in releases[-keep:]}
    doomed = [r.id for r in releases if r.id not in protected]
    if not doomed:
        return []
    client = connect(config.milvus, max(config.milvus.timeout_s, 30.0))
    try:
        for release in doomed:
            alias = release_alias(config, release)
            physical = aliased_collection(client, alias)
            if physical is not None:
                client.drop_alias(alias)
                client.drop_collection(physical)
    finally:
        client.close()
    for release in doomed:
        for name in model_names(config):
            shutil.rmtree(config.model_repository / name / str(release), ignore_errors=True)
        shutil.rmtree(release_artifacts(config, release).root, ignore_errors=True)
    return doomed


def _models_of(config: Config, release: int) -> list[str]:
    """The models release ``release`` has a version of (one made before a model existed, e.g.
    ``events``, leaves that model on the version it serves)."""
    return [name for name in model_names(config) if (config.model_repository / name / str(release)).is_dir()]


def _write_model_configs(config: Config, release: int) -> None:
    """The ``config.pbtxt`` of every model of release ``release`` naming that version, each
    replaced atomically (a Triton polling the repository never reads half a file)."""
    for name, contract in model_names(config).items():
        if name not in _models_of(config, release):
            continue
        path = config.model_repository / name / "config.pbtxt"
        scratch = path.with_suffix(".tmp")
        scratch.write_text(model_config(contract, name, config.serving.top_k, version=release))
        scratch.replace(path)


def _load(config: Config, triton_grpc: str, name: str, timeout_s: float = 600.0) -> None:
    """Tell Triton to (re)load ``name`` from the repository: it loads the version the config
    names while the old one serves, and swaps when the new one is ready. Over gRPC, where
    Triton runs a load on a thread of its own: its HTTP frontend runs it on the worker thread
    of the connection, stalling every inference connection that shares that thread for the
    whole load (seen as 30 s client timeouts during rollouts)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(triton_grpc)
    try:
        client.load_model(name, headers={TRITON_GRPC_ADMIN_HEADER: running_admin_key(config)},
                          client_timeout=timeout_s)
    except InferenceServerException as exc:
        raise ReleaseError(f"Triton refused to load {name}: {str(exc)[:500]}") from None
    finally:
        client.close()


def _save_state(config: Config, serving: int, previous: int | None) -> None:
    path = releases_dir(config) / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_suffix(".tmp")
    scratch.write_text(json.dumps({"serving": serving, "previous": previous}))
    scratch.replace(path)
