"""Thresholds: never worse than 0.5 + fallback on the rows tuned on, the fallback, the vectorised scores, auto's choice."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from featcache.metrics import f1
from featcache.stage2.thresholds import (CANDIDATES, GRID, Thresholds, _candidate_scores, _folds, _global_scores, apply_thresholds,
                                  fit_thresholds, out_of_fold_score)

METRICS = ["samples", "micro", "macro"]


@st.composite
def labelled_scores(draw):
    n, n_labels = draw(st.integers(2, 40)), draw(st.integers(1, 6))
    y = draw(arrays(bool, (n, n_labels)))
    noise = draw(arrays(np.float64, (n, n_labels), elements=st.floats(0, 1)))
    mix = draw(st.floats(0, 1))
    return y, np.clip(mix * y + (1 - mix) * noise, 0, 1)  # from pure noise to perfectly separable


@settings(max_examples=60, deadline=None)
@given(labelled_scores(), st.sampled_from(METRICS), st.sampled_from(["per-label", "global", "shrunk", "auto"]))
def test_tuned_never_below_half_with_fallback_on_the_tuning_rows(data, metric, mode):
    y, probs = data
    th = fit_thresholds(y, probs, metric=metric, mode=mode)
    start = f1(y, apply_thresholds(probs, 0.5, fallback=True), metric)
    tuned = f1(y, th.apply(probs), metric)  # recomputed by sklearn, not trusted from the search
    assert tuned >= start - 1e-12
    assert th.score == pytest.approx(tuned) and th.start_score == pytest.approx(start)


@settings(max_examples=40, deadline=None)
@given(labelled_scores(), st.sampled_from(METRICS), st.booleans(), st.data())
def test_vectorised_candidate_scores_equal_sklearn(data, metric, fallback, draw):
    y, probs = data
    t = np.array(draw.draw(st.lists(st.sampled_from([0.1, 0.3, 0.5, 0.7, 0.9]), min_size=y.shape[1], max_size=y.shape[1])))
    j = draw.draw(st.integers(0, y.shape[1] - 1))
    cands = np.array([0.05, 0.25, 0.5, 0.75, 0.95])
    got = _candidate_scores(y, probs, t, j, cands, metric, fallback)
    for c, g in zip(cands, got):
        tt = t.copy()
        tt[j] = c
        assert g == pytest.approx(f1(y, apply_thresholds(probs, tt, fallback), metric), abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(labelled_scores(), st.sampled_from(METRICS), st.booleans())
def test_vectorised_global_scores_equal_sklearn(data, metric, fallback):
    y, probs = data
    cands = np.array([0.05, 0.25, 0.5, 0.75, 0.95])
    got = _global_scores(y, probs, cands, metric, fallback)
    assert got == pytest.approx([f1(y, apply_thresholds(probs, c, fallback), metric) for c in cands], abs=1e-12)


def test_tuning_finds_a_better_threshold_when_half_is_wrong():
    # Scores squeezed below 0.5: at 0.5 nothing passes, the fallback keeps one label per image.
    rng = np.random.default_rng(0)
    y = rng.random((300, 5)) < 0.3
    y[np.arange(300), rng.integers(0, 5, 300)] = True
    probs = 0.4 * np.clip(0.6 * y + 0.5 * rng.random(y.shape), 0, 1)
    for metric in METRICS:
        th = fit_thresholds(y, probs, metric=metric, mode="per-label")
        assert th.score > th.start_score + 0.05, metric
        assert all(t < 0.5 for t in th.values)
    glob = fit_thresholds(y, probs, mode="global")
    assert len(set(glob.values)) == 1 and glob.score > glob.start_score + 0.05


def test_sample_f1_thresholds_beat_each_labels_own_best_threshold_on_sample_f1():
    # Coordinate ascent on the target metric is at least as good as per-label own-F1 thresholds
    # on that metric (the real slice's finding), here on a case with rare, noisy labels.
    rng = np.random.default_rng(3)
    prior = np.array([0.7, 0.2, 0.05, 0.03, 0.02])
    y = rng.random((800, 5)) < prior
    probs = np.clip(0.35 * y + rng.random(y.shape) * 0.65 * np.sqrt(prior), 0, 1)
    own = np.array([GRID[np.argmax([f1(y[:, [j]], probs[:, [j]] >= t, "micro") for t in GRID])] for j in range(5)])
    tuned = fit_thresholds(y, probs, metric="samples", mode="per-label")
    assert tuned.score >= f1(y, apply_thresholds(probs, own, True), "samples")


def test_fallback_gives_every_image_its_top_label_and_only_then():
    probs = np.array([[0.1, 0.3, 0.2], [0.9, 0.6, 0.1], [0.0, 0.0, 0.0]])
    preds = apply_thresholds(probs, 0.5, fallback=True)
    assert preds.tolist() == [[False, True, False], [True, True, False], [True, False, False]]
    assert apply_thresholds(probs, 0.5, fallback=False).sum(1).tolist() == [0, 2, 0]
    assert apply_thresholds(np.zeros((0, 3)), 0.5).shape == (0, 3)


def test_flat_mode_and_bad_arguments():
    y, probs = np.eye(3, dtype=bool), np.full((3, 3), 0.4)
    assert fit_thresholds(y, probs, mode="flat").values == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="metric"):
        fit_thresholds(y, probs, metric="weighted")
    with pytest.raises(ValueError, match="threshold mode"):
        fit_thresholds(y, probs, mode="best")


def test_save_and_load_round_trip(tmp_path):
    th = Thresholds((0.2, 0.35, 0.5), True, "micro", "per-label", 0.7, 0.75)
    th.save(tmp_path / "t.json")
    assert Thresholds.load(tmp_path / "t.json") == th
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json"):
        Thresholds.load(tmp_path / "bad.json")


def test_out_of_fold_score_exposes_thresholds_tuned_on_noise():
    rng = np.random.default_rng(5)
    y = rng.random((400, 5)) < 0.3
    noise = rng.random(y.shape)  # scores that know nothing: beyond "predict every label", gains are overfitting
    in_sample = fit_thresholds(y, noise, mode="per-label")
    assert in_sample.score > in_sample.start_score
    assert out_of_fold_score(y, noise, mode="per-label") < in_sample.score - 0.005
    y[np.arange(400), rng.integers(0, 5, 400)] = True  # every image has a label, as in the data
    separable = np.where(y, 0.6, 0.1)  # informative scores: out of fold loses nothing
    assert out_of_fold_score(y, separable, metric="micro", mode="per-label") == pytest.approx(1.0)


def planted(cuts, n=1200, seed=0):
    """Noise-free scores: label j's positives score above cuts[j], its negatives below; labels of
    prior 0.35, each image with one label at least."""
    rng = np.random.default_rng(seed)
    cuts = np.asarray(cuts)
    y = rng.random((n, len(cuts))) < 0.35
    y[np.arange(n), rng.integers(0, len(cuts), n)] = True
    u = rng.random(y.shape)
    return y, np.where(y, cuts + u * (1 - cuts), u * cuts * 0.999)


def test_auto_picks_flat_when_scores_are_calibrated_at_half():
    y, probs = planted([0.5] * 5)
    th = fit_thresholds(y, probs, mode="auto")  # every candidate scores 1.0: the tie goes to flat
    assert th.chosen == "flat" and th.values == (0.5,) * 5, th.candidates_out_of_fold
    assert set(th.candidates_out_of_fold) == set(CANDIDATES)
    assert th.candidates_out_of_fold["flat"] >= max(th.candidates_out_of_fold.values())


def test_auto_picks_per_label_when_one_well_supported_label_is_far_from_half():
    y, probs = planted([0.5, 0.5, 0.85, 0.5, 0.5])  # label 2 belongs at 0.85 (~450 positives), the others at 0.5
    th = fit_thresholds(y, probs, mode="auto")
    assert th.chosen == "per-label", th.candidates_out_of_fold
    assert th.values[2] > 0.7 and all(abs(v - 0.5) < 0.15 for i, v in enumerate(th.values) if i != 2)
    oof = th.candidates_out_of_fold
    assert oof["per-label"] > max(oof["flat"], oof["global"]) + 0.005


def test_auto_records_its_choice_in_the_file(tmp_path):
    y, probs = planted([0.5, 0.5, 0.85, 0.5, 0.5])
    th = fit_thresholds(y, probs, mode="auto")
    th.save(tmp_path / "t.json")
    back = Thresholds.load(tmp_path / "t.json")
    assert back == th and back.mode == "auto" and back.chosen == "per-label"
    assert back.candidates_out_of_fold == pytest.approx(th.candidates_out_of_fold)
    assert fit_thresholds(y, probs, mode="global").chosen == "global"


@settings(max_examples=25, deadline=None)
@given(labelled_scores(), st.sampled_from(METRICS))
def test_auto_never_below_the_worst_candidate_out_of_fold(data, metric):
    # Fold by fold: auto chooses on the fit rows only, so on the held-out rows it scores as one of
    # the candidates fitted on the same rows, never below the worst of them.
    y, probs = data
    for fit, held in _folds(len(y), 2, 2, 0):
        auto = fit_thresholds(y[fit], probs[fit], metric, "auto")
        score = f1(y[held], auto.apply(probs[held]), metric)
        others = {m: f1(y[held], fit_thresholds(y[fit], probs[fit], metric, m).apply(probs[held]), metric)
                  for m in CANDIDATES}
        assert score == pytest.approx(others[auto.chosen], abs=1e-12)
        assert score >= min(others.values()) - 1e-12


def test_auto_out_of_fold_not_below_the_worst_candidate_on_noisy_rare_labels():
    rng = np.random.default_rng(3)
    prior = np.array([0.7, 0.2, 0.05, 0.03, 0.02])
    y = rng.random((600, 5)) < prior
    probs = np.clip(0.35 * y + rng.random(y.shape) * 0.65 * np.sqrt(prior), 0, 1)
    auto = out_of_fold_score(y, probs, mode="auto")
    assert auto >= min(out_of_fold_score(y, probs, mode=m) for m in CANDIDATES)
