"""A finished end-to-end run predicts from images and captions (it holds its backbones; no cache).

    model, cfg, thresholds = load_e2e_run(run_dir)     # the trained model, eval mode
    probs = predict_proba(run_dir, dataset)            # [test rows, labels]

featcache.runs.kinds.E2ERun turns these into a run's predictions (its thresholds applied).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from featcache.data import Dataset, Record
from featcache.stage2.thresholds import Thresholds
from featcache.encoders.weights import WeightsNotFound
from featcache.e2e.batches import batches, logits_of, sigmoid
from featcache.e2e.config import E2EConfig
from featcache.e2e.distributed import Proc
from featcache.e2e.model import E2EModel, autocast_dtype, build_model
from featcache.e2e.rundir import read_config


def load_e2e_run(run_dir: str | Path, device: str = "cpu") -> tuple[E2EModel, E2EConfig, Thresholds]:
    """The trained model (eval mode, on device), its config and its tuned thresholds."""
    run_dir = Path(run_dir)
    if not (run_dir / "model.safetensors").exists():
        raise ValueError(f"{run_dir}: no model.safetensors: the run has not finished (finetune --resume {run_dir})")
    saved = read_config(run_dir)
    cfg = E2EConfig.from_dict(saved["config"])
    try:
        model = build_model(cfg, saved["num_labels"], saved["encoders"])
    except WeightsNotFound:  # the weights file overwrites every tensor: a random skeleton is enough
        model = build_model(replace(cfg, pretrained=False), saved["num_labels"], saved["encoders"])
    try:
        model.load_state_dict(load_file(str(run_dir / "model.safetensors")))
    except (OSError, RuntimeError, SafetensorError) as e:  # a damaged file, or weights of another model
        raise ValueError(f"{run_dir / 'model.safetensors'}: cannot load the model ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200]})") from None
    return model.to(device).eval(), cfg, Thresholds.load(run_dir / "thresholds.json")


def predict_proba(run_dir: str | Path, dataset: Dataset, records: list[Record] | None = None, batch_size: int = 32,
                  device: str = "cpu", num_workers: int = 0) -> np.ndarray:
    """Probabilities [len(records), L] (default: the test rows), in the records' order."""
    label_ids = read_config(run_dir)["label_ids"]
    if list(dataset.label_space.ids) != label_ids:
        raise ValueError(f"{run_dir}: trained on labels {label_ids}, dataset {dataset.root} has {list(dataset.label_space.ids)}")
    model, cfg, _ = load_e2e_run(run_dir, device)
    proc = Proc(device=torch.device(device))
    loader = batches(dataset, dataset.test if records is None else records, model, batch_size, proc, workers=num_workers)
    return sigmoid(logits_of(model, loader, proc, autocast_dtype(cfg, proc.device)))

