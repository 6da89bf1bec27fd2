"""The kinds of run directory, as types: what a kind's files are, how its model loads and predicts.

    stage 2 (fit-head, ablate)   HeadRun: head.json + head.safetensors, config.json, thresholds.json,
                                 metrics.json: a head over cached features
    end to end (finetune)        E2ERun: config.json of kind "e2e", checkpoints/; once finished
                                 model.safetensors, thresholds.json, metrics.json: backbones + head

    run = open_run(run_dir)               # the kind that recognises the directory (RunError otherwise)
    config, metrics = run.finished()      # every file checked; RunError for one killed while saving
    probs, preds = run.predict(dataset, cache)

Every job that differs by kind is a method here, so no caller asks which kind it holds. A third
kind is one class and one entry in KINDS. The directories' files are the stages' own (stage 2's
experiment, end to end's rundir): this module reads them, never writes them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from heads.train import Head

from featcache.artifacts import ArtifactError, E2ERunConfig, Metrics, RunConfig, ThresholdsFile, check_head, read_json
from featcache.data import Dataset, Record
from featcache.e2e.model import E2EModel
from featcache.e2e.predict import load_e2e_run, predict_proba
from featcache.e2e.rundir import KIND as E2E_KIND
from featcache.runs.errors import RunError
from featcache.stage2.experiment import load_features, load_head_run
from featcache.stage2.thresholds import Thresholds


class Run:
    """A run directory of one kind. `finished`, `thresholds` and `predict` are shared; the rest
    each kind says for itself."""

    kind: str  # export.json's source.kind
    label: str  # what `runs`, `runs show`, benchmark and report call it
    weights: str  # benchmark's weights column
    schema: type  # config.json's schema (featcache.artifacts)
    marks: str  # what tells the kind's directory, for the message naming a directory that is none

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)

    @classmethod
    def recognises(cls, run_dir: Path) -> bool:
        raise NotImplementedError

    @classmethod
    def under(cls, root: Path) -> set[Path]:
        """Every directory under root (nested too) that holds a model of this kind, complete or not."""
        raise NotImplementedError

    def finished(self) -> tuple[dict, dict]:
        """(config.json, metrics.json) of a complete run; RunError for one killed while saving
        (metrics.json is written last) or with a file that does not match its schema. Every
        command that uses a run goes through here."""
        if not (self.dir / "metrics.json").exists():
            raise RunError(f"{self.dir}: incomplete run (no metrics.json: killed while saving, or still running); "
                           "fit or train it again")
        try:
            config = read_json(self.dir / "config.json", self.schema)
            metrics = read_json(self.dir / "metrics.json", Metrics)
            self.check(config)
            return config, metrics
        except ArtifactError as e:
            raise RunError(str(e)) from None

    def check(self, config: dict) -> None:
        """The kind's other files, checked (ArtifactError naming the file)."""

    def thresholds(self) -> Thresholds:
        return Thresholds.load(self.dir / "thresholds.json")

    def model(self) -> nn.Module:
        """The model the run predicts with, on the CPU in eval mode, fed what `example` gives."""
        raise NotImplementedError

    def example(self, model: nn.Module, n: int):
        """`model`'s input for n rows (benchmark times it)."""
        raise NotImplementedError

    def input_size(self, model: nn.Module) -> str:
        """What one row of `example` is, for the benchmark table."""
        raise NotImplementedError

    def photo_model(self, config: dict) -> tuple[E2EModel, list[torch.dtype | None]]:
        """The model as photos and captions in (encoders then head; Predictor, export), and per
        encoder the dtype its features are rounded to before the head (None: as they come)."""
        raise NotImplementedError

    def cache_dirs(self) -> list[Path]:
        """The feature cache directories the run reads besides its own (export never writes into one)."""
        return []

    def summary(self, config: dict, metrics: dict) -> dict:
        """encoders, head (a name), fit_seconds and split (seed, val_fraction, train_fraction): what
        export.json and the results table say of the run."""
        raise NotImplementedError

    def predict_proba(self, dataset: Dataset, cache: str | Path, records: list[Record] | None = None) -> np.ndarray:
        """Probabilities [len(records), labels] (default: the rows to predict), in the records' order."""
        raise NotImplementedError

    def predict(self, dataset: Dataset, cache: str | Path) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, 0/1 predictions: the run's thresholds, >= 1 label each) of the rows to predict."""
        probs = self.predict_proba(dataset, cache)
        return probs, self.thresholds().apply(probs)


class HeadRun(Run):
    """A stage-2 head over cached features; its encoders are rebuilt from its caches' records."""

    kind, label, weights, schema = "stage2", "head", "fitted", RunConfig
    marks = "head.json (fit-head, ablate)"
    VAL_FRACTION = 0.2  # fit-head's split: Split.of(dataset) with its default share (featcache.stage2.experiment)

    @classmethod
    def recognises(cls, run_dir: Path) -> bool:
        return (run_dir / "head.json").exists()

    @classmethod
    def under(cls, root: Path) -> set[Path]:
        return {p.parent for p in root.rglob("head.json")}

    def check(self, config: dict) -> None:
        read_json(self.dir / "thresholds.json", ThresholdsFile, labels=len(config["label_ids"]))
        check_head(self.dir, config)

    def model(self) -> nn.Module:
        return Head.load(self.dir).net  # a HeadNet: `.dims`, the cached features' widths

    def example(self, model: nn.Module, n: int):
        return [torch.randn(n, d) for d in model.dims]

    def input_size(self, model: nn.Module) -> str:
        return "+".join(map(str, model.dims)) + " features"

    def photo_model(self, config: dict) -> tuple[E2EModel, list[torch.dtype | None]]:
        head = self.model()
        encoders, dtypes = self.encoders(config)
        if [e.embed_dim for e in encoders] != list(head.dims):
            raise RunError(f"{self.dir}: the head takes features of widths {head.dims}, its caches' encoders give "
                           f"{[e.embed_dim for e in encoders]}")
        return E2EModel(encoders, head).eval(), dtypes

    def encoders(self, config: dict) -> tuple[list[nn.Module], list[torch.dtype]]:
        """The encoders as its caches were extracted (featcache.stage1.origin.encoder_of: their
        configuration and weights, checked by hash), and the torch dtype each cache stores its
        features in: what turns new photos and captions into the features the head was fitted on.
        RunError when a cache is gone, rebuilt since (another fingerprint) or not recorded."""
        from stores.features import StoreError, read_attrs

        from featcache.stage1.origin import encoder_of

        if not config.get("caches"):
            raise RunError(f"{self.dir / 'config.json'}: does not say which caches its head was fitted on (written "
                           "before featcache recorded them); fit the head again")
        encoders, dtypes = [], []
        for name in config["encoders"]:
            path = Path(config["caches"][name])
            try:
                attrs = read_attrs(path)
                if attrs.get("fingerprint") != config["fingerprints"][name]:  # rebuilt since: the head does not fit it
                    raise RunError(f"{path}: fingerprint {attrs.get('fingerprint')} differs from "
                                   f"{config['fingerprints'][name]}, the cache {self.dir} was fitted on; "
                                   "refit the head or restore the cache")
                encoders.append(encoder_of(path, attrs))
            except StoreError as e:
                raise RunError(f"{e} ({self.dir}'s encoder is rebuilt from that cache's record)") from None
            dtypes.append(getattr(torch, json.loads(attrs["fingerprint_spec"]).get("dtype", "float32")))
        return encoders, dtypes

    def cache_dirs(self) -> list[Path]:
        try:  # read before the run is checked (export refuses an output inside them first): finished() names a bad file
            caches = json.loads((self.dir / "config.json").read_text()).get("caches") or {}
        except (OSError, ValueError, AttributeError):
            caches = {}
        return sorted({Path(p).parent for p in caches.values()})

    def summary(self, config: dict, metrics: dict) -> dict:
        h = config["head"]
        return {"encoders": list(config["encoders"]), "head": f"{h['fusion']}/{h['classifier']}/{h['loss']}",
                "fit_seconds": metrics.get("fit_seconds"),
                "split": {"seed": config.get("split_seed", 0), "val_fraction": self.VAL_FRACTION,
                          "train_fraction": config.get("train_fraction", 1.0)}}

    def predict_proba(self, dataset: Dataset, cache: str | Path, records: list[Record] | None = None) -> np.ndarray:
        """From the cached features of `cache`, refused when a cache's fingerprint is not the run's."""
        head, _, config = load_head_run(self.dir)
        if list(dataset.label_space.ids) != config["label_ids"]:
            raise RunError(f"{self.dir}: trained on labels {config['label_ids']}, dataset {dataset.root} has "
                           f"{list(dataset.label_space.ids)}")
        features = load_features(cache, config["encoders"], dataset)
        for fs in features:
            want = config["fingerprints"][fs.name]
            if fs.fingerprint != want:
                raise RunError(f"{fs.path}: fingerprint {fs.fingerprint} differs from {want}, the cache run {self.dir} "
                               f"was trained on (the cache was rebuilt from other data, weights or settings); "
                               f"refit the head or restore the cache")
        ids = [r.image_id for r in (dataset.test if records is None else records)]
        try:
            xs = [fs.rows(ids) for fs in features]
        except KeyError as e:
            raise RunError(f"rows of {dataset.root} missing from a cache: {e.args[0]}") from None
        return head.predict_proba(xs)


class E2ERun(Run):
    """An end-to-end model: its own backbones and head, photos and captions in (no cache)."""

    kind, label, weights, schema = E2E_KIND, "final", "trained", E2ERunConfig
    marks = f"config.json of kind {E2E_KIND!r} (finetune)"

    @classmethod
    def recognises(cls, run_dir: Path) -> bool:
        config = run_dir / "config.json"
        if not config.exists():
            return False
        try:
            return json.loads(config.read_text()).get("kind") == E2E_KIND
        except (OSError, ValueError, AttributeError) as e:
            raise RunError(f"{config}: not a readable run config ({type(e).__name__}: {e})") from None

    @classmethod
    def under(cls, root: Path) -> set[Path]:
        # checkpoints/epoch-N/ holds a model.safetensors too, but no config.json
        return {p.parent for p in root.rglob("model.safetensors")
                if (p.parent / "config.json").exists() and cls.recognises(p.parent)}

    def model(self) -> E2EModel:
        return load_e2e_run(self.dir)[0]  # `.encoders` take images and captions

    def example(self, model: nn.Module, n: int):
        return [e.example_batch(n) for e in model.encoders]

    def input_size(self, model: nn.Module) -> str:
        return " + ".join(e.describe_input() for e in model.encoders)

    def photo_model(self, config: dict) -> tuple[E2EModel, list[torch.dtype | None]]:
        model = self.model()
        return model, [None] * len(model.encoders)

    def summary(self, config: dict, metrics: dict) -> dict:
        c = config["config"]
        return {"encoders": list(config["encoders"]), "head": f"e2e {c['fusion']}/{c['classifier']}",
                "fit_seconds": sum(h["train_seconds"] for h in metrics.get("history", [])),
                "split": {"seed": c["seed"], "val_fraction": c["val_fraction"], "train_fraction": c["train_fraction"]}}

    def predict_proba(self, dataset: Dataset, cache: str | Path, records: list[Record] | None = None) -> np.ndarray:
        """From the photos and captions themselves (`cache` unused), on a GPU when there is one."""
        return predict_proba(self.dir, dataset, records, device="cuda" if torch.cuda.is_available() else "cpu")


# The registry. Order matters: a config.json of kind "e2e" decides before a head.json is looked for.
KINDS: dict[str, type[Run]] = {E2ERun.kind: E2ERun, HeadRun.kind: HeadRun}


def open_run(run_dir: str | Path) -> Run:
    """The run in a directory as its kind; RunError naming the directory when no kind recognises it."""
    run_dir = Path(run_dir)
    for cls in KINDS.values():
        if cls.recognises(run_dir):
            return cls(run_dir)
    raise RunError(f"{run_dir}: not a run directory: no " + " and no ".join(cls.marks for cls in KINDS.values()))
