"""What an end-to-end run trains: E2EConfig, validated when it is made (also when read back
from a run's config.json). The defaults are the best recipe measured on the shared slice
(docs/results.md, "End-to-end fine-tuning"): lite0 + MiniLM, late fusion with MLP classifiers,
BCE, Adam at 1e-4 with a cosine schedule, the image backbone at 5e-5 with its BatchNorm statistics
kept, the moving average of the weights (0.998), batch 16, 3 epochs, the study's augmentations.
Start it from a fitted stage-2 head (`init_head`); the study's own model was concat + linear with
a constant rate (`--fusion concat --classifier linear --schedule constant --no-freeze-bn --ema 0`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

from featcache.encoders.registry import get_cfg

FREEZE = ("image", "text", "image-early")
SCHEDULES = ("constant", "cosine")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class E2EConfig:
    image_encoder: str = "efficientnet_lite0"  # any registry name: an alias, timm:... or hf:...
    text_encoder: str = "minilm_l6"
    fusion: str = "late"
    classifier: str = "mlp"
    width: int = 512
    dropout: float = 0.5
    loss: str = "bce"
    epochs: int = 3
    batch_size: int = 16  # per process: under torchrun the global batch is N x this
    lr: float = 1e-4
    # Options gentler on the image backbone (stage 1 measured lite0 at 1e-4 with moving BatchNorm
    # statistics losing 0.02 F1): its own lr, and BatchNorm statistics kept as loaded.
    image_lr: float | None = 5e-5  # None: lr
    freeze_bn: bool = True
    schedule: str = "cosine"  # 5% linear warm-up, then cosine decay to 0; or constant (the study's)
    # > 0: validate, tune thresholds on and save the exponential moving average of the weights
    # (timm's ModelEmaV3, updated every step, starting from the loaded model) instead of the last step's.
    ema_decay: float = 0.998
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
    seed: int = 0  # the model's: initialisation, row order, augmentation, dropout
    split_seed: int = 0  # the train/validation split's, as fit-head's (always 0 there)

    def __post_init__(self):
        # Imported here, not at the top: the CLI reads this class's defaults for its help texts
        # without loading torch (which the heads' tables bring).
        from heads.fusion import CLASSIFIERS, FUSIONS
        from heads.losses import LOSSES

        object.__setattr__(self, "freeze", tuple(f for f in self.freeze if f != "none"))
        for f in self.freeze:
            if f not in FREEZE:
                raise ValueError(f"--freeze {f!r}: choose from none, {', '.join(FREEZE)}")
        for name, table in (("fusion", FUSIONS), ("classifier", CLASSIFIERS), ("loss", LOSSES)):
            if getattr(self, name) not in table:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose from {', '.join(table)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be {' or '.join(SCHEDULES)}, got {self.schedule!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0: off), got {self.ema_decay}")
        if not 0.0 < self.train_fraction <= 1.0:
            raise ValueError(f"train_fraction: a share of the train rows must be in (0, 1], got {self.train_fraction}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name, modality in (("image_encoder", "image"), ("text_encoder", "text")):
            # the registry knows a name's modality without resolving it (timm: is image, hf: text)
            if get_cfg(getattr(self, name)).modality != modality:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)!r} is not an {modality} encoder")

    @classmethod
    def from_dict(cls, d: dict) -> E2EConfig:
        """A config saved as JSON (a run's config.json): lists back to tuples, unknown keys dropped."""
        names = {f.name for f in fields(cls)}
        d = {"split_seed": d.get("seed", 0), **d}  # runs saved before split_seed split with their seed
        return cls(**{k: tuple(v) if k == "freeze" else v for k, v in d.items() if k in names})


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

