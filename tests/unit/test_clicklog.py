import numpy as np
import pandas as pd
import pytest

from training import clicklog


def test_generated_log_has_yoochoose_shape_and_structure():
    clicks = clicklog.generate_clicks(num_sessions=2000, num_items=500, seed=3)
    assert list(clicks.columns) == clicklog.CLICK_COLUMNS
    assert clicks["user_id"].nunique() == 2000
    assert clicks.groupby("user_id").size().min() >= 2
    # time order within each session
    assert clicks.groupby("user_id")["timestamp"].apply(lambda t: t.is_monotonic_increasing).all()
    # popularity skew: the top 5% of items take a large share of clicks
    counts = clicks["item_id"].value_counts()
    assert counts.head(max(1, len(counts) // 20)).sum() / counts.sum() > 0.3
    # category interests: a session's clicks concentrate on few categories
    top_share = clicks.groupby("user_id")["category"].agg(lambda c: c.value_counts(normalize=True).iloc[0])
    assert top_share.mean() > 0.6
    # raw ids are sparse catalogue ids, not 0..n
    assert clicks["item_id"].min() > 214_000_000


def test_generation_is_deterministic_for_a_seed():
    a = clicklog.generate_clicks(300, 100, seed=5)
    b = clicklog.generate_clicks(300, 100, seed=5)
    pd.testing.assert_frame_equal(a, b)


def test_yoochoose_round_trip(tmp_path):
    clicks = clicklog.generate_clicks(200, 80, seed=1)
    path = tmp_path / "yoochoose-clicks.dat"
    clicklog.write_yoochoose(clicks, path)
    first = path.read_text().splitlines()[0].split(",")
    assert len(first) == 4 and first[1].endswith("Z") and "T" in first[1]
    loaded = clicklog.read_yoochoose(path)
    expected = clicks.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
    np.testing.assert_array_equal(loaded["item_id"], expected["item_id"])
    np.testing.assert_array_equal(loaded["timestamp"].values, expected["timestamp"].values)


def test_yoochoose_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        clicklog.read_yoochoose(tmp_path / "missing.dat")
    bad = tmp_path / "bad.dat"
    bad.write_text("1,not-a-time,214536502,0\n")
    with pytest.raises(ValueError, match="timestamp"):
        clicklog.read_yoochoose(bad)
