"""NVTabular workflows, fitted once on training tables and saved; serving only loads them.

Two workflows, one per side of the cascade, so that each serving stage runs the one it needs:
``user`` encodes the user id and user features, ``item`` the item id and item features.
Categorical and list columns are Categorified, continuous ones normalized (derived counts are
log-transformed first). The user's ``history`` (raw item ids) is encoded with the *item*
vocabulary, so its codes are the item-id codes the models embed. Raw ids go in, contiguous
codes come out; :func:`write_id_mapping` writes the mapping out (serving never exposes codes:
Milvus keys are raw ids).
"""
from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import nvtabular as nvt
import pandas as pd
from merlin.io import Dataset
from merlin.schema import Schema, Tags

from training.features import HISTORY, Features
from training.models import SideSpec


def _side_graph(id_column: str, features: Features, tag_id, tag_features, vocabularies: dict,
                categories_dir: str):
    def categorify(columns):
        vocabs = {c: vocabularies[c] for c in columns if c in vocabularies} or None
        return columns >> nvt.ops.Categorify(vocabs=vocabs, out_path=categories_dir)

    graph = categorify([id_column]) >> tag_id()
    if features.categorical:
        graph += categorify(features.categorical) >> tag_features()
    for column in features.lists:
        graph += categorify([column]) >> tag_features()
    if features.continuous:
        graph += features.continuous >> nvt.ops.Normalize() >> tag_features()
    if features.counts:
        graph += features.counts >> nvt.ops.LogOp() >> nvt.ops.Normalize() >> tag_features()
    return graph


@contextmanager
def dask_cluster(address: str):
    """Inside the block NVTabular runs on the Dask distributed cluster whose scheduler is at
    ``address`` (``host:port`` or ``tcp://host:port``): merlin's ``Distributed`` context makes
    the client the one NVTabular computes fit statistics on, and the client, the default
    scheduler of every Dask graph (the transforms). Tables are split into one partition per
    worker. An empty address leaves everything in this process. Categorify writes its
    vocabularies from the workers: on a multi-machine cluster the working directory must be on
    a file system every worker mounts at the same path."""
    if not address:
        yield None
        return
    from distributed import Client
    from merlin.core.utils import Distributed

    with Client(address, set_as_default=True) as client, Distributed(client=client):
        yield client


def _partitions() -> int:
    """One partition per worker of the active Dask cluster (see :func:`dask_cluster`), else 1."""
    from merlin.core.utils import global_dask_client

    client = global_dask_client()
    return max(1, len(client.scheduler_info()["workers"])) if client else 1


def _dataset(frame: pd.DataFrame) -> Dataset:
    """``frame`` as a Dataset of one partition per Dask worker, each with its own 0-based index:
    NVTabular's Categorify of a list column returns a fresh index, so on a partition indexed
    from n > 0 its result would be realigned to NaN."""
    parts = min(_partitions(), max(1, len(frame)))
    if parts == 1:
        return Dataset(frame, cpu=True)
    import dask.dataframe as dd

    bounds = np.linspace(0, len(frame), parts + 1).astype(int)
    chunks = [frame.iloc[start:stop].reset_index(drop=True) for start, stop in zip(bounds[:-1], bounds[1:])]
    return Dataset(dd.concat([dd.from_pandas(chunk, npartitions=1, sort=False) for chunk in chunks]), cpu=True)


def fit_workflows(users: pd.DataFrame, items: pd.DataFrame, user_features: Features,
                  item_features: Features, out_dir: Path) -> dict[str, nvt.Workflow]:
    """Fit the user and item workflows on the feature tables and save them under ``out_dir``."""
    catalogue = pd.Series(items["item_id"].to_numpy(), name="item_id")
    with tempfile.TemporaryDirectory() as categories_dir:
        user_graph = _side_graph("user_id", user_features, nvt.ops.TagAsUserID,
                                 nvt.ops.TagAsUserFeatures,
                                 {HISTORY: catalogue.rename(HISTORY)}, categories_dir)
        item_graph = _side_graph("item_id", item_features, nvt.ops.TagAsItemID,
                                 nvt.ops.TagAsItemFeatures, {"item_id": catalogue}, categories_dir)
        workflows = {}
        for name, graph, table in (("user", user_graph, users[["user_id"] + user_features.columns]),
                                   ("item", item_graph, items[["item_id"] + item_features.columns])):
            workflow = nvt.Workflow(graph)
            workflow.fit(_dataset(table))
            workflow.save(str(Path(out_dir) / name))
            workflows[name] = workflow
    return workflows


def load_workflow(path: Path) -> nvt.Workflow:
    """Load a saved workflow for transform only (it is never fitted again)."""
    return nvt.Workflow.load(str(path))


def transform(workflow: nvt.Workflow, frame: pd.DataFrame) -> pd.DataFrame:
    """Apply a fitted workflow to an in-memory frame (extra columns are dropped)."""
    inputs = frame[workflow.input_schema.column_names]
    return workflow.transform(_dataset(inputs)).to_ddf().compute().reset_index(drop=True)


def write_id_mapping(workflow: nvt.Workflow, frame: pd.DataFrame, column: str, path: Path) -> pd.DataFrame:
    """Write the raw -> encoded id table of ``column`` (as parquet) and return it."""
    encoded = transform(workflow, frame)[column]
    mapping = pd.DataFrame({f"raw_{column}": frame[column].to_numpy(),
                            f"encoded_{column}": encoded.to_numpy()})
    mapping.to_parquet(path, index=False)
    return mapping


def side_spec(schema: Schema, id_column: str, shared_tables: dict[str, str] | None = None) -> SideSpec:
    """What the models need to know of a workflow's output: columns by kind, vocabulary sizes."""
    categorical, lists, continuous = {}, {}, []
    for column in schema:
        if Tags.CATEGORICAL in column.tags:
            size = int(column.int_domain.max) + 1
            (lists if column.is_list else categorical)[column.name] = size
        else:
            continuous.append(column.name)
    categorical = {id_column: categorical.pop(id_column), **categorical}
    return SideSpec(id_column, categorical, continuous, lists, dict(shared_tables or {}))
