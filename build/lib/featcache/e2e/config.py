"""What an end-to-end run trains: E2EConfig, checked when it is made (also when read back from a
run's config.json). The defaults are the best recipe measured on the shared slice
(docs/results.md, "End-to-end fine-tuning"): lite0 + MiniLM, late fusion with MLP classifiers,
BCE, Adam at 1e-4 with a cosine schedule, the image backbone at 5e-5 with its BatchNorm statistics
kept, the moving average of the weights (0.998), batch 16, 3 epochs, the study's augmentations.
Start it from a fitted stage-2 head (`init_head`); the study's own model was concat + linear with
a constant rate (`--fusion concat --classifier linear --schedule constant --no-freeze-bn --ema-decay 0`).

The head (fusion, classifier, loss, width, dropout) is heads.config.HeadArch, the same as stage
2's; a run's config.json stores the fields flat, as before (options.flat / options.from_flat).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from heads.config import HeadArch

from featcache.encoders.registry import get_cfg
from featcache.options import DEVICE, ConfigError, check_fields, from_flat, option
from featcache.workspace import runs_field

FREEZE = ("none", "image", "text", "image-early")
KEEP = ("last", "best", "all")


@dataclass(frozen=True)
class E2EConfig:
    image_encoder: str = option("efficientnet_lite0", "Image encoder: an alias (python cli.py encoders) or timm:<name>.")
    text_encoder: str = option("minilm_l6", "Text encoder: an alias or hf:<repo id or directory>.")
    head: HeadArch = option(factory=HeadArch, help="The fusion head (stage 2's HeadArch).")
    epochs: int = option(3, "Epochs; with --resume: the run's, or raise it.", range=(1, 100000))
    batch_size: int = option(16, "Rows per step per process (under torchrun the global batch is N x this).",
                             range=(1, 65536))
    lr: float = option(1e-4, "Adam learning rate.", range=(1e-9, 10.0))
    # Gentler on the image backbone (stage 1 measured lite0 at 1e-4 with moving BatchNorm statistics
    # losing 0.02 F1): its own lr, and BatchNorm statistics kept as loaded.
    image_lr: float | None = option(5e-5, "The image backbone's learning rate (none: --lr).", range=(1e-9, 10.0))
    freeze_bn: bool = option(True, "Keep the backbones' BatchNorm statistics as loaded.")
    schedule: str = option("cosine", "cosine (5% warm-up, cosine decay) or constant (the study's).",
                           choices=("constant", "cosine"))
    # > 0: validate, tune thresholds on and save the exponential moving average of the weights
    # (timm's ModelEmaV3, updated every step, starting from the loaded model) instead of the last step's.
    ema_decay: float = option(0.998, "Validate and save the moving average of the weights with this decay (0: the "
                                     "last step's).", range=(0.0, 0.99999), flag="--ema")
    freeze: tuple[str, ...] = option((), "Frozen parts: none, image, text, image-early (repeat or comma-separate).",
                                     choices=FREEZE)
    early_fraction: float = option(0.5, "image-early: share of the image backbone's tensors frozen, from the stem.",
                                   range=(0.0, 1.0))
    image_size: int | None = option(None, "Image side in pixels (default: the encoder's input size).", range=(8, 4096))
    pretrained: bool = option(True, "Pretrained weights (--random-init: random, for tests and timing).",
                              flag="--pretrained/--random-init")
    init_head: str | None = option(None, "Start from a fitted stage-2 head (run directory or id): its encoders, "
                                         "fusion and weights; the recipe that gave the best final model.")
    stats_rows: int = option(256, "Train rows whose features standardise a fresh head.", range=(1, None), cli=False)
    max_steps: int | None = option(None, "At most this many steps per epoch (tests, timing).", range=(0, None))
    precision: str = option("auto", "auto (bf16/fp16 autocast on CUDA, fp32 on CPU), fp32, bf16 or fp16.",
                            choices=("auto", "fp32", "bf16", "fp16"))
    channels_last: bool = option(True, "NHWC images (faster convolutions).")
    metric: str = option("samples", "What the final thresholds maximise.", choices=("samples", "micro", "macro"))
    threshold_mode: str = option("auto", "As fit-head: per-label thresholds overfit rare labels.",
                                 choices=("auto", "per-label", "shrunk", "global", "flat"), cli=False)
    val_fraction: float = option(0.2, "Share of the labelled rows held out for validation.", range=(0.01, 0.99), cli=False)
    # < 1: train on this share of the train rows, the first in a seed-ordered draw (fit-head
    # --train-fraction with the same seed keeps the same rows): a point of a learning curve.
    train_fraction: float = option(1.0, "Train on this share of the train rows (as fit-head --train-fraction).",
                                   range=(0.001, 1.0))
    seed: int = option(0, "The model's seed: initialisation, row order, augmentation, dropout.", range=(0, None))
    split_seed: int = option(0, "The train/validation split's seed, as fit-head's.", range=(0, None), cli=False)

    def __post_init__(self):
        items = (self.freeze,) if isinstance(self.freeze, str) else self.freeze
        object.__setattr__(self, "freeze", tuple(f for item in items for f in str(item).split(",") if f))
        check_fields(self)
        object.__setattr__(self, "freeze", tuple(f for f in self.freeze if f != "none"))
        for name, modality in (("image_encoder", "image"), ("text_encoder", "text")):
            # the registry knows a name's modality without resolving it (timm: is image, hf: text)
            if get_cfg(getattr(self, name)).modality != modality:
                raise ConfigError(f"{name}={getattr(self, name)!r}: not an {modality} encoder (E2EConfig)")

    @classmethod
    def from_dict(cls, d: dict) -> E2EConfig:
        """A config saved as JSON (a run's config.json, flat): lists back to tuples, unknown keys dropped."""
        d = {"split_seed": d.get("seed", 0), **d}  # runs saved before split_seed split with their seed
        names = set(cls.__dataclass_fields__) | set(HeadArch.__dataclass_fields__)
        return from_flat(cls, {k: tuple(v) if k == "freeze" else v for k, v in d.items() if k in names and k != "head"})


@dataclass(frozen=True)
class TrainOptions:
    """How an end-to-end run is carried out, not what it trains (none of it is in its config.json)."""
    runs: Path = runs_field()
    run_name: str | None = option(None, "Run directory name (default e2e-<image>-<text>-<time>).")
    device: str = option("auto", "auto (a GPU when this machine has one), cpu, cuda or cuda:N (under torchrun: "
                                 "cuda:LOCAL_RANK).", pattern=DEVICE)
    num_workers: int | None = option(None, "DataLoader workers (default: 0 on <= 2 cores per process, else 1).",
                                     range=(0, 64))
    threads: int | None = option(None, "torch threads per process (default: cores / processes, 1 if that is <= 2).",
                                 range=(1, 1024))
    keep: tuple[str, ...] = option(("best", "last"), "Checkpoints kept: last (resume continues after it), best (by "
                                                     "validation mAP), all.", choices=KEEP)
    track: str | None = option(None, "tensorboard: losses and metrics under the run's tensorboard/ folder (default: "
                                     "$FEATCACHE_TRACK; none: off).")
    log_every: int = option(20, "Without a progress bar (other ranks, or --no-progress), log every N steps.",
                            range=(1, None))
    progress: bool = option(True, "A progress bar of each epoch's steps (rank 0).")

    def __post_init__(self):
        check_fields(self)
        if not self.keep:
            raise ConfigError(f"keep=(): choose from {', '.join(KEEP)} (TrainOptions)")


def head_encoders(run_dir: str | Path) -> dict[str, str]:
    """image_encoder / text_encoder of a fitted stage-2 head (fit-head, ablate): the names its caches
    were extracted with, so `finetune --init-head RUN` needs no more. A one-encoder head names one."""
    path = Path(run_dir) / "config.json"
    try:
        saved = json.loads(path.read_text())
        names = saved.get("encoder_names") or [n.removesuffix("_ft") for n in saved["encoders"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a fit-head run's config.json ({type(e).__name__}: {e})") from None
    return {("text_encoder" if get_cfg(n).modality == "text" else "image_encoder"): n for n in names}
