"""Choosing a model by an honest score: the ranking of a study follows F1 with thresholds tuned on
other validation rows, never the in-sample tuned F1, and says when it cannot tell models apart."""

from __future__ import annotations

import numpy as np
import polars as pl

from featcache.stage2.ablate import format_ablation, summarize_ablation
from featcache.stage2.thresholds import fit_thresholds, out_of_fold, threshold_report

N_VAL, LABELS = 60, 40  # many labels, few validation rows: per-label thresholds overfit


def _targets(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = rng.random((N_VAL, LABELS)) < 0.08
    y[np.arange(N_VAL), rng.integers(0, LABELS, N_VAL)] = True  # every image has a label
    return y


def _row(name: str, seed: int, y: np.ndarray, probs: np.ndarray, mode: str = "per-label") -> dict:
    """A study's raw row for one fit whose validation probabilities are `probs`, scored as fit_eval does."""
    th = fit_thresholds(y, probs, mode=mode)
    oof, per_row = out_of_fold(y, probs, mode=mode)
    m = threshold_report(y, probs, th, "samples", mode, oof)
    return {"encoders": [name], "fusion": "concat", "variant": "default", "seed": seed, "n_val": len(y),
            "sample_f1": m["sample_f1"], "tuned_out_of_fold": m["tuned_out_of_fold"],
            "sample_f1_05_fallback": m["at_0.5_fallback"]["sample_f1"], "sample_f1_05": m["at_0.5"]["sample_f1"],
            "micro_f1": m["micro_f1"], "macro_f1": m["macro_f1"], "map": m["map"], "fit_seconds": 0.0,
            "val_out_of_fold": per_row.tolist()}


def _planted_study(y: np.ndarray) -> pl.DataFrame:
    """Two models over 2 seeds each.
    sharp: a weak signal in fine-grained scores; 40 per-label thresholds on 60 rows find in-sample
      cut points that do not hold on other rows.
    blunt: better-than-chance decisions given as two score levels; tuning can only keep them, so its
      in-sample and out-of-fold figures agree."""
    rows = []
    for seed in range(2):
        rng = np.random.default_rng(10 + seed)
        sharp = np.clip(0.15 * y + 0.85 * rng.random(y.shape), 0, 1)
        decided = y ^ (rng.random(y.shape) < 0.3)  # better than chance
        blunt = np.where(decided, 0.7, 0.3)
        rows += [_row("sharp", seed, y, sharp), _row("blunt", seed, y, blunt)]
    return pl.DataFrame(rows)


def test_a_model_that_overfits_its_thresholds_is_first_in_sample_and_not_out_of_fold():
    raw = _planted_study(_targets())
    in_sample = raw.group_by(pl.col("encoders").list.join("+")).agg(pl.col("sample_f1").mean()).sort(
        "sample_f1", descending=True)
    assert in_sample["encoders"][0] == "sharp"  # what the old ranking would have chosen
    table = summarize_ablation(raw)
    assert table["encoders"].to_list() == ["blunt", "sharp"]
    assert table["tuned_out_of_fold"].is_sorted(descending=True)
    text = format_ablation(table)
    assert "in-sample tuning would have picked sharp" in text
    assert f"only {N_VAL} validation rows" in text  # too few rows for the ranking to mean much


def test_models_the_rows_cannot_tell_apart_are_marked_and_a_clear_loser_is_not():
    y = _targets(1)
    rng = np.random.default_rng(3)
    good = np.clip(0.5 * y + 0.5 * rng.random(y.shape), 0, 1)
    twin = np.clip(0.5 * y + 0.5 * rng.random(y.shape), 0, 1)  # as good, its errors on other rows
    poor = np.clip(0.1 * y + 0.9 * rng.random(y.shape), 0, 1)
    raw = pl.DataFrame([_row(n, 0, y, p, mode="flat") for n, p in (("good", good), ("twin", twin), ("poor", poor))])
    table = summarize_ablation(raw)
    ties = dict(zip(table["encoders"], table["within_noise"]))
    assert ties["good"] and ties["twin"] and not ties["poor"]
    first = table.row(0, named=True)
    assert first["oof_low"] <= first["tuned_out_of_fold"] <= first["oof_high"]
    assert "2 configurations are within the noise of the first" in format_ablation(table)


def test_without_per_row_scores_the_seed_spread_decides():
    """micro/macro F1 have no per-row scores: ties come from the seeds' standard errors."""
    base = {"fusion": "concat", "variant": "default", "n_val": 2000, "sample_f1": 0.8, "sample_f1_05_fallback": 0.8,
            "sample_f1_05": 0.8, "micro_f1": 0.8, "macro_f1": 0.7, "map": 0.7, "fit_seconds": 1.0, "val_out_of_fold": None}
    scores = {"a": [0.850, 0.852, 0.848], "b": [0.849, 0.853, 0.846], "c": [0.80, 0.801, 0.799]}
    raw = pl.DataFrame([{**base, "encoders": [k], "seed": s, "tuned_out_of_fold": v}
                        for k, vs in scores.items() for s, v in enumerate(vs)])
    table = summarize_ablation(raw)
    assert table["encoders"].to_list() == ["a", "b", "c"]
    assert table["within_noise"].to_list() == [True, True, False]
    assert table["oof_low"].is_nan().all()
