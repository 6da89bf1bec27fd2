"""checkpoints/epoch-N/ of an end-to-end run: model.safetensors (and ema.safetensors when the run
keeps a moving average), optimizer.pt (optimizer + grad scaler, loaded with weights_only=True: a
foreign pickle is refused without running it) and state.json (epoch, history, per-step losses).
Which are kept is the run's choice (`keep`, TrainOptions.keep): the latest (`resume` continues after it; kept
while the run trains), the best by validation mAP (threshold-free, as stage 2 early-stops on it),
or all of them."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from featcache.encoders.models import save_weights

CHECKPOINTS = "checkpoints"


def save_checkpoint(run_dir: Path, model, optimizer, scaler, state: dict, ema=None,
                    keep: tuple[str, ...] = ("best", "last")) -> Path:
    """checkpoints/epoch-N/ is written beside the old one and renamed into place: a kill at any
    moment leaves the previous checkpoint intact. Then the ones `keep` does not want are removed
    (the latest always stays until the run finishes: see prune)."""
    root = Path(run_dir) / CHECKPOINTS
    final, tmp = root / f"epoch-{state['epoch']}", root / f".epoch-{state['epoch']}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_weights(model, tmp / "model.safetensors")
    if ema is not None:
        save_weights(ema.module, tmp / "ema.safetensors")
    torch.save({"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict()}, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(state))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    prune(run_dir, state, keep, finished=False)
    return final


def prune(run_dir: Path, state: dict, keep: tuple[str, ...], finished: bool) -> list[Path]:
    """Remove the checkpoints `keep` does not want; the latest stays while the run is unfinished.
    Returns those kept."""
    if "all" in keep:
        return sorted(Path(run_dir, CHECKPOINTS).glob("epoch-*"))
    wanted = set()
    if "last" in keep or not finished:
        wanted.add(state["epoch"])
    if "best" in keep and state["history"]:
        wanted.add(max(state["history"], key=lambda r: r["val_map"])["epoch"])
    kept = []
    for ckpt in Path(run_dir, CHECKPOINTS).glob("epoch-*"):
        if int(ckpt.name.split("-")[1]) in wanted:
            kept.append(ckpt)
        else:
            shutil.rmtree(ckpt, ignore_errors=True)
    return sorted(kept)


def latest_checkpoint(run_dir: Path) -> Path:
    done = sorted(Path(run_dir, CHECKPOINTS).glob("epoch-*"), key=lambda p: int(p.name.split("-")[1]))
    if not done:
        raise FileNotFoundError(f"{run_dir}: no checkpoint to resume from (checkpoints/epoch-N/)")
    return done[-1]


def load_checkpoint(run_dir: Path, model, optimizer=None, scaler=None, ema=None) -> dict:
    """Loads the latest checkpoint into what is given; returns its state."""
    ckpt = latest_checkpoint(run_dir)
    model.load_state_dict(load_file(str(ckpt / "model.safetensors")))
    if ema is not None:
        if not (ckpt / "ema.safetensors").exists():
            raise ValueError(f"{ckpt}: no ema.safetensors, though the run keeps a moving average (ema_decay "
                             f"{ema.decay}); the checkpoint was not written by this run")
        ema.module.load_state_dict(load_file(str(ckpt / "ema.safetensors")))
    if optimizer is not None:
        try:
            opt = torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True)
        except Exception as e:  # a foreign or tampered pickle: weights_only refuses it, nothing runs
            raise ValueError(f"{ckpt / 'optimizer.pt'}: not a loadable checkpoint, refused without running it "
                             f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
        optimizer.load_state_dict(opt["optimizer"])
        if scaler is not None:
            scaler.load_state_dict(opt["scaler"])
    return json.loads((ckpt / "state.json").read_text())
