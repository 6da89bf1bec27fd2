"""Training an end-to-end run: the epoch loop, resumable after any epoch.

    run_dir = train(E2EConfig(...), data_root, runs_dir)   # runs/e2e-<image>-<text>-<time>/
    train(None, None, resume=run_dir)                      # continues after its last checkpoint

Runs the same under `torchrun --nproc_per_node N` (see distributed.py): a DistributedSampler per
rank, validation sharded and gathered so every rank sees all rows, and rank 0 alone writes. Every
epoch ends in a checkpoint. Shuffling, augmentation and dropout are seeded per epoch and the lr is
a function of the global step, so an interrupted and resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from timm.utils import ModelEmaV3
from tqdm import tqdm
from torch import nn

from heads.losses import LOSSES

from featcache import tracking
from featcache.data import Dataset, DataSpec, Record, load_dataset
from featcache.metrics import scores
from featcache.data.split import nested_share, split_rows
from featcache.e2e.batches import batches, logits_of, readable, sigmoid
from featcache.e2e.checkpoints import load_checkpoint, prune, save_checkpoint
from featcache.e2e.config import E2EConfig, TrainOptions
from featcache.options import known
from featcache.options import flat
from featcache.e2e.distributed import Proc, barrier, broadcast, default_workers, parallel, start_processes, stop_processes, sum_over_ranks
from featcache.e2e.model import E2EModel, autocast_dtype, build_model, standardise, with_init_head
from featcache.e2e.rundir import finish, new_run_name, read_config, write_config, write_tables


def train(cfg: E2EConfig | None, data: str | Path | None, runs: str | Path | None = None,
          resume: str | Path | None = None, epochs: int | None = None, log=None, **options) -> Path:
    """Train an end-to-end run, or resume one (cfg and data then come from the run; `epochs` may
    raise its epoch count). Returns the run directory. `options`: TrainOptions' (run_name, device,
    workers, threads, keep: the checkpoints kept, track: "tensorboard" writes the losses and
    validation scores under run_dir/tensorboard, ...)."""
    opts = TrainOptions(**known(TrainOptions, {**options, **({"runs": Path(runs)} if runs is not None else {})}))
    run_name, num_workers, log_every, keep, track, progress = (opts.run_name, opts.num_workers, opts.log_every,
                                                               opts.keep, opts.track, opts.progress)
    runs, track = opts.runs, tracking.tracking_kind(track)  # the option, else $FEATCACHE_TRACK
    proc = start_processes(opts.device, opts.threads)
    say = log or (lambda m: print(m, file=sys.stderr, flush=True))
    saved = read_config(resume) if resume else None
    if saved:
        cfg = replace(E2EConfig.from_dict(saved["config"]), epochs=epochs or saved["config"]["epochs"])
        data = data or (DataSpec(**saved["data_spec"]) if saved.get("data_spec") else saved["data"])
    run_dir = Path(resume) if resume else Path(runs) / broadcast(run_name or new_run_name(cfg), proc)
    dataset = load_dataset(data)
    if saved and saved.get("dataset_fingerprint") not in (None, dataset.fingerprint()):
        raise ValueError(f"{run_dir}: trained on other data than {dataset.root} (dataset fingerprint "
                         f"{saved['dataset_fingerprint']}, now {dataset.fingerprint()}): resuming could put rows it "
                         f"trained on into validation. Resume with the run's data ({saved['data']}), or start a new run")
    num_labels = dataset.label_space.num_labels
    train_part, val_part = split(dataset, cfg)
    torch.manual_seed(cfg.seed)
    if saved:  # the saved config already holds the init head's settings; the checkpoint its weights
        order, head, weights = saved["encoders"], None, {}
    else:
        cfg, order, head, weights = with_init_head(cfg, num_labels)
    model = build_model(cfg, num_labels, order, head, weights).to(proc.device)
    if not cfg.init_head and not saved:
        standardise(model, dataset, train_part.records[:cfg.stats_rows], proc.device)
    trainer, state = Trainer.start(model, cfg, proc, resume)
    if saved:
        say(f"{run_dir}: resuming after epoch {state['epoch']} of {cfg.epochs}")
    elif proc.main:
        write_config(run_dir, cfg, order, dataset, dataset_fingerprint=dataset.fingerprint(), world_size=proc.world, train_rows=len(train_part.records),
                     validation_rows=len(val_part.records), init_weights={k: str(v) for k, v in weights.items()},
                     trainable_params=trainer.trainable_params, total_params=sum(p.numel() for p in model.parameters()))
    workers = default_workers(proc) if num_workers is None else num_workers
    train_loader = batches(dataset, train_part.records, model, cfg.batch_size, proc, shuffle=True, seed=cfg.seed,
                           augment_seed=cfg.seed, workers=workers)
    val_loader = batches(dataset, val_part.records, model, 2 * cfg.batch_size, proc, seed=cfg.seed, workers=workers)
    say(f"rank {proc.rank}/{proc.world}: {len(train_part.records)} train rows ({len(train_loader)} steps/epoch), "
        f"{len(val_part.records)} validation rows, {trainer.trainable_params / 1e6:.1f}M trainable parameters, "
        f"{proc.device}, {torch.get_num_threads()} threads, amp {trainer.amp}, {workers} workers")
    probs = None
    with tracking.track(track if proc.main else None, run_dir / "tensorboard") as tb:
        probs, state = _epochs(trainer, state, cfg, proc, run_dir, train_loader, val_loader, train_part, val_part, say,
                               log_every, keep, tb, progress)
        if probs is None:  # resumed after the last epoch: only the final step was left
            probs = sigmoid(logits_of(trainer.scored, val_loader, proc, trainer.amp))
        if proc.main:
            metrics = finish(run_dir, trainer.scored, cfg, val_part.y, probs, state, say)
            prune(run_dir, state, keep, finished=True)
            if tb is not None:
                tb.hparams(flat(cfg), {k: metrics[k] for k in ("sample_f1", "map", "tuned_out_of_fold")})
    stop_processes(proc)
    return run_dir


def _epochs(trainer, state, cfg, proc, run_dir, train_loader, val_loader, train_part, val_part, say, log_every, keep,
            tb, progress):
    """The epochs left: train, validate, checkpoint; (the last validation probabilities or None, state)."""
    probs = None
    for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        first_step = len(state["steps"])
        loss_sum, rows, steps = trainer.epoch(epoch, train_loader, torch.from_numpy(train_part.y), state["steps"],
                                              say, log_every, progress and proc.main)
        train_seconds = time.perf_counter() - t0
        loss_sum, rows = sum_over_ranks([loss_sum, rows], proc)
        t1 = time.perf_counter()
        logits = logits_of(trainer.scored, val_loader, proc, trainer.amp)
        probs = sigmoid(logits)
        val_loss = float(LOSSES["bce"](torch.from_numpy(logits), torch.from_numpy(val_part.y)))
        record = {"epoch": epoch, "steps": steps, "train_loss": loss_sum / rows, "val_loss": val_loss,
                  **{f"val_{k}": v for k, v in scores(val_part.y, probs).items()},
                  "train_seconds": train_seconds, "seconds_per_step": train_seconds / steps,
                  "images_per_s": rows / train_seconds, "val_seconds": time.perf_counter() - t1}
        state = {**state, "epoch": epoch, "history": state["history"] + [record]}
        if proc.main:
            say(f"epoch {epoch}/{cfg.epochs}: train loss {record['train_loss']:.4f}, val loss {val_loss:.4f}, "
                f"val sample-F1 {record['val_sample_f1']:.4f} (0.5), mAP {record['val_map']:.4f}, "
                f"{train_seconds:.0f} s ({record['seconds_per_step']:.2f} s/step)")
            save_checkpoint(run_dir, trainer.model, trainer.optimizer, trainer.scaler, state, trainer.ema, keep)
            write_tables(run_dir, state)
            if tb is not None:
                for k, s in enumerate(state["steps"][first_step:], first_step + 1):
                    tb.scalars({"train/loss": s["loss"]}, k)
                tb.scalars({f"epoch/{k}": v for k, v in record.items() if k != "epoch"}, epoch)
        barrier(proc)
    return probs, state


@dataclass(frozen=True)
class Part:
    """The train or the validation part: rows of train.csv and their targets."""

    records: list[Record]
    y: np.ndarray


def split(dataset: Dataset, cfg: E2EConfig) -> tuple[Part, Part]:
    """fit-head's split (Split.of) with the config's split seed, and the nested train share it keeps."""
    y = dataset.targets()
    train_idx, val_idx = split_rows(dataset, cfg.val_fraction, cfg.split_seed)
    train_idx = train_idx[nested_share(len(train_idx), cfg.train_fraction, cfg.split_seed)]
    return (Part([dataset.train[i] for i in train_idx], y[train_idx]),
            Part([dataset.train[i] for i in val_idx], y[val_idx]))


@dataclass(frozen=True)
class Trainer:
    """The optimisation of one model: Adam (the image backbone in its own group, at image_lr), the
    grad scaler (fp16 only), the moving average. `scored` is what is validated and saved."""

    cfg: E2EConfig
    proc: Proc
    model: E2EModel
    net: nn.Module  # what the step calls: the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Adam
    base_lrs: list[float]  # the groups' peaks; a checkpoint's groups hold the last scaled lr
    scaler: torch.amp.GradScaler
    ema: ModelEmaV3 | None
    amp: torch.dtype | None

    @classmethod
    def start(cls, model: E2EModel, cfg: E2EConfig, proc: Proc, resume: str | Path | None) -> tuple[Trainer, dict]:
        """A fresh optimisation, or the one saved in the run's latest checkpoint; and its state."""
        params = [p for p in model.parameters() if p.requires_grad]
        image = {id(p) for enc in model.encoders if not enc.cfg.is_text for p in enc.parameters()}
        optimizer = torch.optim.Adam([{"params": [p for p in params if id(p) in image], "lr": cfg.image_lr or cfg.lr},
                                      {"params": [p for p in params if id(p) not in image], "lr": cfg.lr}], lr=cfg.lr)
        base_lrs = [g["lr"] for g in optimizer.param_groups]
        amp = autocast_dtype(cfg, proc.device)
        scaler = torch.amp.GradScaler(proc.device.type, enabled=amp == torch.float16)
        ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema_decay else None
        state = load_checkpoint(resume, model, optimizer, scaler, ema) if resume else \
            {"epoch": 0, "history": [], "steps": []}
        return cls(cfg, proc, model, parallel(model, proc), optimizer, base_lrs, scaler, ema, amp), state

    @property
    def scored(self) -> E2EModel:
        return self.ema.module if self.ema is not None else self.model

    @property
    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def epoch(self, epoch: int, loader, y: torch.Tensor, step_log: list[dict], say, log_every: int,
              progress: bool = False) -> tuple[float, int, int]:
        """One epoch (at most cfg.max_steps): (this rank's loss sum, rows, steps). Rank 0 appends
        each step's loss and seconds to step_log; `progress` draws a bar of the steps."""
        cfg, proc = self.cfg, self.proc
        # Seeded per epoch: a resumed run draws the same order, views and dropout as an uninterrupted one.
        torch.manual_seed(cfg.seed * 1009 + epoch)
        loader.sampler.set_epoch(epoch)
        loader.dataset.epoch = epoch
        self.net.train()
        total, seen, steps = 0.0, 0, min(len(loader), cfg.max_steps or len(loader))
        bar = tqdm(total=steps, desc=f"epoch {epoch}/{cfg.epochs}", unit="step", disable=not progress, leave=False)
        t0 = t_step = time.perf_counter()
        for step, (keys, inputs) in enumerate(readable(loader, proc.device), 1):
            # A function of the global step, so a resumed run continues the same curve.
            factor = lr_factor(cfg.schedule, (epoch - 1) * steps + step - 1, cfg.epochs * steps)
            for group, base in zip(self.optimizer.param_groups, self.base_lrs):
                group["lr"] = base * factor
            loss = self.step(inputs, y[keys].to(proc.device))
            total, seen = total + loss * len(keys), seen + len(keys)
            now = time.perf_counter()
            if proc.main:  # rank 0's own loss per step (the epoch mean covers every rank)
                step_log.append({"epoch": epoch, "step": step, "loss": loss, "seconds": now - t_step})
            bar.update()
            bar.set_postfix_str(f"loss {loss:.4f}")
            if not progress and (step % log_every == 0 or step == steps):  # the bar says the same
                say(f"rank {proc.rank} epoch {epoch} step {step}/{steps} loss {loss:.4f} {(now - t0) / step:.2f} s/step")
            t_step = now
            if step == steps:
                break
        bar.close()
        return total, seen, steps

    def step(self, inputs: list, y: torch.Tensor) -> float:
        with torch.autocast(self.proc.device.type, dtype=self.amp, enabled=self.amp is not None):
            loss = LOSSES[self.cfg.head.loss](self.net(inputs).float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model)
        return loss.item()


def lr_factor(schedule: str, step: int, total: int, warmup: float = 0.05) -> float:
    """The share of the peak lr at `step` (0-based) of `total`."""
    if schedule == "constant":
        return 1.0
    ramp = max(1, int(total * warmup))
    if step < ramp:
        return (step + 1) / ramp
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - ramp) / max(1, total - ramp))))
