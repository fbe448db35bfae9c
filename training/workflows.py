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


def _user_graph():
    user_id = ["user_id"] >> nvt.ops.Categorify() >> nvt.ops.TagAsUserID()
    categorical = USER_CATEGORICAL >> nvt.ops.Categorify() >> nvt.ops.TagAsUserFeatures()
    continuous = (USER_CONTINUOUS >> nvt.ops.LogOp() >> nvt.ops.Normalize()
                  >> nvt.ops.TagAsUserFeatures())
    return user_id + categorical + continuous


def _item_graph():
    item_id = ["item_id"] >> nvt.ops.Categorify() >> nvt.ops.TagAsItemID()
    categorical = ITEM_CATEGORICAL >> nvt.ops.Categorify() >> nvt.ops.TagAsItemFeatures()
    continuous = (ITEM_CONTINUOUS >> nvt.ops.LogOp() >> nvt.ops.Normalize()
                  >> nvt.ops.TagAsItemFeatures())
    return item_id + categorical + continuous


def fit_workflows(users: pd.DataFrame, items: pd.DataFrame, out_dir: Path) -> dict[str, nvt.Workflow]:
    """Fit the user and item workflows on the feature tables and save them under ``out_dir``."""
    workflows = {}
    for name, graph, table in (("user", _user_graph(), users), ("item", _item_graph(), items)):
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
