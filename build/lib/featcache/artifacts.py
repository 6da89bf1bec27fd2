"""Every artifact featcache reads back is checked against a schema declared here, once.

    config = read_json(run / "config.json", RunConfig)          # dict, or ArtifactError
    metrics = read_json(run / "metrics.json", Metrics)
    read_json(run / "thresholds.json", ThresholdsFile, labels=18)  # lengths equal to the label count
    check_head(run, config)                                       # head.safetensors' sha256 as recorded

A file that does not match (truncated, another type, a key missing, NaN where a score belongs, a
list of the wrong length) is an `ArtifactError`: one line naming the file and what is wrong,
never a KeyError or a broadcast error far from it. Extra keys are allowed (newer writers add some).
"""

from __future__ import annotations

from featcache.errors import UserError

import hashlib
import json
import math
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

HEAD_WEIGHTS = "head.safetensors"


class ArtifactError(UserError, ValueError):
    """An artifact that does not match its schema; the message names the file."""


class _Schema(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)  # JSON types as written: no "1" for 1, no true for 1.0


Score = Field(ge=0.0, le=1.0, allow_inf_nan=False)


class Provenance(_Schema):
    """What every run's config.json records of what produced it (featcache.outputs.provenance)."""

    command: str | None = None
    git: str | None = None
    python: str | None = None
    versions: dict[str, str] | None = None


class E2ERunConfig(Provenance):
    """An end-to-end run's config.json (featcache.e2e.rundir reads the rest)."""

    kind: Literal["e2e"]
    encoders: list[str] | None = None
    config: dict | None = None


class Scores(_Schema):
    sample_f1: float = Score
    micro_f1: float = Score
    macro_f1: float = Score
    map: float = Score


class TuningInfo(_Schema):
    """How a run's thresholds were tuned (metrics.json's "thresholds")."""

    metric: Literal["samples", "micro", "macro"] = "samples"
    mode: str = "per-label"
    chosen: str | None = None


class Metrics(_Schema):
    """metrics.json of any run: the scores at 0.5, with the fallback, and with tuned thresholds."""

    thresholds: TuningInfo | None = None
    at_0_5: Scores = Field(alias="at_0.5")
    at_0_5_fallback: Scores = Field(alias="at_0.5_fallback")
    tuned: Scores
    tuned_out_of_fold: float | None = Field(default=None, allow_inf_nan=False)


class RunConfig(Provenance):
    """A stage-2 run's config.json (fit-head, ablate)."""

    encoders: list[str] = Field(min_length=1)
    encoder_names: list[str] | None = None
    fingerprints: dict[str, str]
    caches: dict[str, str] | None = None
    label_ids: list[int | str] = Field(min_length=1)
    label_names: list[str] | None = None
    head: dict
    head_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")  # None: written before it was recorded

    @model_validator(mode="after")
    def _consistent(self):
        if self.label_names is not None and len(self.label_names) != len(self.label_ids):
            raise ValueError(f"{len(self.label_names)} label_names for {len(self.label_ids)} label_ids")
        missing = [e for e in self.encoders if e not in self.fingerprints or (self.caches is not None and e not in self.caches)]
        if missing:
            raise ValueError(f"encoders {missing} have no fingerprint or cache recorded")
        return self


class ThresholdsFile(_Schema):
    values: list[float] = Field(min_length=1)
    fallback: bool = True

    @field_validator("values", mode="before")
    @classmethod
    def _numbers(cls, v):
        if isinstance(v, list) and any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in v):
            raise ValueError("thresholds must be numbers")
        return v

    @field_validator("fallback", mode="before")
    @classmethod
    def _bool(cls, v):
        if not isinstance(v, bool):
            raise ValueError("fallback must be true or false")
        return v

    @field_validator("values")
    @classmethod
    def _in_range(cls, v):
        bad = [x for x in v if not (math.isfinite(x) and 0.0 <= x <= 1.0)]
        if bad:
            raise ValueError(f"thresholds must be finite, in 0..1: found {bad[:3]}")
        return v


class ExportMeta(_Schema):
    """export.json of an exported model."""

    format: str
    model: str
    inputs: list[dict] = Field(min_length=1)
    output: dict
    encoders: list[dict] = Field(min_length=1)
    labels: dict
    thresholds: dict

    @model_validator(mode="after")
    def _labels(self):
        ids, values = self.labels.get("ids"), self.thresholds.get("values")
        if not isinstance(ids, list) or not ids:
            raise ValueError("labels.ids: expected a non-empty list")
        ThresholdsFile.model_validate(self.thresholds)
        if len(values) != len(ids):
            raise ValueError(f"thresholds.values: {len(values)} for {len(ids)} labels")
        return self


FEATURE_DTYPES = ("float16", "float32")  # what a feature cache stores (its fingerprint says which)


def check_features(path, dtype, shape: tuple, n_ids: int, dim, spec_dtype: str | None = None,
                   views_shape: tuple | None = None, n_train: int | None = None) -> None:
    """A feature cache's arrays as they are stored (before they are read): dtype, 2-D, one row
    per id, the recorded width; views [K, n_train, dim]. ArtifactError naming the file otherwise."""
    name = getattr(dtype, "name", str(dtype))
    if name not in FEATURE_DTYPES:
        raise ArtifactError(f"{path}: features stored as {name}, expected {' or '.join(FEATURE_DTYPES)}; rebuild it: "
                            "extract again with --force")
    if spec_dtype is not None and name != spec_dtype:
        raise ArtifactError(f"{path}: features stored as {name}, its fingerprint says {spec_dtype}; rebuild it: extract "
                            "again with --force")
    if len(shape) != 2 or shape != (n_ids, dim):
        raise ArtifactError(f"{path}: features of shape {tuple(shape)}, expected {n_ids} ids x dim {dim}")
    if views_shape is not None and (len(views_shape) != 3 or tuple(views_shape[1:]) != (n_train, dim)):
        raise ArtifactError(f"{path}: views of shape {tuple(views_shape)}, expected [views, {n_train} train rows, {dim}]")


def check_finite(path, array, what: str = "features") -> None:
    bad = ~np.isfinite(array)
    if bad.any():
        rows = np.flatnonzero(bad.reshape(len(array), -1).any(axis=1) if array.ndim > 1 else bad)
        raise ArtifactError(f"{path}: {len(rows)} rows of {what} are not finite (NaN or inf), first row {rows[0]}; "
                            "rebuild it: extract again with --force")


# results.parquet: the columns every reader uses, and their kinds
RESULT_COLUMNS = {"run": "string", "encoders": "list", "head": "string", "sample_f1": "float"}


def check_results(path, schema) -> None:
    """The results table's columns (a polars schema): ArtifactError naming the file otherwise."""
    for column, kind in RESULT_COLUMNS.items():
        dtype = schema.get(column)
        ok = dtype is not None and {"string": dtype == _polars().String, "list": isinstance(dtype, _polars().List),
                                    "float": dtype.is_float() if dtype is not None else False}[kind]
        if not ok:
            raise ArtifactError(f"{path}: column {column!r} is {dtype or 'missing'}, expected {kind}; move the file aside "
                                "to start a new results table")


def _polars():
    import polars

    return polars


def validate(path: str | Path, schema: type[BaseModel], doc, labels: int | None = None) -> dict:
    """`doc` (a parsed artifact) checked against `schema`; ArtifactError naming `path` otherwise.
    `labels`: the label count lists of labels must have."""
    try:
        if not isinstance(doc, dict):
            raise ArtifactError(f"{path}: expected a JSON object, found {type(doc).__name__}")
        schema.model_validate(doc)
        if labels is not None and "values" in doc and len(doc["values"]) != labels:
            raise ArtifactError(f"{path}: values: {len(doc['values'])} thresholds for {labels} labels")
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "file"
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise ArtifactError(f"{path}: {where}: {first['msg']}{more}") from None
    return doc


def read_json(path: str | Path, schema: type[BaseModel], labels: int | None = None) -> dict:
    """A JSON artifact, parsed and validated: ArtifactError naming the file when unreadable,
    not JSON (truncated, 0 bytes) or not matching `schema`."""
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    except ValueError as e:
        raise ArtifactError(f"{path}: not valid JSON ({e})") from None
    return validate(path, schema, doc, labels)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_head(run_dir: str | Path, config: dict) -> None:
    """The head weights are the ones the run recorded (config.json's head_sha256)."""
    want = config.get("head_sha256")
    path = Path(run_dir) / HEAD_WEIGHTS
    if want is None:
        return  # a run saved before the hash was recorded: nothing to compare with
    try:
        got = file_sha256(path)
    except OSError as e:
        raise ArtifactError(f"{path}: cannot read it ({e.strerror or e})") from None
    if got != want:
        raise ArtifactError(f"{path}: sha256 {got[:12]}... is not the {want[:12]}... its run recorded in config.json "
                            "(changed or damaged since); fit the head again")
