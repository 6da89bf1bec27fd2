"""One head fit end to end, on cached features: split, fit, tune thresholds, score, save a run.

    run_dir, result = fit_head(data, cache, ["efficientnet_lite0", "minilm_l6"], HeadConfig())

is the fit-head command; its steps, for studies that fit many heads on the same features:

    features = load_features(cache_dir, ["efficientnet_lite0", "minilm_l6"])
    split = Split.of(dataset)                         # train_val_split(targets, seed=0)
    result = fit_eval(features, split, HeadConfig())  # head, thresholds, metrics
    save_run(result, runs_dir / run_id)               # head + config + thresholds + metrics

The validation part early-stops the head (on its mAP) and tunes the thresholds; it is never
trained on. The split seed (0) is separate from the head's seed, so seeds vary the model, not the
data. `load_head_run` reads a run back (featcache.runs.kinds predicts with it).
"""

from __future__ import annotations


import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

from featcache.data import Dataset, LabelSpace, load_dataset
from featcache.metrics import AVERAGES, mean_average_precision, per_label_table
from featcache.artifacts import HEAD_WEIGHTS, ArtifactError, RunConfig, check_head, file_sha256, read_json
from featcache.outputs import _short, check_apart, os_errors, provenance, replacing, write_text
from featcache.encoders.planner import home
from featcache.encoders.registry import cache_name
from featcache.runs.errors import RunError
from featcache.data.split import nested_share, split_rows
from featcache.options import ConfigError, from_flat
from featcache.stage2.config import FitConfig
from featcache.stage2.thresholds import Thresholds, fit_thresholds, metrics_table, out_of_fold, threshold_report
from heads.train import Head
from heads.config import HeadConfig
from stores.features import FeatureSet, StoreError, open_features
from stores.results import append_results


@dataclass(frozen=True)
class Split:
    ids_train: np.ndarray
    ids_val: np.ndarray
    y_train: np.ndarray
    y_val: np.ndarray
    seed: int = 0
    fraction: float = 1.0  # the share of the split's train rows kept (learning curves)

    @classmethod
    def of(cls, dataset: Dataset, seed: int | None = None, val_fraction: float | None = None) -> Split:
        """The dataset's split: its split column's, else stratified with its (or the given) fraction and seed."""
        y = dataset.targets()
        tr, va = split_rows(dataset, val_fraction, seed)
        seed = dataset.split_seed if seed is None else seed
        ids = np.array([r.image_id for r in dataset.train])
        return cls(ids[tr], ids[va], y[tr], y[va], seed)

    def present_in(self, features: list[FeatureSet], say=None) -> Split:
        """Only the rows every cache holds. A cache extracted with --lenient lacks the rows it could
        not read; the split is drawn over all rows first, so every other row keeps its part, and the
        rows left out are reported (to `say`, default stderr)."""
        present = set.intersection(*(set(fs.ids.tolist()) for fs in features))
        keep_tr = np.array([i in present for i in self.ids_train], dtype=bool)
        keep_va = np.array([i in present for i in self.ids_val], dtype=bool)
        if keep_tr.all() and keep_va.all():
            return self
        absent = [str(i) for i in np.concatenate([self.ids_train[~keep_tr], self.ids_val[~keep_va]])]
        (say or (lambda m: print(m, file=sys.stderr)))(
            f"skipped {len(absent)} train.csv rows absent from the caches {', '.join(fs.name for fs in features)} "
            f"(unreadable when extracted with --lenient): {', '.join(absent[:10])}{' ...' if len(absent) > 10 else ''}")
        return Split(self.ids_train[keep_tr], self.ids_val[keep_va], self.y_train[keep_tr], self.y_val[keep_va],
                     self.seed, self.fraction)

    def share(self, fraction: float, seed: int | None = None) -> Split:
        """The first `fraction` of the train rows in seed's order (default: the split's seed; nested
        across fractions, the same rows as end to end's --train-fraction); every validation row."""
        keep = nested_share(len(self.ids_train), fraction, self.seed if seed is None else seed)
        return Split(self.ids_train[keep], self.ids_val, self.y_train[keep], self.y_val, self.seed, fraction)


@dataclass
class FitResult:
    head: Head
    thresholds: Thresholds
    encoders: list[str]
    fingerprints: dict[str, str]
    caches: dict[str, str]  # name -> the .h5 file's absolute path (end to end finds `_ft` backbones beside it)
    metrics: dict  # flat: tuned metrics at top level, the others nested
    per_label: list[dict]
    encoder_names: list[str]  # the registry names the caches were extracted with (timm:..., hf:...)
    # Each validation row's sample-F1 under thresholds tuned without it (None for micro/macro):
    # studies bootstrap their comparisons over these rows.
    val_out_of_fold: np.ndarray | None = None


def load_features(cache_dir: str | Path, names: list[str], dataset: Dataset | None = None) -> list[FeatureSet]:
    """Open each named cache, <cache_name(name)>.h5 (StoreError names a missing/incomplete/corrupt
    file, or one built from another dataset than `dataset`: same ImageIDs are not the same rows if
    the data changed)."""
    if not names:
        raise ValueError("no encoders given: pass cache names, e.g. --encoders efficientnet_lite0,minilm_l6")
    features = [open_features(cache_dir, cache_name(name)) for name in names]
    want = dataset.fingerprint(memo=home() / "fingerprints.json") if dataset is not None else None
    for fs in features:
        built_from = json.loads(fs.attrs.get("fingerprint_spec", "{}")).get("dataset")
        if want and built_from and built_from != want:  # caches written by extract record it
            raise StoreError(f"{fs.path}: built from another dataset (fingerprint {built_from}) than {dataset.root} "
                             f"({want}); extract it again with --data {dataset.root}, or use another --cache")
    return features


def fit_eval(features: list[FeatureSet], split: Split, cfg: HeadConfig, metric: str = "samples",
             threshold_mode: str = "auto", label_names: list[str] | None = None) -> FitResult:
    xs_tr = [fs.rows(split.ids_train) for fs in features]
    xs_va = [fs.rows(split.ids_val) for fs in features]
    views = [fs.view_rows(split.ids_train) for fs in features]
    head = Head(cfg).fit(xs_tr, split.y_train, val=(xs_va, split.y_val), views=views, scorer=mean_average_precision)
    t0 = time.perf_counter()
    probs = head.predict_proba(xs_va)
    thresholds = fit_thresholds(split.y_val, probs, metric=metric, mode=threshold_mode)
    oof, oof_rows = out_of_fold(split.y_val, probs, metric=metric, mode=threshold_mode)
    tune_seconds = time.perf_counter() - t0
    metrics = {**threshold_report(split.y_val, probs, thresholds, metric, threshold_mode, oof),
               "fit_seconds": round(head.fit_seconds, 3), "tune_seconds": round(tune_seconds, 3),
               "best_epoch": head.best_epoch, "epochs_run": len(head.history), "steps_run": head.steps_run,
               "n_train": len(split.ids_train), "n_val": len(split.ids_val), "split_seed": split.seed,
               "train_fraction": split.fraction}
    table = per_label_table(split.y_val, probs, thresholds.apply(probs), label_names)
    return FitResult(head, thresholds, [fs.name for fs in features], {fs.name: fs.fingerprint for fs in features},
                     {fs.name: str(Path(fs.path).resolve()) for fs in features}, metrics, table,
                     [str(fs.encoder) for fs in features], oof_rows)


def fit_head(data, encoders: list[str] | None = None, *, config: str | Path | None = None,
             **options) -> tuple[Path, FitResult]:
    """The fit-head command: fit one head on the cached `encoders` (cache names; fused) on the
    dataset's split (its train rows, or a nested share of them), save the run as <runs>/<run id>/
    and append its row to <runs>/results.parquet. `options`: FitConfig's, flat (HeadConfig's fields,
    train_fraction, metric, threshold_mode, cache, runs); `config`: a run's config.json (or its
    directory) to replay, the options given overriding it. RunError when the run cannot be
    written; a run that could not be saved whole is removed."""
    saved = replay_options(Path(config) if Path(config).name == "config.json" else Path(config) / "config.json") \
        if config else {}
    encoders = list(encoders or saved.pop("encoders", None) or [])
    if not encoders:
        raise ConfigError("no encoders: name the caches to fuse (--encoders a,b), or replay a run (--config)")
    opts = from_flat(FitConfig, {**{k: v for k, v in saved.items() if k != "encoders"}, **options})
    cfg, cache, runs = opts.head, opts.cache, opts.runs
    check_apart(cache=cache, runs=runs)  # before any work: directories, neither inside the other
    dataset = load_dataset(data)
    features = load_features(cache, encoders, dataset)
    split = Split.of(dataset).present_in(features).share(opts.train_fraction)
    result = fit_eval(features, split, cfg, opts.metric, opts.threshold_mode, list(dataset.label_space.names))
    rid = run_id(result.encoders, cfg)
    run_dir = Path(runs) / rid
    try:
        # metrics.json, the mark of a complete run, only once its row is in the results table
        save_run(result, run_dir, dataset.label_space, dataset.fingerprint(),
                 before_done=lambda: append_results(Path(runs) / "results.parquet", [results_row(result, rid)]))
    except (OSError, RuntimeError, ValueError) as e:  # an unwritable runs dir, an unreadable results table
        shutil.rmtree(run_dir, ignore_errors=True)  # nothing that looks like a run is left behind
        raise RunError(f"{_short(run_dir)}: cannot save the run ({e}); nothing was kept") from None
    return run_dir, result


def replay_options(config_file: str | Path) -> dict:
    """fit_head's options that made a run, from its config.json (`fit-head --config`): encoders,
    the head's whole config, train_fraction, metric, threshold_mode (those it recorded). The same data and caches then
    give the same metrics: a head's fit is deterministic for its seed and thread count."""
    path = Path(config_file)
    try:
        saved = json.loads(path.read_text())
        names = {f.name for f in fields(HeadConfig)}
        head = {k: v for k, v in saved["head"].items() if k in names}
        kept = {k: saved[k] for k in ("train_fraction", "metric", "threshold_mode") if k in saved}
        return {"encoders": list(saved["encoders"]), "head": HeadConfig(**head), **kept}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RunError(f"{path}: not a fit-head run's config.json ({type(e).__name__}: {e})") from None


def run_id(encoders: list[str], cfg: HeadConfig) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")[:-3]
    return f"{stamp}-{'+'.join(encoders)}-{cfg.fusion}-s{cfg.seed}"


def save_run(result: FitResult, run_dir: Path, label_space: LabelSpace, dataset_fingerprint: str | None = None,
             before_done=None) -> Path:
    """head.safetensors + head.json, config.json (with the head weights' sha256), thresholds.json,
    per_label.csv, then `before_done()`, and metrics.json last: a run is complete (listed, ranked,
    used) only once metrics.json is there."""
    run_dir = Path(run_dir)
    with os_errors(run_dir, "nothing was kept"):  # a name too long, a read-only runs folder
        result.head.save(run_dir, replacing)
    config = {"encoders": result.encoders, "encoder_names": result.encoder_names, "fingerprints": result.fingerprints,
              "caches": result.caches,
              "head": asdict(result.head.cfg),
              "label_ids": list(label_space.ids), "label_names": list(label_space.names),
              "split_seed": result.metrics["split_seed"], "train_fraction": result.metrics["train_fraction"],
              "metric": result.metrics["thresholds"]["metric"], "threshold_mode": result.metrics["thresholds"]["mode"],
              "dataset_fingerprint": dataset_fingerprint, "head_sha256": file_sha256(run_dir / HEAD_WEIGHTS),
              **provenance()}
    write_text(run_dir / "config.json", json.dumps(config, indent=1))
    result.thresholds.save(run_dir / "thresholds.json")
    with replacing(run_dir / "per_label.csv") as tmp:
        pl.DataFrame(result.per_label).write_csv(tmp)
    if before_done:
        before_done()
    write_text(run_dir / "metrics.json", json.dumps(result.metrics, indent=1))  # the marker: last
    return run_dir


def results_row(result: FitResult, run: str) -> dict:
    """One row of the results table: flat scalars, encoders as a list, the config as JSON."""
    cfg, m = result.head.cfg, result.metrics
    row = {"run": run, "time": datetime.now().isoformat(timespec="seconds"), "encoders": result.encoders,
           "encoder_names": result.encoder_names,
           "head": f"{cfg.fusion}/{cfg.classifier}/{cfg.loss}", "fusion": cfg.fusion, "classifier": cfg.classifier,
           "loss": cfg.loss, "seed": cfg.seed, "lr": cfg.lr, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
           "width": cfg.width, "dropout": cfg.dropout, "weight_decay": cfg.weight_decay,
           "threshold_metric": m["thresholds"]["metric"], "threshold_mode": m["thresholds"]["mode"],
           "threshold_mode_chosen": m["thresholds"]["chosen"],
           "fit_seconds": m["fit_seconds"], "best_epoch": m["best_epoch"], "epochs_run": m["epochs_run"], "steps_run": m["steps_run"],
           "n_val": m["n_val"], "config": json.dumps(asdict(cfg)),
           "tuned_out_of_fold": m["tuned_out_of_fold"],
           **{f"out_of_fold_{k.replace('-', '_')}": v for k, v in (m["thresholds"]["candidates_out_of_fold"] or {}).items()}}
    for key in [*AVERAGES.values(), "map"]:
        row[key] = m[key]
        row[f"{key}_05"] = m["at_0.5"][key]
        row[f"{key}_05_fallback"] = m["at_0.5_fallback"][key]
    return row


def load_head_run(run_dir: str | Path) -> tuple[Head, Thresholds, dict]:
    """A saved run's head, thresholds and config.json, each file checked (RunError naming it);
    `featcache.runs.kinds.HeadRun` predicts with them."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise RunError(f"{run_dir}: not a run directory (no config.json); fit-head writes one")
    try:  # each file checked against its schema (featcache.artifacts), the weights by their hash
        config = read_json(run_dir / "config.json", RunConfig)
        thresholds = Thresholds.load(run_dir / "thresholds.json")
        if len(thresholds.values) != len(config["label_ids"]):
            raise ArtifactError(f"{run_dir / 'thresholds.json'}: {len(thresholds.values)} thresholds for "
                                f"{len(config['label_ids'])} labels")
        check_head(run_dir, config)
        head = Head.load(run_dir)
    except ArtifactError as e:
        raise RunError(str(e)) from None
    except ValueError as e:
        raise RunError(f"{run_dir}: {e}") from None
    return head, thresholds, config


def describe_fit(run_dir: Path, result: FitResult) -> str:
    """fit-head's report: the head, its rows, its metrics, auto's candidates, the time it took."""
    m, cfg = result.metrics, result.head.cfg
    lines = [f"{run_dir}: {' + '.join(result.encoders)} / {cfg.fusion} / {cfg.classifier} / {cfg.loss}, seed {cfg.seed}, "
             f"{m['n_train']} train / {m['n_val']} validation rows", metrics_table(m)]
    if m["thresholds"]["candidates_out_of_fold"]:
        lines.append("auto's candidates out of fold: " + ", ".join(
            f"{k} {v:.4f}" for k, v in m["thresholds"]["candidates_out_of_fold"].items()) + f" -> {m['thresholds']['chosen']}")
    lines.append(f"fit {m['fit_seconds']:.2f} s ({m['epochs_run']} epochs, best {m['best_epoch']}), "
                 f"thresholds {m['tune_seconds']:.2f} s")
    return "\n".join(lines)
