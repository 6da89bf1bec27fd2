"""Metrics for multi-label predictions, from scikit-learn.

sample-F1 ("mean F1" on the COMP5329 leaderboard) averages each image's F1; micro-F1 pools every
(image, label) decision; macro-F1 averages the labels' F1s, so rare labels weigh as much as
"person". mAP is threshold-free: it says how good the ranking is before thresholds are chosen.
"""

from __future__ import annotations

import numpy as np

AVERAGES = {"samples": "sample_f1", "micro": "micro_f1", "macro": "macro_f1"}


def f1(y_true: np.ndarray, y_pred: np.ndarray, average: str = "samples") -> float:
    """F1 with sklearn's zero_division=0: an image (or label) with nothing true and nothing predicted scores 0."""
    from sklearn.metrics import f1_score  # here: thresholds are applied (an exported model) without scikit-learn
    if average not in AVERAGES:
        raise ValueError(f"metric must be one of {sorted(AVERAGES)}, got {average!r}")
    y_true, y_pred = np.asarray(y_true, bool), np.asarray(y_pred, bool)
    if y_true.ndim == 2 and y_true.shape[1] == 1:
        # sklearn reads one column as a binary problem (no "samples", and 1.0 when nothing is true or
        # predicted); an all-zero second column keeps it multi-label and changes no count.
        y_true, y_pred = (np.hstack([a, np.zeros_like(a)]) for a in (y_true, y_pred))
        if average == "macro":
            return float(f1_score(y_true, y_pred, average=None, zero_division=0)[0])
    return float(f1_score(y_true, y_pred, average=average, zero_division=0))


def mean_average_precision(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Macro AP over the labels that have at least one positive (AP is undefined without one)."""
    from sklearn.metrics import average_precision_score

    y_true = np.asarray(y_true, bool)
    has_pos = y_true.any(axis=0)
    if not has_pos.any():
        return float("nan")
    return float(average_precision_score(y_true[:, has_pos], np.asarray(probs)[:, has_pos], average="macro"))


def scores(y_true: np.ndarray, probs: np.ndarray, preds: np.ndarray | None = None,
           map_value: float | None = None) -> dict[str, float]:
    """sample/micro/macro F1 of `preds` (default: probs >= 0.5) and mAP of `probs` (map_value: the
    caller's, when it scores several predictions of the same probabilities)."""
    preds = np.asarray(probs) >= 0.5 if preds is None else np.asarray(preds, bool)
    out = {key: f1(y_true, preds, avg) for avg, key in AVERAGES.items()}
    out["map"] = mean_average_precision(y_true, probs) if map_value is None else map_value
    return out


def per_label_table(y_true: np.ndarray, probs: np.ndarray, preds: np.ndarray, names: list[str] | None = None) -> list[dict]:
    """One dict per label: precision, recall, F1, support, AP (nan without positives)."""
    y_true, preds = np.asarray(y_true, bool), np.asarray(preds, bool)
    from sklearn.metrics import average_precision_score, precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(y_true, preds, average=None, zero_division=0)
    names = names or [str(j) for j in range(y_true.shape[1])]
    rows = []
    for j, name in enumerate(names):
        ap = average_precision_score(y_true[:, j], probs[:, j]) if y_true[:, j].any() else float("nan")
        rows.append({"label": name, "precision": float(p[j]), "recall": float(r[j]), "f1": float(f[j]),
                     "support": int(s[j]), "predicted": int(preds[:, j].sum()), "ap": float(ap)})
    return rows
