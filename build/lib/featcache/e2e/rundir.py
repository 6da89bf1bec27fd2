"""The files of an end-to-end run directory (checkpoints/ is checkpoints.py's):

    config.json        kind "e2e": the config, encoder order, labels, data, rows, parameters
    history.csv        per epoch: loss, validation metrics, seconds; steps.csv: per step
    loss.png           training loss per step and per epoch, validation loss
    val_f1.png         validation sample-F1 and mAP per epoch
    model.safetensors, thresholds.json, metrics.json    once the run has finished
"""

from __future__ import annotations

import json
import time

from pathlib import Path

import numpy as np

from featcache.data import Dataset
from featcache.encoders.models import save_weights
from featcache.outputs import provenance, replacing, write_text
from featcache.encoders.registry import cache_name
from featcache.stage2.thresholds import fit_thresholds, threshold_report
from featcache.e2e.config import E2EConfig
from featcache.options import flat

KIND = "e2e"  # config.json's "kind": what tells an end-to-end run from a stage-2 one


def new_run_name(cfg: E2EConfig) -> str:
    return f"e2e-{cache_name(cfg.image_encoder)}-{cache_name(cfg.text_encoder)}-{time.strftime('%Y%m%d-%H%M%S')}"


def write_config(run_dir: Path, cfg: E2EConfig, order: list[str], dataset: Dataset, **facts) -> None:
    """Creates the run directory (never an existing one) with its config.json; `facts` (rows,
    parameters, world size, weights started from) are recorded as given."""
    run_dir.mkdir(parents=True, exist_ok=False)
    config = {"kind": KIND, "config": flat(cfg), "encoders": order, "num_labels": dataset.label_space.num_labels,
              "label_ids": list(dataset.label_space.ids), "label_names": list(dataset.label_space.names),
              "data": dataset.name, "data_spec": dataset.spec.to_dict() if dataset.spec else None, **facts, **provenance()}
    write_text(run_dir / "config.json", json.dumps(config, indent=1))


def read_config(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir}: no config.json: not an end-to-end run directory (finetune writes one)")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable run config ({type(e).__name__}: {e})") from None


def finish(run_dir: Path, model, cfg: E2EConfig, y_val: np.ndarray, probs: np.ndarray, state: dict, say) -> dict:
    """Final weights, thresholds re-tuned on the validation rows (stage 2's code), metrics (returned)."""
    save_weights(model, run_dir / "model.safetensors")
    th = fit_thresholds(y_val, probs, cfg.metric, cfg.threshold_mode)
    th.save(run_dir / "thresholds.json")
    metrics = {**threshold_report(y_val, probs, th, cfg.metric, cfg.threshold_mode),  # laid out as stage 2's
               "n_val": len(y_val), "epochs": state["epoch"], "history": state["history"]}
    write_text(run_dir / "metrics.json", json.dumps(metrics, indent=1))  # the marker: written last
    say(f"{run_dir}: validation sample-F1 {metrics['at_0.5']['sample_f1']:.4f} at 0.5, "
        f"{metrics['tuned']['sample_f1']:.4f} with tuned thresholds ({metrics['tuned_out_of_fold']:.4f} out of fold)")
    return metrics


def write_tables(run_dir: Path, state: dict) -> None:
    """history.csv / steps.csv and the seed's figures: training loss, validation F1 per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import polars as pl

    hist, steps = pl.DataFrame(state["history"]), pl.DataFrame(state["steps"])
    with replacing(run_dir / "history.csv") as tmp:
        hist.write_csv(tmp)
    with replacing(run_dir / "steps.csv") as tmp:
        steps.write_csv(tmp)
    fig, ax = plt.subplots(figsize=(6, 4))
    per_epoch = steps.group_by("epoch").agg(pl.len().alias("n")).sort("epoch")
    offset = dict(zip(per_epoch["epoch"], np.cumsum([0] + per_epoch["n"].to_list()[:-1])))
    epoch_ends = [offset[e] + n for e, n in zip(per_epoch["epoch"], per_epoch["n"])]
    ax.plot([offset[e] + s for e, s in zip(steps["epoch"], steps["step"])], steps["loss"], lw=0.6, alpha=0.5,
            label="per step")
    ax.plot(epoch_ends, hist["train_loss"], "o-", label="epoch mean (train)")
    ax.plot(epoch_ends, hist["val_loss"], "s--", label="validation")
    ax.set(xlabel="step", ylabel="BCE loss", title="Training loss")
    ax.legend()
    fig.tight_layout()
    with replacing(run_dir / "loss.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(hist["epoch"], hist["val_sample_f1"], "o-", label="sample-F1 (0.5)")
    ax.plot(hist["epoch"], hist["val_map"], "s--", label="mAP")
    ax.set(xlabel="epoch", ylabel="validation score", title="Validation F1 per epoch", xticks=hist["epoch"].to_list())
    ax.legend()
    fig.tight_layout()
    with replacing(run_dir / "val_f1.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def describe_finished(run_dir: Path, metrics: dict) -> str:
    return (f"{run_dir}: validation sample-F1 {metrics['at_0.5']['sample_f1']:.4f} at 0.5, "
            f"{metrics['tuned']['sample_f1']:.4f} tuned, {metrics['tuned_out_of_fold']:.4f} out of fold; "
            f"history.csv, loss.png, val_f1.png")
