"""End-to-end fine-tuning: both backbones and a stage-2 fusion head trained together on images
and captions (the seed's final model: EfficientNet + a BERT, concat fusion, BCE, Adam, batch 16,
lr 1e-4, 3 epochs, horizontal flip / rotation <= 10 deg / resize).

    train(E2EConfig(...), data_root, runs_dir) -> runs/e2e-<image>-<text>-<time>/

The head is stage 2's `HeadNet` (standardisation buffers + a fusion from heads/fusion.py), so a
head fitted on cached features (`init_head`) drops in unchanged: its buffers hold the cached
features' train mean/std and act as a fixed affine layer between backbone and fusion. Without
one, the buffers take the train statistics of the first `stats_rows` train rows.

Runs the same under `torchrun --nproc_per_node N`: DistributedDataParallel (gloo on CPU, nccl on
GPU), a DistributedSampler per rank, validation sharded and gathered so every rank sees all rows,
and rank 0 alone writes. Every epoch ends in a checkpoint (safetensors weights + optimizer state
loaded with weights_only=True); `resume` continues after the last one. Shuffling, augmentation
and dropout are seeded per epoch, so an interrupted and resumed run equals an uninterrupted one.

Run directory: config.json (kind "e2e"), model.safetensors, thresholds.json, metrics.json,
history.csv (per epoch: loss, validation metrics, seconds), steps.csv, loss.png, val_f1.png,
checkpoints/epoch-N/.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from heads.fusion import CLASSIFIERS, FUSIONS
from heads.losses import LOSSES
from heads.train import Head, HeadConfig, HeadNet

from .backbones import save_weights
from .data import DataError, Dataset, Record, load_dataset, write_submission
from .encoders import WeightsNotFound, create_encoder, get_cfg
from .extract import encoder_input
from .finetune import finetuned_weights
from .metrics import scores
from .split import nested_share, train_val_split
from .thresholds import Thresholds, fit_thresholds, threshold_report

FREEZE = ("image", "text", "image-early")
CHECKPOINTS = "checkpoints"


@dataclass(frozen=True)
class E2EConfig:
    image_encoder: str = "efficientnet_lite0"
    text_encoder: str = "minilm_l6"
    fusion: str = "concat"
    classifier: str = "linear"  # the seed's: concat, ReLU, dropout, linear
    width: int = 512
    dropout: float = 0.5
    loss: str = "bce"
    epochs: int = 3
    batch_size: int = 16  # per process: under torchrun the global batch is N x this
    lr: float = 1e-4
    # Options gentler on the image backbone (stage 1 measured lite0 at 1e-4 with moving BatchNorm
    # statistics losing 0.02 F1): its own lr, and BatchNorm statistics kept as loaded.
    image_lr: float | None = None  # None: lr
    freeze_bn: bool = False
    schedule: str = "constant"  # the seed's; cosine: 5% linear warm-up, then cosine decay to 0
    # > 0: validate, tune thresholds on and save the exponential moving average of the weights
    # (timm's ModelEmaV3, updated every step, starting from the loaded model) instead of the last step's.
    ema_decay: float = 0.0
    freeze: tuple[str, ...] = ()  # any of FREEZE
    early_fraction: float = 0.5  # image-early: this share of the image backbone's tensors, in forward order
    image_size: int | None = None  # None: the encoder's input size
    pretrained: bool = True
    init_head: str | None = None  # a stage-2 run directory (head.json + head.safetensors)
    stats_rows: int = 256  # train rows whose features standardise a fresh head
    max_steps: int | None = None  # per epoch, at most (tests, timing)
    precision: str = "auto"  # auto (bf16/fp16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    channels_last: bool = True
    metric: str = "samples"  # what the final thresholds maximise
    threshold_mode: str = "auto"  # as fit-head: per-label thresholds overfit rare labels
    val_fraction: float = 0.2
    # < 1: train on this share of the train rows, the first in a seed-ordered draw (fit-head
    # --train-fraction with the same seed keeps the same rows): a point of a learning curve.
    train_fraction: float = 1.0
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "freeze", tuple(f for f in self.freeze if f != "none"))
        for f in self.freeze:
            if f not in FREEZE:
                raise ValueError(f"--freeze {f!r}: choose from none, {', '.join(FREEZE)}")
        for name, table in (("fusion", FUSIONS), ("classifier", CLASSIFIERS), ("loss", LOSSES)):
            if getattr(self, name) not in table:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose from {', '.join(table)}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be constant or cosine, got {self.schedule!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0: off), got {self.ema_decay}")
        if not 0.0 < self.train_fraction <= 1.0:
            raise ValueError(f"train_fraction: a share of the train rows must be in (0, 1], got {self.train_fraction}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        for name, modality in (("image_encoder", "image"), ("text_encoder", "text")):
            if get_cfg(getattr(self, name)).modality != modality:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)!r} is not an {modality} encoder")

    @classmethod
    def from_dict(cls, d: dict) -> E2EConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if k == "freeze" else v for k, v in d.items() if k in names})


# --- processes -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Proc:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def start_processes(device: str = "auto", threads: int | None = None) -> Proc:
    """One process, or this rank of a torchrun job (WORLD_SIZE set): gloo on CPU, nccl on GPU."""
    world, rank, local = (int(os.environ.get(k, d)) for k, d in (("WORLD_SIZE", 1), ("RANK", 0), ("LOCAL_RANK", 0)))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(f"cuda:{local}" if device == "cuda" else device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    # Processes on one machine share its cores. With <= 2 cores per process, one thread: measured
    # here, while another process held a core, 2 OpenMP threads spin-waited to 13 s/step against
    # 2.8 s/step with one (efficientnet_lite0 + minilm_l6, batch 16, 224 px).
    per_process = (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))
    torch.set_num_threads(threads or (per_process if per_process > 2 else 1))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Proc(rank, world, dev)


def _gather(obj, proc: Proc) -> list:
    if proc.world == 1:
        return [obj]
    out = [None] * proc.world
    dist.all_gather_object(out, obj)
    return out


def _broadcast(obj, proc: Proc):
    if proc.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# --- data ----------------------------------------------------------------------------------------

class Rows(torch.utils.data.Dataset):
    """Row i -> (uint8 image [3, S, S], caption, target). With `augment`, each (epoch, row) draws
    its own seeded view (stage 1's augmentation: flip, rotation <= 10 deg, resized crop)."""

    def __init__(self, dataset: Dataset, records: list[Record], targets: np.ndarray | None, image_cfg, augment: bool,
                 seed: int = 0):
        self.dataset, self.records, self.image_cfg, self.augment, self.seed = dataset, records, image_cfg, augment, seed
        self.targets = torch.from_numpy(targets if targets is not None else np.zeros((len(records), 0), np.float32))
        self.epoch = 0  # set before each epoch's iterator: forked workers copy it

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        rec = self.records[i]
        view = ((self.seed * 1009 + self.epoch) * 1_000_003 + i) if self.augment else None
        image, error = encoder_input(self.dataset, self.image_cfg, rec, view)
        if error:  # names the file and its CSV row; a model trained around a missing photo is not the one asked for
            raise DataError(error)
        return i, image, rec.caption, self.targets[i]


def loader(rows: Rows, text_encoder, batch_size: int, proc: Proc, shuffle: bool, seed: int, num_workers: int):
    sampler = DistributedSampler(rows, num_replicas=proc.world, rank=proc.rank, shuffle=shuffle, seed=seed)

    def collate(items):
        idx, images, captions, y = zip(*items)
        return list(idx), [torch.stack(images), text_encoder.collate(list(captions))], torch.stack(y)

    return DataLoader(rows, batch_size=batch_size, sampler=sampler, collate_fn=collate, num_workers=num_workers,
                      pin_memory=proc.device.type == "cuda")


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return torch.sigmoid(torch.from_numpy(logits)).numpy()


def _to(x, device):
    return {k: v.to(device, non_blocking=True) for k, v in x.items()} if isinstance(x, dict) else x.to(device, non_blocking=True)


# --- model ---------------------------------------------------------------------------------------

class E2EModel(nn.Module):
    """Encoders (in the head's input order) -> stage 2's HeadNet -> logits."""

    def __init__(self, encoders: list[nn.Module], head: HeadNet, freeze_bn: bool = False):
        super().__init__()
        self.encoders, self.head, self.freeze_bn = nn.ModuleList(encoders), head, freeze_bn

    def features(self, inputs: list) -> list[torch.Tensor]:
        xs = []
        for enc, x in zip(self.encoders, inputs):
            # A frozen encoder runs without autograd: no activations kept, no backward through it.
            with torch.set_grad_enabled(torch.is_grad_enabled() and any(p.requires_grad for p in enc.parameters())):
                xs.append(enc(x).float())
        return xs

    def forward(self, inputs: list) -> torch.Tensor:
        return self.head(self.features(inputs))

    def train(self, mode: bool = True) -> E2EModel:
        """Frozen parts stay in eval mode: their batch-norm statistics and dropout stay fixed; with
        freeze_bn every batch-norm layer keeps its statistics (its affine weights still train)."""
        super().train(mode)
        if mode:
            for m in self.encoders.modules():
                params = list(m.parameters())  # a whole frozen encoder, or a frozen early layer
                if params and not any(p.requires_grad for p in params):
                    m.eval()
                elif self.freeze_bn and isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self


def with_init_head(cfg: E2EConfig, num_labels: int) -> tuple[E2EConfig, list[str], HeadNet | None, dict[str, Path]]:
    """A stage-2 head to start from: its fusion settings go into the config (so the run records the
    model it trains) and its input order into the encoder order (a head may take text first).
    A head fitted on a stage-1 fine-tuned cache (`<encoder>_ft`) starts with that fine-tuned
    backbone (the last item: encoder -> weights file): its standardisation and weights were fitted
    to those features, not to the base backbone's."""
    if not cfg.init_head:
        return cfg, [cfg.image_encoder, cfg.text_encoder], None, {}
    head = Head.load(cfg.init_head)
    saved = _head_config(Path(cfg.init_head))
    order = [name.removesuffix("_ft") for name in saved["encoders"]]
    if sorted(order) != sorted([cfg.image_encoder, cfg.text_encoder]) or head.net.num_labels != num_labels:
        raise ValueError(f"--init-head {cfg.init_head}: a head over {order} with {head.net.num_labels} labels does not "
                         f"fit {cfg.image_encoder} + {cfg.text_encoder} with {num_labels} labels")
    # The head trained on the train rows of fit-head's split (Split.of: seed split_seed, 20% held
    # out). Another split would put rows the head trained on into this run's validation rows.
    if (cfg.seed, cfg.val_fraction) != (saved.get("split_seed", 0), 0.2):
        raise ValueError(f"--init-head {cfg.init_head}: its head was fitted on split seed {saved.get('split_seed', 0)} "
                         f"(20% validation); --seed {cfg.seed} / val_fraction {cfg.val_fraction} would validate on rows "
                         f"it trained on")
    # A learning-curve point trained from a head that saw more rows would not measure its share.
    if saved.get("train_fraction", 1.0) != cfg.train_fraction:
        raise ValueError(f"--init-head {cfg.init_head}: its head was fitted on {saved.get('train_fraction', 1.0):g} of "
                         f"the train rows, this run trains on {cfg.train_fraction:g}; fit the head with "
                         f"fit-head --train-fraction {cfg.train_fraction:g}")
    weights = {}
    for name in saved["encoders"]:
        if name.endswith("_ft"):
            if name not in saved.get("caches", {}):
                raise ValueError(f"--init-head {cfg.init_head}: fitted on {name}, but its config.json does not say "
                                 f"which cache directory (written before featcache recorded it); fit the head again")
            weights[name.removesuffix("_ft")] = finetuned_weights(Path(saved["caches"][name]).parent, name,
                                                                 saved["fingerprints"][name])
    hc = head.cfg
    with torch.no_grad():
        floor_std(head.net)
    return replace(cfg, fusion=hc.fusion, classifier=hc.classifier, width=hc.width, dropout=hc.dropout), order, \
        head.net, weights


def build_model(cfg: E2EConfig, num_labels: int, order: list[str], head: HeadNet | None = None,
                weights: dict[str, Path] | None = None) -> E2EModel:
    """`weights`: encoder -> a weights file to start from instead of its pretrained source."""
    encoders = []
    for name in order:
        enc_cfg = get_cfg(name)
        if cfg.image_size and not enc_cfg.is_text:
            enc_cfg = replace(enc_cfg, input_size=cfg.image_size)
        encoders.append(create_encoder(enc_cfg, pretrained=cfg.pretrained, weights=(weights or {}).get(name)))
    if head is None:
        head = HeadNet([e.embed_dim for e in encoders], num_labels,
                       HeadConfig(fusion=cfg.fusion, classifier=cfg.classifier, loss=cfg.loss, width=cfg.width,
                                  dropout=cfg.dropout))
    head.bf16 = False  # precision is this module's choice (cfg.precision), on any device
    model = E2EModel(encoders, head, cfg.freeze_bn)
    for enc in model.encoders:
        if cfg.channels_last and not enc.cfg.is_text:
            enc.to_channels_last()
        if enc.cfg.modality in cfg.freeze:
            enc.requires_grad_(False)
        elif "image-early" in cfg.freeze and not enc.cfg.is_text:
            params = list(enc.parameters())  # registration order: stem first, last stage last
            for p in params[:int(len(params) * cfg.early_fraction)]:
                p.requires_grad_(False)
    return model


def _head_config(run_dir: Path) -> dict:
    """A stage-2 run's config.json: "encoders", the cache names its head was fitted on, in input
    order, and "split_seed"."""
    try:
        saved = json.loads((run_dir / "config.json").read_text())
        return {**saved, "encoders": list(saved["encoders"])}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{run_dir}: not a fit-head run directory (config.json with 'encoders': {e})") from None


@torch.no_grad()
def standardise(model: E2EModel, rows: Rows, text_encoder, n: int, device) -> None:
    """A fresh head's buffers take the mean/std of n train rows' clean features, as stage 2 does.
    In train mode: batch-norm layers that will train normalise with batch statistics, and the head
    must see the features they produce (for a random-init backbone, eval-mode features differ
    wildly). Frozen parts stay in eval mode (see E2EModel.train)."""
    model.train()
    sub = Rows(rows.dataset, rows.records[:n], None, rows.image_cfg, augment=False)
    feats = [[] for _ in model.encoders]
    for _, inputs, _ in loader(sub, text_encoder, 32, Proc(device=device), False, 0, 0):
        for f, x in zip(feats, model.features([_to(x, device) for x in _order(inputs, model)])):
            f.append(x)
    for i, f in enumerate(feats):
        x = torch.cat(f)
        getattr(model.head, f"mean{i}").copy_(x.mean(0))
        getattr(model.head, f"std{i}").copy_(x.std(0))
    floor_std(model.head)


def floor_std(head: HeadNet, share: float = 0.1) -> None:
    """No feature's std below `share` x the median: a dimension that is (nearly) constant before
    fine-tuning (a dead unit, or a random-init net in eval mode) may move once the backbone trains,
    and dividing it by ~0 would blow the logits up. Near-constant dims contribute ~0 either way."""
    for i in range(len(head.dims)):
        std = getattr(head, f"std{i}")
        std.clamp_(min=max(float(std.median()) * share, 1e-6))


def _order(inputs: list, model: E2EModel) -> list:
    """Batches come as [images, captions]; the head may want text first."""
    return inputs if not model.encoders[0].cfg.is_text else inputs[::-1]


def autocast_dtype(cfg: E2EConfig, device: torch.device) -> torch.dtype | None:
    if cfg.precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.precision]


# --- training ------------------------------------------------------------------------------------

def train(cfg: E2EConfig | None, data: str | Path | None, runs: str | Path = "runs", resume: str | Path | None = None,
          epochs: int | None = None, run_name: str | None = None, device: str = "auto", num_workers: int | None = None,
          threads: int | None = None, log_every: int = 20, log=None) -> Path:
    """Train an end-to-end run, or resume one (cfg and data then come from the run; `epochs` may
    raise its epoch count). Returns the run directory."""
    proc = start_processes(device, threads)
    say = log or (lambda m: print(m, file=sys.stderr, flush=True))
    if resume:
        run_dir = Path(resume)
        saved = json.loads((run_dir / "config.json").read_text())
        cfg = replace(E2EConfig.from_dict(saved["config"]), epochs=epochs or saved["config"]["epochs"])
        data = data or saved["data"]
    else:
        name = run_name or f"e2e-{cfg.image_encoder}-{cfg.text_encoder}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = Path(runs) / _broadcast(name, proc)
    dataset = load_dataset(data)
    y_all = dataset.targets()
    train_idx, val_idx = train_val_split(y_all, cfg.val_fraction, cfg.seed)
    train_idx = train_idx[nested_share(len(train_idx), cfg.train_fraction, cfg.seed)]
    torch.manual_seed(cfg.seed)
    if resume:  # the saved config already holds the init head's settings; the checkpoint its weights
        order, head, weights = saved["encoders"], None, {}
    else:
        cfg, order, head, weights = with_init_head(cfg, dataset.label_space.num_labels)
    model = build_model(cfg, dataset.label_space.num_labels, order, head, weights)
    image_enc = next(e for e in model.encoders if not e.cfg.is_text)
    text_enc = next(e for e in model.encoders if e.cfg.is_text)
    model.to(proc.device)
    train_rows = Rows(dataset, [dataset.train[i] for i in train_idx], y_all[train_idx], image_enc.cfg, True, cfg.seed)
    val_rows = Rows(dataset, [dataset.train[i] for i in val_idx], y_all[val_idx], image_enc.cfg, False)
    if not cfg.init_head and not resume:
        standardise(model, train_rows, text_enc, cfg.stats_rows, proc.device)
    params = [p for p in model.parameters() if p.requires_grad]
    image_params = {id(p) for p in image_enc.parameters()}
    optimizer = torch.optim.Adam([{"params": [p for p in params if id(p) in image_params], "lr": cfg.image_lr or cfg.lr},
                                  {"params": [p for p in params if id(p) not in image_params], "lr": cfg.lr}], lr=cfg.lr)
    base_lrs = [g["lr"] for g in optimizer.param_groups]  # peaks; a checkpoint's groups hold the last scaled lr
    amp = autocast_dtype(cfg, proc.device)
    scaler = torch.amp.GradScaler(proc.device.type, enabled=amp == torch.float16)
    ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema_decay else None
    scored = ema.module if ema is not None else model  # what is validated, thresholded and saved
    state = {"epoch": 0, "history": [], "steps": []}
    if resume:
        state = load_checkpoint(run_dir, model, optimizer, scaler, ema)
        say(f"{run_dir}: resuming after epoch {state['epoch']} of {cfg.epochs}")
    elif proc.main:
        run_dir.mkdir(parents=True, exist_ok=False)
        config = {"kind": "e2e", "config": asdict(cfg), "encoders": order, "num_labels": dataset.label_space.num_labels,
                  "label_ids": list(dataset.label_space.ids), "data": str(dataset.root), "world_size": proc.world,
                  "train_rows": len(train_idx), "validation_rows": len(val_idx),
                  "init_weights": {name: str(path) for name, path in weights.items()},
                  "trainable_params": sum(p.numel() for p in params),
                  "total_params": sum(p.numel() for p in model.parameters())}
        (run_dir / "config.json").write_text(json.dumps(config, indent=1))
    net = nn.parallel.DistributedDataParallel(model, device_ids=[proc.device.index] if proc.device.type == "cuda" else None) \
        if proc.world > 1 else model
    workers = (0 if os.cpu_count() <= 2 * proc.world else 1) if num_workers is None else num_workers
    train_loader = loader(train_rows, text_enc, cfg.batch_size, proc, True, cfg.seed, workers)
    val_loader = loader(val_rows, text_enc, 2 * cfg.batch_size, proc, False, cfg.seed, workers)
    loss_fn = LOSSES[cfg.loss]
    y_val, probs = y_all[val_idx], None
    say(f"rank {proc.rank}/{proc.world}: {len(train_rows)} train rows ({len(train_loader)} steps/epoch), "
        f"{len(val_rows)} validation rows, {sum(p.numel() for p in params) / 1e6:.1f}M trainable parameters, "
        f"{proc.device}, {torch.get_num_threads()} threads, amp {amp}, {workers} workers")
    for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
        # Seeded per epoch: a resumed run draws the same order, views and dropout as an uninterrupted one.
        torch.manual_seed(cfg.seed * 1009 + epoch)
        train_loader.sampler.set_epoch(epoch)
        train_rows.epoch = epoch
        net.train()
        t0 = t_step = time.perf_counter()
        total, n_seen, steps = 0.0, 0, min(len(train_loader), cfg.max_steps or len(train_loader))
        for step, (_, inputs, y) in enumerate(train_loader, 1):
            # A function of the global step, so a resumed run continues the same curve.
            factor = lr_factor(cfg.schedule, (epoch - 1) * steps + step - 1, cfg.epochs * steps)
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * factor
            with torch.autocast(proc.device.type, dtype=amp, enabled=amp is not None):
                loss = loss_fn(net([_to(x, proc.device) for x in _order(inputs, model)]).float(), y.to(proc.device))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if ema is not None:
                ema.update(model)
            total, n_seen = total + loss.item() * len(y), n_seen + len(y)
            now = time.perf_counter()
            if proc.main:  # rank 0's own loss per step (the epoch mean below covers every rank)
                state["steps"].append({"epoch": epoch, "step": step, "loss": loss.item(), "seconds": now - t_step})
            if step % log_every == 0 or step == steps:
                say(f"rank {proc.rank} epoch {epoch} step {step}/{steps} loss {loss.item():.4f} "
                    f"{(now - t0) / step:.2f} s/step")
            t_step = now
            if step == steps:
                break
        train_seconds = time.perf_counter() - t0
        sums = torch.tensor([total, n_seen], dtype=torch.float64)
        if proc.world > 1:
            dist.all_reduce(sums)
        t1 = time.perf_counter()
        logits = evaluate(scored, val_loader, proc, amp, len(val_rows))
        probs = _sigmoid(logits)
        val_loss = float(LOSSES["bce"](torch.from_numpy(logits), torch.from_numpy(y_val)))
        record = {"epoch": epoch, "steps": steps, "train_loss": float(sums[0] / sums[1]), "val_loss": val_loss,
                  **{f"val_{k}": v for k, v in scores(y_val, probs).items()},
                  "train_seconds": train_seconds, "seconds_per_step": train_seconds / steps,
                  "images_per_s": float(sums[1]) / train_seconds, "val_seconds": time.perf_counter() - t1}
        state = {**state, "epoch": epoch, "history": state["history"] + [record]}
        if proc.main:
            say(f"epoch {epoch}/{cfg.epochs}: train loss {record['train_loss']:.4f}, val loss {val_loss:.4f}, "
                f"val sample-F1 {record['val_sample_f1']:.4f} (0.5), mAP {record['val_map']:.4f}, "
                f"{train_seconds:.0f} s ({record['seconds_per_step']:.2f} s/step)")
            save_checkpoint(run_dir, model, optimizer, scaler, state, ema)
            write_tables(run_dir, state)
        if proc.world > 1:
            dist.barrier()
    if probs is None:  # resumed after the last epoch: only the final step was left
        probs = _sigmoid(evaluate(scored, val_loader, proc, amp, len(val_rows)))
    if proc.main:
        finish(run_dir, scored, cfg, y_val, probs, state, say)
    if proc.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return run_dir


def lr_factor(schedule: str, step: int, total: int, warmup: float = 0.05) -> float:
    """The share of the peak lr at `step` (0-based) of `total`."""
    if schedule == "constant":
        return 1.0
    ramp = max(1, int(total * warmup))
    if step < ramp:
        return (step + 1) / ramp
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - ramp) / max(1, total - ramp))))


@torch.no_grad()
def evaluate(model: E2EModel, val_loader, proc: Proc, amp, n: int) -> np.ndarray:
    """Logits for all n rows: each rank scores its shard, every rank gets the gathered whole."""
    model.eval()
    idx, out = [], []
    for i, inputs, _ in val_loader:
        with torch.autocast(proc.device.type, dtype=amp, enabled=amp is not None):
            out.append(model([_to(x, proc.device) for x in _order(inputs, model)]).float().cpu())
        idx += i
    logits = np.zeros((n, model.head.num_labels), np.float32)
    for i, x in _gather((idx, torch.cat(out).numpy() if out else None), proc):
        if i:
            logits[i] = x  # the sampler pads a shard with repeated rows: same row, same logits
    return logits


def finish(run_dir: Path, model: E2EModel, cfg: E2EConfig, y_val: np.ndarray, probs: np.ndarray, state: dict, say) -> None:
    """Final weights, thresholds re-tuned on the validation rows (stage 2's code), metrics."""
    save_weights(model, run_dir / "model.safetensors")
    th = fit_thresholds(y_val, probs, cfg.metric, cfg.threshold_mode)
    th.save(run_dir / "thresholds.json")
    metrics = {**threshold_report(y_val, probs, th, cfg.metric, cfg.threshold_mode),  # laid out as stage 2's
               "n_val": len(y_val), "epochs": state["epoch"], "history": state["history"]}
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    say(f"{run_dir}: validation sample-F1 {metrics['at_0.5']['sample_f1']:.4f} at 0.5, "
        f"{metrics['tuned']['sample_f1']:.4f} with tuned thresholds ({metrics['tuned_out_of_fold']:.4f} out of fold)")


# --- checkpoints, tables, plots ------------------------------------------------------------------

def save_checkpoint(run_dir: Path, model, optimizer, scaler, state: dict, ema=None) -> Path:
    """checkpoints/epoch-N/ is written beside the old one and renamed into place: a kill at any
    moment leaves the previous checkpoint intact. Older checkpoints are then removed."""
    root = run_dir / CHECKPOINTS
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
    for old in root.glob("epoch-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path:
    done = sorted(Path(run_dir, CHECKPOINTS).glob("epoch-*"), key=lambda p: int(p.name.split("-")[1]))
    if not done:
        raise FileNotFoundError(f"{run_dir}: no checkpoint to resume from (checkpoints/epoch-N/)")
    return done[-1]


def load_checkpoint(run_dir: Path, model, optimizer=None, scaler=None, ema=None) -> dict:
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


def write_tables(run_dir: Path, state: dict) -> None:
    """history.csv / steps.csv and the seed's figures: training loss, validation F1 per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import polars as pl

    hist, steps = pl.DataFrame(state["history"]), pl.DataFrame(state["steps"])
    hist.write_csv(run_dir / "history.csv")
    steps.write_csv(run_dir / "steps.csv")
    fig, ax = plt.subplots(figsize=(6, 4))
    per_epoch = steps.group_by("epoch").agg(pl.len().alias("n")).sort("epoch")
    offset = dict(zip(per_epoch["epoch"], np.cumsum([0] + per_epoch["n"].to_list()[:-1])))
    x = [offset[e] + s for e, s in zip(steps["epoch"], steps["step"])]
    ax.plot(x, steps["loss"], lw=0.6, alpha=0.5, label="per step")
    ax.plot([offset[e] + n for e, n in zip(per_epoch["epoch"], per_epoch["n"])], hist["train_loss"], "o-",
            label="epoch mean (train)")
    ax.plot([offset[e] + n for e, n in zip(per_epoch["epoch"], per_epoch["n"])], hist["val_loss"], "s--",
            label="validation")
    ax.set(xlabel="step", ylabel="BCE loss", title="Training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "loss.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(hist["epoch"], hist["val_sample_f1"], "o-", label="sample-F1 (0.5)")
    ax.plot(hist["epoch"], hist["val_map"], "s--", label="mAP")
    ax.set(xlabel="epoch", ylabel="validation score", title="Validation F1 per epoch", xticks=hist["epoch"].to_list())
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "val_f1.png", dpi=100)
    plt.close(fig)


# --- prediction ----------------------------------------------------------------------------------

def is_e2e_run(run_dir: str | Path) -> bool:
    path = Path(run_dir) / "config.json"
    return path.exists() and json.loads(path.read_text()).get("kind") == "e2e"


def load_run(run_dir: str | Path, device: str = "cpu") -> tuple[E2EModel, E2EConfig, Thresholds]:
    run_dir = Path(run_dir)
    if not (run_dir / "model.safetensors").exists():
        raise ValueError(f"{run_dir}: no model.safetensors: the run has not finished (finetune --resume {run_dir})")
    saved = json.loads((run_dir / "config.json").read_text())
    cfg = E2EConfig.from_dict(saved["config"])
    try:
        model = build_model(cfg, saved["num_labels"], saved["encoders"])
    except WeightsNotFound:  # the weights file overwrites every tensor: a random skeleton is enough
        model = build_model(replace(cfg, pretrained=False), saved["num_labels"], saved["encoders"])
    model.load_state_dict(load_file(str(run_dir / "model.safetensors")))
    return model.to(device).eval(), cfg, Thresholds.load(run_dir / "thresholds.json")


def predict_run(run_dir: str | Path, dataset: Dataset, out: str | Path, device: str = "auto") -> Path:
    """`predict` for an e2e run: ImageID,Labels for every test row, in order, >= 1 label each."""
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    probs = predict_proba(run_dir, dataset, device=device)
    preds = Thresholds.load(Path(run_dir) / "thresholds.json").apply(probs)  # finish() fits with fallback: >= 1 label each
    write_submission(out, [r.image_id for r in dataset.test], dataset.label_space.decode(preds))
    return Path(out)


def predict_proba(run_dir: str | Path, dataset: Dataset, records: list[Record] | None = None, batch_size: int = 32,
                  device: str = "cpu", num_workers: int = 0) -> np.ndarray:
    """Probabilities [len(records), L] (default: the test rows), in the records' order."""
    label_ids = json.loads((Path(run_dir) / "config.json").read_text())["label_ids"]
    if list(dataset.label_space.ids) != label_ids:
        raise ValueError(f"{run_dir}: trained on labels {label_ids}, dataset {dataset.root} has {list(dataset.label_space.ids)}")
    model, cfg, _ = load_run(run_dir, device)
    records = dataset.test if records is None else records
    image_cfg = next(e for e in model.encoders if not e.cfg.is_text).cfg
    text_enc = next(e for e in model.encoders if e.cfg.is_text)
    rows = Rows(dataset, records, None, image_cfg, augment=False)
    proc = Proc(device=torch.device(device))
    logits = evaluate(model, loader(rows, text_enc, batch_size, proc, False, 0, num_workers), proc,
                      autocast_dtype(cfg, proc.device), len(rows))
    return _sigmoid(logits)
