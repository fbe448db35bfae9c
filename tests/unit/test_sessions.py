"""The session-based evaluation's pieces: whole sessions held out, each case the first n-1
clicks (most recent first) and the n-th, HitRate/MRR of the next click."""
from __future__ import annotations

import numpy as np
import pandas as pd

from recsys.jobs.evaluation import next_click_metrics, session_cases
from training.features import split


def test_the_sessions_split_holds_out_whole_users():
    log = pd.DataFrame({"user_id": np.repeat(np.arange(20), 3), "item_id": np.arange(60),
                        "timestamp": np.tile([1, 2, 3], 20)})
    log = pd.concat([log, pd.DataFrame({"user_id": [99], "item_id": [7], "timestamp": [1]})])
    train, test = split(log, "sessions", 0.25, seed=1)
    assert len(set(train["user_id"]) & set(test["user_id"])) == 0
    assert test["user_id"].nunique() == 5 and 99 in set(train["user_id"])  # one-click users stay
    assert test.groupby("user_id").size().eq(3).all()


def test_cases_and_next_click_metrics():
    test = pd.DataFrame({"user_id": [1, 1, 1, 2, 2, 3], "item_id": [10, 11, 10, 20, 21, 30],
                         "timestamp": [1, 2, 3, 5, 6, 1]})
    users, recent, targets = session_cases(test)
    assert users.tolist() == [1, 2] and recent == [[11, 10], [20]] and targets.tolist() == [10, 21]
    found = next_click_metrics(np.array([[5, 10, 6], [7, 8, 9]]), targets, 3)
    assert found == {"hit_rate@3": 0.5, "mrr@3": 0.25}
