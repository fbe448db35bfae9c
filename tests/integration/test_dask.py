"""NVTabular preprocessing and the batch job on a real Dask distributed cluster (a local one:
a scheduler and two worker processes on 127.0.0.1): the same outputs as in one process."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from core.artifacts import Artifacts
from recsys.jobs.batch import BatchOptions, run_batch
from support import stored_lists
from training import workflows as wf
from training.features import Features

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def scheduler():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, worker_dashboard_address=None) as cluster:
        yield cluster.scheduler_address


def _assert_same_frames(single: pd.DataFrame, distributed: pd.DataFrame) -> None:
    """Codes (and lists of codes) identical; normalized floats equal up to the rounding of
    statistics summed over partitions instead of in one pass."""
    assert list(single.columns) == list(distributed.columns)
    for column in single.columns:
        left, right = single[column], distributed[column]
        if left.dtype == object:
            assert [list(a) for a in left] == [list(b) for b in right], column
        elif np.issubdtype(left.dtype, np.floating):
            np.testing.assert_allclose(right.to_numpy(), left.to_numpy(), rtol=1e-5, atol=1e-6, err_msg=column)
        else:
            np.testing.assert_array_equal(right.to_numpy(), left.to_numpy(), err_msg=column)


def test_workflows_fitted_on_dask_equal_single_process(trained_config, scheduler, tmp_path):
    artifacts = Artifacts.of(trained_config)
    spec = json.loads(artifacts.features.read_text())
    user_features, item_features = Features(**spec["user"]), Features(**spec["item"])
    users, items = pd.read_parquet(artifacts.users), pd.read_parquet(artifacts.items)
    assert users["history"].map(len).gt(0).any()  # a list column is part of the check

    single = wf.fit_workflows(users, items, user_features, item_features, tmp_path / "single")
    expected = {side: wf.transform(single[side], table) for side, table in (("user", users), ("item", items))}
    with wf.dask_cluster(scheduler) as client:
        assert len(client.scheduler_info()["workers"]) == 2 and wf._partitions() == 2
        on_dask = wf.fit_workflows(users, items, user_features, item_features, tmp_path / "dask")
        got = {side: wf.transform(on_dask[side], table) for side, table in (("user", users), ("item", items))}
    assert wf._partitions() == 1  # the cluster is NVTabular's only inside the block

    for side in ("user", "item"):
        _assert_same_frames(expected[side], got[side])
    vocabularies = sorted(p.relative_to(tmp_path / "single") for p in (tmp_path / "single").rglob("*.parquet"))
    assert vocabularies and vocabularies == sorted(
        p.relative_to(tmp_path / "dask") for p in (tmp_path / "dask").rglob("*.parquet"))
    for path in vocabularies:
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "dask" / path),
                                      pd.read_parquet(tmp_path / "single" / path))


@pytest.fixture(scope="module")
def exact_search_config(serving_stack):
    """The stack's configuration on a FLAT (exact search) copy of the item collection: two
    executions of the cascade are compared to 1e-6, so retrieval must not depend on Milvus'
    internal state between them (approximate indexes, segments, first-search effects)."""
    from recsys.jobs.stack import build_index

    config = serving_stack[0]
    exact = dataclasses.replace(config, milvus=dataclasses.replace(
        config.milvus, collection="test_dask_exact", index_type="FLAT", index_params={}, search_params={}))
    build_index(exact)
    return exact


def test_batch_on_dask_workers_stores_the_same_lists(exact_search_config, scheduler, tmp_path):
    config = exact_search_config
    options = dict(k=config.serving.top_k, chunk_size=40, progress=False)
    single = run_batch(config, BatchOptions(db_url=f"sqlite:///{tmp_path / 'single.db'}", **options))
    on_dask = run_batch(dataclasses.replace(config, dask_scheduler=scheduler),
                        BatchOptions(db_url=f"sqlite:///{tmp_path / 'dask.db'}", **options))

    expected = stored_lists(f"sqlite:///{tmp_path / 'single.db'}", single.run_id)
    got = stored_lists(f"sqlite:///{tmp_path / 'dask.db'}", on_dask.run_id)
    assert on_dask.users_computed == single.users_computed == len(expected) > 40  # several chunks
    assert set(got) == set(expected)  # every user once, none added
    for user, (items, scores, _) in expected.items():
        assert got[user][0] == items, user
        np.testing.assert_allclose(got[user][1], scores, rtol=1e-6, err_msg=f"user {user}")
    # the chunks ran on the cluster's workers, each of which loaded the cascade once
    from distributed import Client

    with Client(scheduler, set_as_default=False) as client:
        loaded = client.run(lambda dask_worker: getattr(dask_worker, "_recsys_cascade", None) is not None)
    assert sum(loaded.values()) >= 1


def test_batch_refuses_workers_and_a_dask_scheduler_together(serving_stack, tmp_path):
    config = dataclasses.replace(serving_stack[0], dask_scheduler="tcp://127.0.0.1:1")
    with pytest.raises(ValueError, match="choose one"):
        run_batch(config, BatchOptions(db_url=f"sqlite:///{tmp_path / 'x.db'}", workers=2, progress=False))
