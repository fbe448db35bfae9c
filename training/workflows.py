"""NVTabular workflows, fitted once on training tables and saved; serving only loads them.

Two workflows, one per side of the cascade, so that each serving stage runs the one it needs:
``user`` encodes user id + user features, ``item`` encodes item id + item features.
Raw ids go in, contiguous encoded ids come out; the mapping is written out explicitly by
:func:`write_id_mapping` (serving never exposes encoded ids: Milvus keys are raw ids).
"""
from __future__ import annotations

from pathlib import Path

import nvtabular as nvt
import pandas as pd
from merlin.io import Dataset
from merlin.schema import Tags

from training.features import ITEM_CATEGORICAL, ITEM_CONTINUOUS, USER_CATEGORICAL, USER_CONTINUOUS


def _side_graph(id_column, categorical, continuous, tag_id, tag_features):
    """Categorify the id and categorical features, log + normalize the continuous ones."""
    ids = [id_column] >> nvt.ops.Categorify() >> tag_id()
    cats = categorical >> nvt.ops.Categorify() >> tag_features()
    conts = continuous >> nvt.ops.LogOp() >> nvt.ops.Normalize() >> tag_features()
    return ids + cats + conts


def fit_workflows(users: pd.DataFrame, items: pd.DataFrame, out_dir: Path) -> dict[str, nvt.Workflow]:
    """Fit the user and item workflows on the feature tables and save them under ``out_dir``."""
    user_graph = _side_graph("user_id", USER_CATEGORICAL, USER_CONTINUOUS,
                             nvt.ops.TagAsUserID, nvt.ops.TagAsUserFeatures)
    item_graph = _side_graph("item_id", ITEM_CATEGORICAL, ITEM_CONTINUOUS,
                             nvt.ops.TagAsItemID, nvt.ops.TagAsItemFeatures)
    workflows = {}
    for name, graph, table in (("user", user_graph, users), ("item", item_graph, items)):
        workflow = nvt.Workflow(graph)
        workflow.fit(Dataset(table, cpu=True))
        workflow.save(str(Path(out_dir) / name))
        workflows[name] = workflow
    return workflows


def load_workflow(path: Path) -> nvt.Workflow:
    """Load a saved workflow for transform only (it is never fitted again)."""
    return nvt.Workflow.load(str(path))


def transform(workflow: nvt.Workflow, frame: pd.DataFrame) -> pd.DataFrame:
    """Apply a fitted workflow to an in-memory frame (extra columns are dropped)."""
    inputs = frame[workflow.input_schema.column_names]
    return workflow.transform(Dataset(inputs, cpu=True)).to_ddf().compute()


def write_id_mapping(workflow: nvt.Workflow, frame: pd.DataFrame, column: str, path: Path) -> pd.DataFrame:
    """Write the raw -> encoded id table of ``column`` (as parquet) and return it."""
    encoded = transform(workflow, frame)[column]
    mapping = pd.DataFrame({f"raw_{column}": frame[column].to_numpy(),
                            f"encoded_{column}": encoded.to_numpy()})
    mapping.to_parquet(path, index=False)
    return mapping


def tagged_columns(workflow: nvt.Workflow, tag: Tags) -> list[str]:
    return workflow.output_schema.select_by_tag(tag).column_names
