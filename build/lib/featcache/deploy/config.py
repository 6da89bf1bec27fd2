"""Deployment's options: an export (ExportConfig) and a prediction file (PredictConfig). Frozen,
checked when made, importable without torch (the command line builds its options from them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from featcache.options import ConfigError, check_fields, option
from featcache.workspace import runs_field

FORMATS = {"openvino": ("fp32", "fp16", "int8"), "onnx": ("fp32",)}
PRECISIONS = ("fp32", "fp16", "int8")  # most precise first: a budget takes the first that fits


@dataclass(frozen=True)
class ExportConfig:
    format: str = option("openvino", "openvino (fp32, fp16, int8) or onnx (fp32).", choices=tuple(FORMATS))
    precision: str = option("auto", "auto (fp32; with --budget-mb the most precise that fits), fp32, fp16 or int8.",
                            choices=("auto", *PRECISIONS))
    budget_mb: float | None = option(None, "Size budget in MB (10^6 bytes): the most precise of fp32 > fp16 > int8 "
                                           "whose files fit.", range=(0.001, None))
    calibration_rows: int = option(300, "int8: train rows of the run's split to calibrate on.", range=(1, 100000))
    calibration_seed: int = option(0, "int8: which train rows.", range=(0, None), cli=False)
    validate: bool = option(True, "With data: score the exported model on the run's validation rows.", cli=False)
    force: bool = option(False, "Over a previous export that holds other files too: replace only the files it "
                                "lists, keep the rest.")
    runs: Path = runs_field()

    def __post_init__(self):
        check_fields(self)
        if self.precision != "auto" and self.precision not in FORMATS[self.format]:
            supported = "; ".join(f"format {f}: {', '.join(p)}" for f, p in FORMATS.items())
            raise ConfigError(f"precision={self.precision!r}: not with format {self.format!r} ({supported}; half and "
                              f"int8 weights are OpenVINO's) (ExportConfig)")

    def candidates(self) -> tuple[str, ...]:
        """The precisions to try, most precise first."""
        if self.precision != "auto":
            return (self.precision,)
        return FORMATS[self.format] if self.budget_mb is not None else ("fp32",)


@dataclass(frozen=True)
class PredictConfig:
    out: Path = option(Path("submission.csv"), "CSV (or .parquet): the id column and the labels, as the data writes "
                                               "them (COMP5329: the Kaggle submission ImageID,Labels).")
    proba: bool = option(False, "Add one probability column per label.")

    def __post_init__(self):
        check_fields(self)
