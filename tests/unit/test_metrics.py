"""Every metric against values computed by hand."""
import numpy as np
import pandas as pd
import pytest

from training.metrics import format_table, ranking_metrics

LOG2 = np.log2


def _truth(pairs):
    return pd.DataFrame(pairs, columns=["user_id", "item_id"])


def test_metrics_by_hand():
    # user 1: relevant {1, 2, 3}, recommended [1, 9, 2, -1] -> hits at ranks 1 and 3
    # user 2: relevant {5},       recommended [6, 7, 8, 9] -> no hit
    recommended = np.array([[1, 9, 2, -1], [6, 7, 8, 9]])
    truth = _truth([(1, 1), (1, 2), (1, 3), (1, 3), (2, 5)])  # duplicate row counts once
    out = ranking_metrics(recommended, np.array([1, 2]), truth, ks=(2, 4), catalogue_size=10)
    assert out["users"] == 2
    # precision@2: user1 1/2, user2 0 -> 0.25; precision@4: user1 2/4 -> 0.25
    assert out["precision@2"] == pytest.approx(0.25)
    assert out["precision@4"] == pytest.approx(0.25)
    # recall@2: 1/3 and 0 -> 1/6; recall@4: 2/3 and 0 -> 1/3
    assert out["recall@2"] == pytest.approx(1 / 6)
    assert out["recall@4"] == pytest.approx(1 / 3)
    # ndcg@2 user1: DCG 1/log2(2) = 1, IDCG 1 + 1/log2(3) -> 1 / 1.6309
    idcg2 = 1 + 1 / LOG2(3)
    assert out["ndcg@2"] == pytest.approx((1 / idcg2) / 2)
    # ndcg@4 user1: DCG 1 + 1/log2(4) = 1.5, IDCG 1 + 1/log2(3) + 1/log2(4)
    idcg4 = 1 + 1 / LOG2(3) + 0.5
    assert out["ndcg@4"] == pytest.approx((1.5 / idcg4) / 2)
    # map@2 user1: P@1 = 1 -> 1 / min(3, 2); map@4: (1 + 2/3) / min(3, 4)
    assert out["map@2"] == pytest.approx(0.5 / 2)
    assert out["map@4"] == pytest.approx(((1 + 2 / 3) / 3) / 2)
    assert out["hit_rate@2"] == pytest.approx(0.5) and out["hit_rate@4"] == pytest.approx(0.5)
    # coverage@2: {1, 9, 6, 7} of 10; coverage@4: {1, 9, 2, 6, 7, 8} of 10 (padding not counted)
    assert out["coverage@2"] == pytest.approx(0.4) and out["coverage@4"] == pytest.approx(0.6)


def test_users_without_truth_are_ignored_and_missing_truth_users_count_as_zero():
    recommended = np.array([[1, 2], [3, 4]])
    truth = _truth([(1, 1), (7, 3)])  # user 2 has no truth; user 7 got no recommendations
    out = ranking_metrics(recommended, np.array([1, 2]), truth, ks=(2,))
    assert out["users"] == 2
    assert out["hit_rate@2"] == pytest.approx(0.5)
    assert out["ndcg@2"] == pytest.approx(0.5)


def test_more_relevant_items_than_k_caps_the_ideal():
    out = ranking_metrics(np.array([[1, 2]]), np.array([1]), _truth([(1, i) for i in range(1, 6)]), ks=(2,))
    assert out["ndcg@2"] == pytest.approx(1.0) and out["map@2"] == pytest.approx(1.0)
    assert out["recall@2"] == pytest.approx(2 / 5) and out["precision@2"] == pytest.approx(1.0)


def test_too_few_columns_is_refused():
    with pytest.raises(ValueError, match="fewer than k=10"):
        ranking_metrics(np.zeros((1, 5), dtype=np.int64), np.array([1]), _truth([(1, 1)]), ks=(10,))


def test_table_lists_each_system_and_metric():
    table = format_table({"a": {"ndcg@10": 0.5, "precision@10": 0.25}, "b": {"ndcg@10": 0.1, "precision@10": 0.0}},
                         ks=(10,))
    lines = table.splitlines()
    assert lines[0] == "| system | Precision@10 | NDCG@10 |"
    assert lines[2] == "| a | 0.2500 | 0.5000 |" and lines[3].startswith("| b |")
