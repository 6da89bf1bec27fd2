"""Stage 2's options: a fit (FitConfig: a head, the share of rows it trains on, how its thresholds
are tuned), the ablation (AblateConfig) and learning curves (CurveConfig). Frozen, checked when
made, importable without torch: the command line builds its options from these fields."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from heads.config import HeadConfig, fusion_names

from featcache.options import check_fields, option
from featcache.workspace import cache_field, runs_field

METRICS = ("samples", "micro", "macro")
THRESHOLD_MODES = ("auto", "per-label", "shrunk", "global", "flat")
FRACTIONS = (0.0625, 0.125, 0.25, 0.5, 1.0)


def _metric():
    return option("samples", "What the thresholds maximise: sample, micro or macro F1.", choices=METRICS)


def _threshold_mode():
    return option("auto", "auto (the best out of fold on the validation rows), per-label, shrunk, global or flat (0.5).",
                  choices=THRESHOLD_MODES)


def _jobs():
    return option(None, "Fits at a time, one process each, sharing the features (default: the machine's cores; the "
                        "table is the same for any value).", range=(1, 1024))


@dataclass(frozen=True)
class FitConfig:
    head: HeadConfig = option(factory=HeadConfig, help="The head and how it is trained.")
    train_fraction: float = option(1.0, "Train on this share of the train rows (seeded by the split; learning curves).",
                                   range=(0.001, 1.0))
    metric: str = _metric()
    threshold_mode: str = _threshold_mode()
    cache: Path = cache_field()
    runs: Path = runs_field()

    def __post_init__(self):
        check_fields(self)


@dataclass(frozen=True)
class AblateConfig:
    fusions: tuple[str, ...] | None = option(None, "Fusions to compare, comma-separated (default: all).",
                                             choices=fusion_names)
    seeds: int = option(3, "Head seeds per configuration (mean and spread).", range=(1, 1000))
    grid: str | None = option(None, "seed: add the seed report's batch/lr/epoch grids (featcache/stage2/ablate.py).",
                              choices=("seed",))
    metric: str = _metric()
    threshold_mode: str = _threshold_mode()
    out: Path | None = option(None, "Output directory (default <runs>/ablate-<time>).")
    track: str | None = option(None, "tensorboard: each fit's epochs and metrics under <out>/tensorboard "
                                     "(default: $FEATCACHE_TRACK; none: off).")
    jobs: int | None = _jobs()
    cache: Path = cache_field()
    runs: Path = runs_field()

    def __post_init__(self):
        check_fields(self)


@dataclass(frozen=True)
class CurveConfig:
    fusion: str | None = option(None, "Fusion of a multi-encoder curve (as fit-head; default late).",
                                choices=fusion_names)
    fractions: tuple[float, ...] = option(FRACTIONS, "Shares of the train rows, comma-separated, nested per seed.",
                                          range=(0.0001, 1.0))
    seeds: int = option(3, "Row orders (and head seeds) per point: mean and spread.", range=(1, 1000))
    extrapolate: tuple[int, ...] = option((24_000,), "Row counts to extend the fitted power law to, comma-separated.",
                                          range=(1, None))
    target: float | None = option(None, "Draw this sample-F1 as a line on the chart.", range=(0.0, 1.0))
    metric: str = _metric()
    threshold_mode: str = _threshold_mode()
    out: Path | None = option(None, "Output directory (default <runs>/curve-<time>).")
    jobs: int | None = _jobs()
    cache: Path = cache_field()
    runs: Path = runs_field()

    def __post_init__(self):
        check_fields(self)
