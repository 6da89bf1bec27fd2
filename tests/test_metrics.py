"""Metrics: hand-computed cases and agreement with scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score

from featcache.metrics import f1, mean_average_precision, per_label_table, scores

Y = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]], bool)
P = np.array([[1, 0, 0, 0], [0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]], bool)


def test_f1_by_hand():
    # per image F1 = 2 tp / (|pred| + |true|): 2/3, 2/3, 6/7, 0 (nothing predicted)
    assert f1(Y, P, "samples") == pytest.approx((2 / 3 + 2 / 3 + 6 / 7 + 0) / 4)
    # pooled: tp 5, predicted 7, true 7
    assert f1(Y, P, "micro") == pytest.approx(10 / 14)
    # per label: 2*2/(2+3)=0.8, 2*2/(2+2)=1, 2*1/(2+2)=0.5, 0 (no true, one predicted)
    assert f1(Y, P, "macro") == pytest.approx((0.8 + 1 + 0.5 + 0) / 4)


def test_f1_agrees_with_sklearn_on_random_cases():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y, p = rng.random((30, 5)) < 0.3, rng.random((30, 5)) < 0.3
        for avg in ("samples", "micro", "macro"):
            assert f1(y, p, avg) == pytest.approx(f1_score(y, p, average=avg, zero_division=0))


def test_unknown_average_is_an_error():
    with pytest.raises(ValueError, match="metric must be one of"):
        f1(Y, P, "weighted")


def test_map_averages_only_labels_with_positives():
    rng = np.random.default_rng(1)
    probs = rng.random(Y.shape)
    want = np.mean([average_precision_score(Y[:, j], probs[:, j]) for j in range(3)])  # label 3 has no positive
    assert mean_average_precision(Y, probs) == pytest.approx(want)
    perfect = Y.astype(float)
    assert mean_average_precision(Y, perfect) == pytest.approx(1.0)


def test_scores_thresholds_at_half_by_default():
    probs = np.where(P, 0.7, 0.2)
    s = scores(Y, probs)
    assert s["sample_f1"] == pytest.approx(f1(Y, P)) and s["micro_f1"] == pytest.approx(f1(Y, P, "micro"))
    assert set(s) == {"sample_f1", "micro_f1", "macro_f1", "map"}


def test_per_label_table():
    probs = np.where(P, 0.7, 0.2)
    rows = per_label_table(Y, probs, P, ["a", "b", "c", "d"])
    assert [r["label"] for r in rows] == ["a", "b", "c", "d"]
    assert [r["support"] for r in rows] == [3, 2, 2, 0]
    assert [r["predicted"] for r in rows] == [2, 2, 2, 1]
    assert rows[0]["precision"] == 1.0 and rows[0]["recall"] == pytest.approx(2 / 3) and rows[0]["f1"] == pytest.approx(0.8)
    assert np.isnan(rows[3]["ap"]) and rows[3]["f1"] == 0.0
