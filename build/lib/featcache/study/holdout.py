"""Score a run on any labelled table (a hold-out it never saw) with the run's own thresholds.

    result = evaluate("runs/<id>", "holdout.csv")
    result["tuned"]["sample_f1"], result["per_label"]

The run reads each row's photo and text as `Predictor` does (a head over cached features rebuilds
its encoders), so the hold-out needs no cache. The hold-out's labels are matched to the run's by
id or by name; a label the run does not know is an error naming the row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from featcache.data import DataError, load_dataset
from featcache.metrics import per_label_table, scores
from featcache.deploy.predictor import Predictor


def evaluate(run: str | Path, data, runs: str | Path = "runs", batch_size: int = 32) -> dict:
    """Metrics of the run on every labelled row of `data` (anything load_dataset takes): sample,
    micro and macro F1 and mAP with the run's thresholds ("tuned") and at 0.5, and per label."""
    model = Predictor.load(run, runs)
    dataset = load_dataset(data)
    missing = [m for m in model.modalities if not dataset.has(m)]
    if missing:
        raise DataError(f"{dataset.name}: has no {' or '.join(missing)} column; run {model.run_dir.name} reads "
                        f"{' and '.join(model.modalities)}")
    records = dataset.train
    column = {str(label): j for j, label in enumerate(model.label_ids)}
    column.update({name: j for j, name in enumerate(model.label_names) if name not in column})
    y = np.zeros((len(records), len(model.label_ids)), np.float32)
    for i, rec in enumerate(records):
        for label in rec.labels:
            if str(label) not in column:
                raise DataError(f"{dataset.where(rec)}: label {label!r} is not one the run predicts "
                                f"({', '.join(model.label_names)})")
            y[i, column[str(label)]] = 1
    probs = model.predict_proba(dataset.photos(records) if "image" in model.modalities else None,
                                [r.caption for r in records] if "text" in model.modalities else None, batch_size)
    preds = model.thresholds.apply(probs)
    return {"run": str(model.run_dir), "data": dataset.name, "rows": len(records),
            "tuned": scores(y, probs, preds), "at_0.5": scores(y, probs),
            "per_label": per_label_table(y, probs, preds, list(model.label_names))}


def format_evaluation(result: dict) -> str:
    """`evaluate` as tables: the run's thresholds and 0.5, then per label."""
    from featcache.tables import render

    return "\n".join([
        f"{result['run']} on {result['data']}: {result['rows']} labelled rows",
        render([{"thresholds": "the run's (tuned)", **result["tuned"]}, {"thresholds": "at 0.5", **result["at_0.5"]}],
               {"thresholds": "thresholds", "sample_f1": "sample-F1", "micro_f1": "micro-F1", "macro_f1": "macro-F1",
                "map": "mAP"}),
        render(result["per_label"], {"label": "label", "precision": "precision", "recall": "recall", "f1": "F1",
                                     "support": "support", "predicted": "predicted", "ap": "AP"})])
