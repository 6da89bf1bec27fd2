"""Stage 1's options: how a backbone is adapted (AdaptConfig) and how its features are extracted
(ExtractConfig). Frozen and checked when made; importable without torch (the command line builds
its options from these fields)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from featcache.options import DEVICE, ConfigError, check_fields, option
from featcache.workspace import cache_field


@dataclass(frozen=True)
class AdaptConfig:
    """Stage-1 adaptation: the backbone and a linear head trained on the train rows before extraction."""
    epochs: int = option(1, "Epochs.", range=(1, 1000))
    lr: float | None = option(None, "Peak learning rate (default: by modality, AdaptConfig.default_lr).",
                              range=(1e-9, 10.0))
    batch_size: int = option(32, "Rows per step.", range=(1, 65536))
    # The linear head starts from scratch: at the backbone's small lr it would take most of the
    # run just to learn the label priors, and the backbone would bend to make up for it.
    head_lr: float = option(1e-3, "The linear head's learning rate.", range=(1e-9, 10.0))
    weight_decay: float = option(0.01, "AdamW weight decay.", range=(0.0, 10.0))
    seed: int = option(0, "Split seed and training seed.", range=(0, None))
    val_fraction: float = option(0.2, "Share of the labelled rows held out.", range=(0.01, 0.99))
    freeze_bn: bool = option(True, "Keep BatchNorm running statistics as loaded (affine weights still train).")
    augment: bool = option(True, "Images: the study's flip / rotation / resized crop, a fresh draw each epoch.")

    def __post_init__(self):
        check_fields(self)

    @staticmethod
    def default_lr(is_text: bool) -> float:
        # Measured on the shared slice (text-only / image-only head, validation sample-F1):
        # minilm_l6 2e-5: 0.8669, 5e-5: 0.8678 (2 epochs), 1e-4: 0.8700 (3 epochs);
        # efficientnet_lite0 1e-4 (BN moving, no augmentation): 0.7996, 3e-5 (this recipe): 0.8275,
        # 1e-4 with this recipe's frozen BN and augmentation: 0.8296 (mAP 0.6799 vs 0.6801: a tie).
        return 1e-4 if is_text else 3e-5


@dataclass(frozen=True)
class ExtractConfig:
    cache: Path = cache_field()
    batch_size: int = option(32, "Items per forward pass.", range=(1, 65536))
    device: str = option("auto", "auto (a GPU when this machine has one), cpu, cuda or cuda:N.", pattern=DEVICE)
    num_workers: int | None = option(None, "DataLoader workers (default: images decode in max(1, min(4, cores - 1)) "
                                           "workers while the model runs; text 0).", range=(0, 64))
    threads: int | None = option(None, "Compute threads (default: all cores; torch's tuned batch by batch).",
                                 range=(1, 1024))
    backend: str = option("auto", "auto (the fastest measured on this machine), torch or openvino.",
                          choices=("auto", "torch", "openvino"))
    precision: str = option("auto", "auto (the fastest measured whose features match fp32), fp32, bf16 or fp16 (GPU).",
                            choices=("auto", "fp32", "bf16", "fp16"))
    views: int = option(0, "Also cache K augmented views of each train image.", range=(0, 64))
    image_size: int | None = option(None, "Override the encoder's input size (changes the fingerprint).", range=(8, 4096))
    force: bool = option(False, "Rebuild the cache even if one exists (one of another configuration, or damaged, "
                                "is refused without it).")
    weights: Path | None = option(None, "Weights file or Hugging Face directory (first in the lookup order).")
    pretrained: bool = option(True, "Pretrained weights (--random-init: random, for tests and speed measurements).",
                              flag="--pretrained/--random-init")
    lenient: bool = option(False, "Skip, count and report unreadable rows and images instead of failing.")
    shard: int | None = option(None, "Extract only shard I of --num-shards (default: $RANK under torchrun, else 0).",
                               range=(0, None))
    num_shards: int | None = option(None, "Contiguous blocks of rows; the last shard to finish merges them "
                                          "(default: $WORLD_SIZE under torchrun, else 1).", range=(1, None))
    adapt_epochs: int = option(0, "Adapt the backbone (with a linear head, train rows only) for this many epochs "
                                  "first; the cache is <encoder>_ft.", range=(0, 1000),
                                flag="--adapt-epochs --finetune-epochs")
    adapt_lr: float | None = option(None, "Adaptation's peak learning rate (default: by modality).",
                                    range=(1e-9, 10.0), flag="--adapt-lr --lr")
    adapt_freeze_bn: bool = option(True, "Adaptation keeps BatchNorm statistics as loaded.")
    adapt_augment: bool = option(True, "Adaptation draws the study's image augmentations.")
    dtype: str = option("float16", "Stored feature dtype.", choices=("float16", "float32"), cli=False)
    chunk_batches: int = option(8, "Batches per written chunk.", range=(1, None), cli=False)
    progress: bool = option(True, "A progress bar.", cli=False)

    def __post_init__(self):
        check_fields(self)
        # torchrun sets RANK and WORLD_SIZE; a plain run is shard 0 of 1
        shard = int(os.environ.get("RANK", 0)) if self.shard is None else self.shard
        num_shards = int(os.environ.get("WORLD_SIZE", 1)) if self.num_shards is None else self.num_shards
        if not 0 <= shard < num_shards:
            raise ConfigError(f"shard={shard}: not in 0..{num_shards - 1} (num_shards {num_shards}) (ExtractConfig)")
        object.__setattr__(self, "shard", shard)
        object.__setattr__(self, "num_shards", num_shards)

    def adapt(self, is_text: bool) -> AdaptConfig | None:
        """The adaptation asked for, with the modality's learning rate unless given; None without."""
        if not self.adapt_epochs:
            return None
        return AdaptConfig(epochs=self.adapt_epochs, lr=self.adapt_lr or AdaptConfig.default_lr(is_text),
                           batch_size=self.batch_size, freeze_bn=self.adapt_freeze_bn, augment=self.adapt_augment)
