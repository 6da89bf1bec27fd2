"""Decision thresholds tuned for the metric that is reported, on rows the head did not train on.

Why not each label's own best-F1 threshold: on the real slice that lowered sample-F1 by about 0.01
against a flat 0.5 (rare labels get thresholds near 0.1 and add false positives to many images).
So the thresholds are chosen to maximise the target metric itself (sample-F1 by default) by
coordinate ascent: one label at a time, every candidate of a grid scored at once with the other
labels fixed. The search starts at 0.5 + fallback and only takes strict improvements, so the
tuned thresholds never score below that point on the rows they were tuned on.

The fallback gives an image with no label above threshold its top label: every image has at least
one label (true for all training rows), and an empty prediction scores 0 on sample-F1.

Per-label thresholds still overfit rare labels (real slice: +0.008 in-sample, -0.0005 out of fold
against 0.5 + fallback). So "shrunk" pulls each label's threshold toward the global one by its
support, and "auto" (the default of the head runs) picks the mode with the best out-of-fold score
on the tuning rows, the simpler on ties, then fits it on all of them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from featcache.artifacts import ThresholdsFile, read_json
from featcache.metrics import AVERAGES, scores
from featcache.outputs import write_text

GRID = np.round(np.arange(0.02, 0.985, 0.01), 2)  # candidate thresholds
CANDIDATES = ("flat", "global", "shrunk", "per-label")  # simplest first: auto's ties go to the earlier
MODES = (*CANDIDATES, "auto")
SHRINK = 100  # positives at which a label's own threshold and the global one weigh the same


@dataclass(frozen=True)
class Thresholds:
    values: tuple[float, ...]  # one per label
    fallback: bool = True
    metric: str = "samples"
    mode: str = "per-label"
    start_score: float = float("nan")  # metric at 0.5 + fallback on the tuning rows
    score: float = float("nan")  # metric with these thresholds on the tuning rows
    chosen: str = ""  # the mode these values come from (auto's pick; "" in files written before auto)
    candidates_out_of_fold: dict | None = None  # auto: each candidate's out_of_fold_score

    def apply(self, probs: np.ndarray) -> np.ndarray:
        return apply_thresholds(probs, np.array(self.values), self.fallback)

    def save(self, path: str | Path) -> None:
        write_text(path, json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> Thresholds:
        d = read_json(path, ThresholdsFile)  # ArtifactError (a ValueError) naming the file
        names = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in d.items() if k in names}, "values": tuple(d["values"])})


def apply_thresholds(probs: np.ndarray, thresholds: float | np.ndarray = 0.5, fallback: bool = True) -> np.ndarray:
    """Boolean predictions; with fallback an image with no label above threshold gets its top label."""
    probs = np.asarray(probs)
    preds = probs >= np.asarray(thresholds, dtype=probs.dtype)
    if fallback and len(probs):
        empty = ~preds.any(axis=1)
        preds[np.flatnonzero(empty), probs[empty].argmax(axis=1)] = True
    return preds


def fit_thresholds(y_true: np.ndarray, probs: np.ndarray, metric: str = "samples", mode: str = "per-label",
                   fallback: bool = True, grid: np.ndarray = GRID, rounds: int = 4) -> Thresholds:
    """Thresholds maximising `metric` (samples|micro|macro F1) of apply_thresholds on these rows.

    mode "flat": 0.5 everywhere; "global": one threshold for every label; "per-label": coordinate
    ascent over labels from the best global value, at most `rounds` passes (it stops at the first
    pass that changes nothing); "shrunk": per-label pulled toward global, weight n/(n + SHRINK) for
    a label with n positives; "auto": the candidate with the best out_of_fold_score (2 folds x 2)."""
    if metric not in AVERAGES:
        raise ValueError(f"metric must be one of {sorted(AVERAGES)}, got {metric!r}")
    if mode not in MODES:
        raise ValueError(f"threshold mode must be one of {MODES}, got {mode!r}")
    y = np.asarray(y_true, bool)
    probs = np.asarray(probs, np.float64)
    oof = None
    if mode == "auto" and len(y) < 4:  # a fold needs rows to fit and to score: too few to choose
        oof, chosen = {}, "flat"
    elif mode == "auto":
        oof = _candidates_out_of_fold(y, probs, metric=metric, fallback=fallback, grid=grid, rounds=rounds)
        chosen = max(CANDIDATES, key=lambda m: (oof[m], -CANDIDATES.index(m)))
    else:
        chosen = mode
    t = _fit_candidates(y, probs, (chosen,), metric, fallback, grid, rounds)[chosen]
    start = _f1(y, apply_thresholds(probs, 0.5, fallback), metric)
    score = _f1(y, apply_thresholds(probs, t, fallback), metric)
    return Thresholds(tuple(float(v) for v in t), fallback, metric, mode, float(start), float(score), chosen, oof)


def _fit_candidates(y: np.ndarray, probs: np.ndarray, modes: tuple[str, ...], metric: str, fallback: bool,
                    grid: np.ndarray, rounds: int) -> dict[str, np.ndarray]:
    """Thresholds of each of `modes` on these rows; shrunk reuses the global and per-label searches."""
    out = {"flat": np.full(y.shape[1], 0.5)}
    if {"global", "shrunk"} & set(modes):
        out["global"] = _search(y, probs, "global", metric, fallback, grid, rounds)
    if {"per-label", "shrunk"} & set(modes):
        out["per-label"] = _search(y, probs, "per-label", metric, fallback, grid, rounds)
    if "shrunk" in modes:
        w = y.sum(0) / (y.sum(0) + SHRINK)
        out["shrunk"] = np.round(out["global"] + w * (out["per-label"] - out["global"]), 4)
    start = _f1(y, apply_thresholds(probs, 0.5, fallback), metric)
    for m in modes:  # a shrunk point below the start, or rounding between the count formulas: keep the guarantee
        if _f1(y, apply_thresholds(probs, out[m], fallback), metric) < start:
            out[m] = np.full(y.shape[1], 0.5)
    return {m: out[m] for m in modes}


def _search(y: np.ndarray, probs: np.ndarray, mode: str, metric: str, fallback: bool, grid: np.ndarray,
            rounds: int) -> np.ndarray:
    t = np.full(y.shape[1], 0.5)
    start = _f1(y, apply_thresholds(probs, t, fallback), metric)
    # Per-label starts from the best global value on a coarse grid: from 0.5 alone, coordinate ascent
    # can stall where every image relies on the fallback (lowering one label's threshold first removes top labels).
    cands = grid if mode == "global" else grid[::5]
    best = max(zip(_global_scores(y, probs, cands, metric, fallback), -abs(cands - 0.5), cands))
    if best[0] > start:
        t[:] = best[2]
    if mode == "per-label":
        current = max(best[0], start)
        for _ in range(rounds):
            changed = False
            for j in range(y.shape[1]):
                cands = np.append(grid, t[j])  # the current value is a candidate: scores stay comparable
                vals = _candidate_scores(y, probs, t, j, cands, metric, fallback)
                k = int(np.argmax(vals))
                if vals[k] > current + 1e-12:
                    t[j], current, changed = cands[k], float(vals[k]), True
            if not changed:
                break
    return t


def _global_scores(y: np.ndarray, probs: np.ndarray, cands: np.ndarray, metric: str, fallback: bool) -> np.ndarray:
    """The metric for every candidate of one threshold shared by all labels: [images, labels, candidates]
    at once (a ~100-value grid on 2,000 x 18 is 3.6M booleans) instead of one sklearn call each."""
    b = probs[:, :, None] >= cands[None, None, :]
    if fallback:
        n = np.arange(len(y))
        top = probs.argmax(1)
        b[n, top, :] |= ~b.any(1)
    return _f1_stack(y, b, metric)


def _f1(y: np.ndarray, pred: np.ndarray, metric: str) -> float:
    """metrics.f1 (sklearn, zero_division=0) from counts: the searches score thousands of
    predictions, and sklearn's input checks cost ~6 ms a call, more than the counting."""
    return float(_f1_stack(np.asarray(y, bool), np.asarray(pred, bool)[:, :, None], metric)[0])


def _row_f1(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Each image's F1 (sample-F1 is their mean); 0 where nothing is true or predicted."""
    denom = pred.sum(1) + y.sum(1)
    return np.where(denom > 0, 2 * (pred & y).sum(1) / np.maximum(denom, 1), 0.0)


def _f1_stack(y: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """The metric of each of K predictions b [images, labels, K] against y [images, labels] -> [K]."""
    hit = b & y[:, :, None]
    if metric == "samples":
        denom = b.sum(1) + y.sum(1)[:, None]
        return np.where(denom > 0, 2 * hit.sum(1) / np.maximum(denom, 1), 0.0).mean(0)
    if metric == "micro":
        denom = b.sum((0, 1)) + y.sum()
        return np.where(denom > 0, 2 * hit.sum((0, 1)) / np.maximum(denom, 1), 0.0)
    denom = b.sum(0) + y.sum(0)[:, None]  # macro: [labels, candidates]
    return np.where(denom > 0, 2 * hit.sum(0) / np.maximum(denom, 1), 0.0).mean(0)


def _candidate_scores(y: np.ndarray, probs: np.ndarray, t: np.ndarray, j: int, cands: np.ndarray,
                      metric: str, fallback: bool) -> np.ndarray:
    """The metric for every candidate threshold of label j, the other labels' thresholds fixed.

    Samples and micro F1 work on each image's counts (predicted, true positives) with label j off
    and on: a candidate c turns j on for the images whose score is >= c, so sorting label j's
    scores once gives every candidate's total by prefix sums, in O(n log n) rather than
    [images, candidates] arrays (the search's inner loop: 27,000 calls in a 21-fit study)."""
    if metric == "macro":
        return _candidate_scores_macro(y, probs, t, j, cands, fallback)
    n = len(y)
    others = probs >= t
    others[:, j] = False
    np_off, tp_off = others.sum(1), (others & y).sum(1)
    np_on, tp_on = np_off + 1, tp_off + y[:, j]
    if fallback:  # with j off, an image with nothing predicted falls back to its top label (maybe j)
        empty = np_off == 0
        np_off = np.where(empty, 1, np_off)
        tp_off = np.where(empty, y[np.arange(n), probs.argmax(1)], tp_off)
    order = np.argsort(probs[:, j], kind="stable")
    first_on = np.searchsorted(probs[order, j], cands, side="left")  # c turns on the images order[first_on:]

    def tail(v):  # per candidate, the sum of v over the images it turns on
        suffix = np.concatenate([np.cumsum(v[order][::-1])[::-1], [0]])
        return suffix[first_on]

    if metric == "samples":
        ntrue = y.sum(1)
        f_off = np.where(np_off + ntrue > 0, 2 * tp_off / np.maximum(np_off + ntrue, 1), 0.0)
        f_on = 2 * tp_on / (np_on + ntrue)
        return (f_off.sum() + tail(f_on - f_off)) / n
    tp = tp_off.sum() + tail(tp_on - tp_off)
    denom = np_off.sum() + tail(np_on - np_off) + y.sum()
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def _candidate_scores_macro(y: np.ndarray, probs: np.ndarray, t: np.ndarray, j: int, cands: np.ndarray,
                            fallback: bool) -> np.ndarray:
    """Macro F1 for every candidate of label j: per-label counts over [images, candidates] arrays
    (the fallback moves predictions between labels, so the per-image shortcut does not apply)."""
    n = len(y)
    others = probs >= t
    others[:, j] = False
    b = probs[:, j, None] >= cands[None, :]  # [n, K] label j predicted
    npred = others.sum(1)[:, None] + b
    top = probs.argmax(1)
    fb = (npred == 0) if fallback else np.zeros_like(b)  # images that fall back to their top label
    # Per-label counts; the fallback adds a prediction of the top label to the images in fb.
    onehot = np.zeros_like(probs)
    onehot[np.arange(n), top] = 1.0
    fbf = fb.astype(np.float64)
    # einsum, not @: BLAS is slow for these thin shapes while another process holds the cores.
    pred_l = others.sum(0)[:, None] + np.einsum("nl,nk->lk", onehot, fbf)  # [L, K]
    tp_l = (others & y).sum(0)[:, None] + np.einsum("nl,nk->lk", onehot * y, fbf)
    pred_l[j] += b.sum(0)
    tp_l[j] += (b & y[:, j, None]).sum(0)
    denom = pred_l + y.sum(0)[:, None]
    return np.where(denom > 0, 2 * tp_l / np.maximum(denom, 1), 0.0).mean(0)


def _folds(n: int, folds: int, repeats: int, seed: int):
    """(fit rows, held-out rows) for each fold of each repeat; a fixed seed, so modes see the same folds."""
    for r in range(repeats):
        parts = np.array_split(np.random.default_rng(seed + r).permutation(n), folds)
        for k in range(folds):
            yield np.concatenate([p for i, p in enumerate(parts) if i != k]), parts[k]


def _candidates_out_of_fold(y: np.ndarray, probs: np.ndarray, metric: str, fallback: bool, grid: np.ndarray,
                            rounds: int, folds: int = 2, repeats: int = 2, seed: int = 0) -> dict[str, float]:
    """out_of_fold_score of every candidate mode, each fold's searches shared between the modes."""
    scores = {m: [] for m in CANDIDATES}
    for fit, held in _folds(len(y), folds, repeats, seed):
        for m, t in _fit_candidates(y[fit], probs[fit], CANDIDATES, metric, fallback, grid, rounds).items():
            scores[m].append(_f1(y[held], apply_thresholds(probs[held], t, fallback), metric))
    return {m: float(np.mean(v)) for m, v in scores.items()}


def out_of_fold_score(y_true: np.ndarray, probs: np.ndarray, folds: int = 2, repeats: int = 2, seed: int = 0,
                      **kw) -> float:
    """What tuning is worth on rows it did not see: tune on all folds but one, score the held-out
    fold, averaged over folds and repeats. The in-sample score of fit_thresholds is optimistic: on
    the real slice's 2,018 validation rows per-label thresholds gained ~0.009 sample-F1 in-sample
    and lost ~0.002 out of fold against 0.5 + fallback. With mode="auto" this is nested: the
    choice among the candidates is made again inside each fold, on its fit rows only."""
    return out_of_fold(y_true, probs, folds, repeats, seed, **kw)[0]


def out_of_fold(y_true: np.ndarray, probs: np.ndarray, folds: int = 2, repeats: int = 2, seed: int = 0,
                **kw) -> tuple[float, np.ndarray | None]:
    """(out_of_fold_score, each row's F1 when held out, averaged over the repeats). The rows are
    given for sample-F1 only (a mean over images; micro and macro F1 are not): they let a
    comparison of two models on the same rows be bootstrapped."""
    y, probs = np.asarray(y_true, bool), np.asarray(probs)
    metric = kw.get("metric", "samples")
    scores, rows = [], np.zeros(len(y))
    for fit, held in _folds(len(y), folds, repeats, seed):
        pred = fit_thresholds(y[fit], probs[fit], **kw).apply(probs[held])
        scores.append(_f1(y[held], pred, metric))
        rows[held] += _row_f1(y[held], pred) / repeats  # every row is held out once per repeat
    return float(np.mean(scores)), rows if metric == "samples" else None


def threshold_report(y_true: np.ndarray, probs: np.ndarray, th: Thresholds, metric: str, mode: str,
                     out_of_fold_value: float | None = None) -> dict:
    """The metrics both stages report for thresholds `th` fitted on these rows: "tuned" (also at
    the top level) is scored on the rows the thresholds were tuned on (optimistic);
    "tuned_out_of_fold" is the same tuning scored on held-out halves of them (auto: its choice
    too); then 0.5 without and with the top-label fallback, and the thresholds themselves."""
    tuned = scores(y_true, probs, th.apply(probs))
    return {**tuned,
            "at_0.5": scores(y_true, probs, apply_thresholds(probs, 0.5, fallback=False), tuned["map"]),
            "at_0.5_fallback": scores(y_true, probs, apply_thresholds(probs, 0.5, fallback=True), tuned["map"]),
            "tuned": tuned, "tuned_out_of_fold": out_of_fold_value if out_of_fold_value is not None
            else out_of_fold_score(y_true, probs, metric=metric, mode=mode),
            "thresholds": {"metric": metric, "mode": mode, "chosen": th.chosen,
                           "candidates_out_of_fold": th.candidates_out_of_fold, "values": list(th.values)}}


def metrics_table(m: dict) -> str:
    """A run's metrics.json (fit-head, runs show): F1s and mAP at 0.5, with the fallback, tuned in-sample,
    and the out-of-fold figure of the metric the thresholds were tuned for."""
    from featcache.tables import render

    th = m.get("thresholds") or {}
    mode, chosen = th.get("mode"), th.get("chosen")
    tuned = f"tuned ({'auto: ' + chosen if mode == 'auto' and chosen else mode}, in-sample)"
    rows = [{"thresholds": name, **{k: m[key][k] for k in ("sample_f1", "micro_f1", "macro_f1", "map")}}
            for name, key in [("at 0.5", "at_0.5"), ("at 0.5 + fallback", "at_0.5_fallback"), (tuned, "tuned")]]
    rows.append({"thresholds": "tuned, out of fold (compare runs by this)",
                 AVERAGES[th.get("metric", "samples")]: m.get("tuned_out_of_fold")})
    return render(rows, {"thresholds": "thresholds", "sample_f1": "sample-F1", "micro_f1": "micro-F1",
                         "macro_f1": "macro-F1", "map": "mAP"})
