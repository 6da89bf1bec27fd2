"""Run directories: which kind a directory holds, the runs under a root, a run's model, prediction.

    stage 2 (fit-head, ablate)   head.json + head.safetensors, config.json, thresholds.json,
                                 metrics.json: a head over cached features
    end to end (finetune)        config.json of kind "e2e", checkpoints/; once finished
                                 model.safetensors, thresholds.json, metrics.json: backbones + head

    kind_of(run_dir)                     "stage2" | "e2e" (RunError naming the directory otherwise)
    list_runs(root)                      every run under root with a model to load
    find_run(run, root)                  a run by directory, id, or a part of the id only it has
    e2e_results(root)                    finished end-to-end runs as rows of the results table
    load_model(run_dir)                  the model a run predicts with (for benchmarking)
    predict(run_dir, data, cache, out)   predictions of the dataset's rows to predict (a submission for COMP5329)
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from torch import nn

from heads.train import Head

from featcache.data import load_dataset
from featcache.e2e import predict as e2e_predict
from featcache.e2e import rundir as e2e_rundir
from featcache.artifacts import ArtifactError, E2EConfig, Metrics, RunConfig, ThresholdsFile, check_head, read_json
from featcache.outputs import check_target, inputs_of, write_predictions
from featcache.stage2.experiment import RunError
from featcache.stage2.experiment import predict_run as predict_stage2

STAGE2, E2E = "stage2", e2e_rundir.KIND


def kind_of(run_dir: str | Path) -> str:
    """The kind of a run directory: "e2e" (config.json of that kind) or "stage2" (head.json)."""
    run_dir = Path(run_dir)
    config = run_dir / "config.json"
    if config.exists():
        try:
            kind = json.loads(config.read_text()).get("kind")
        except (OSError, ValueError, AttributeError) as e:
            raise RunError(f"{config}: not a readable run config ({type(e).__name__}: {e})") from None
        if kind == E2E:
            return E2E
    if (run_dir / "head.json").exists():
        return STAGE2
    raise RunError(f"{run_dir}: not a run directory: no head.json (fit-head, ablate) and no config.json of kind "
                   f"{E2E!r} (finetune)")


def list_runs(root: str | Path, kind: str | None = None, say=None) -> list[Path]:
    """Every complete run under root (nested ones too, as ablate writes them), sorted; only those of
    `kind` when given. A run is complete once its metrics.json, written last, is there: a run
    killed while saving is never listed, and `say` (if given) is told which were left out."""
    root = Path(root)
    heads = {p.parent for p in root.rglob("head.json")}
    # checkpoints/epoch-N/ holds a model.safetensors too, but no config.json
    finished = {p.parent for p in root.rglob("model.safetensors")
                if (p.parent / "config.json").exists() and kind_of(p.parent) == E2E}
    runs = {STAGE2: heads, E2E: finished, None: heads | finished}[kind]
    incomplete = sorted(r for r in runs if not (r / "metrics.json").exists())
    if incomplete and say:
        say(f"left out {len(incomplete)} incomplete runs (no metrics.json; killed while saving, or still running): "
            + ", ".join(str(r) for r in incomplete[:5]) + (" ..." if len(incomplete) > 5 else ""))
    return sorted(set(runs) - set(incomplete))


def finished(run_dir: str | Path) -> tuple[dict, dict]:
    """(config.json, metrics.json) of a complete run; RunError for one killed while saving (metrics.json
    is written last) or with unreadable files. Every command that uses a run goes through here."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.json").exists():
        raise RunError(f"{run_dir}: incomplete run (no metrics.json: killed while saving, or still running); "
                       "fit or train it again")
    try:  # every file checked against its schema (featcache.artifacts), the head weights by hash
        stage2 = kind_of(run_dir) == STAGE2
        config = read_json(run_dir / "config.json", RunConfig if stage2 else E2EConfig)
        metrics = read_json(run_dir / "metrics.json", Metrics)
        if stage2:
            read_json(run_dir / "thresholds.json", ThresholdsFile, labels=len(config["label_ids"]))
            check_head(run_dir, config)
        return config, metrics
    except ArtifactError as e:
        raise RunError(str(e)) from None


def cached_encoders(run_dir: str | Path, config: dict) -> tuple[list[nn.Module], list]:
    """A stage-2 run's encoders as its caches were extracted (featcache.stage1.origin.encoder_of: their
    configuration and weights, checked by hash), and the torch dtype each cache stores its
    features in: what turns new photos and captions into the features its head was fitted on.
    RunError when a cache is gone, rebuilt since (another fingerprint) or not recorded."""
    import torch

    from stores.features import StoreError, read_attrs

    from featcache.stage1.origin import encoder_of

    run_dir = Path(run_dir)
    if not config.get("caches"):
        raise RunError(f"{run_dir / 'config.json'}: does not say which caches its head was fitted on (written before "
                       "featcache recorded them); fit the head again")
    encoders, dtypes = [], []
    for name in config["encoders"]:
        path = Path(config["caches"][name])
        try:
            attrs = read_attrs(path)
            if attrs.get("fingerprint") != config["fingerprints"][name]:  # rebuilt since: the head does not fit it
                raise RunError(f"{path}: fingerprint {attrs.get('fingerprint')} differs from "
                               f"{config['fingerprints'][name]}, the cache {run_dir} was fitted on; refit the head or "
                               "restore the cache")
            encoders.append(encoder_of(path, attrs))
        except StoreError as e:
            raise RunError(f"{e} ({run_dir}'s encoder is rebuilt from that cache's record)") from None
        dtypes.append(getattr(torch, json.loads(attrs["fingerprint_spec"]).get("dtype", "float32")))
    return encoders, dtypes


def find_run(run: str | Path, root: str | Path = "runs") -> Path:
    """A run named by its directory, its id (the path under `root`, as `runs` lists it), or any part
    of the id that only one complete run under `root` has (e.g. a time stamp). RunError otherwise,
    naming the candidates."""
    root = Path(root)
    try:
        for candidate in (Path(run), root / run):
            if candidate.is_dir():
                return candidate
    except OSError as e:  # a name too long for the file system
        raise RunError(f"{str(run)[:80]}...: no such run ({e.strerror})") from None
    found = [r for r in list_runs(root) if str(run) in r.relative_to(root).as_posix()] if root.is_dir() else []
    if len(found) == 1:
        return found[0]
    if not found:
        raise RunError(f"{run}: no such run directory, and no run under {root} has it in its id "
                       f"(python cli.py runs --runs {root} lists them)")
    raise RunError(f"{run}: {len(found)} runs under {root} match: "
                   + ", ".join(r.relative_to(root).as_posix() for r in found[:5]) + (" ..." if len(found) > 5 else "")
                   + "; give more of the id")


def e2e_results(root: str | Path) -> pl.DataFrame:
    """Result rows of the finished end-to-end runs under root, in the results table's layout (a
    fit-head run appends its own row to results.parquet; an end-to-end run keeps metrics.json)."""
    rows = []
    for run_dir in list_runs(root, E2E):  # complete runs only
        saved, metrics = e2e_rundir.read_config(run_dir), finished(run_dir)[1]
        c = saved["config"]
        rows.append({"run": run_dir.relative_to(root).as_posix(), "kind": "final", "encoders": saved["encoders"],
                     "head": f"e2e {c['fusion']}/{c['classifier']}", "variant": "default",
                     "sample_f1": metrics["tuned"]["sample_f1"], "tuned_out_of_fold": metrics.get("tuned_out_of_fold"),
                     "fit_seconds": sum(h["train_seconds"] for h in metrics["history"])})
    return pl.DataFrame(rows)


def run_table(root: str | Path = "runs", say=None) -> pl.DataFrame:
    """`runs`: every complete run under root with its metrics, newest first: the rows fit-head and
    ablate appended to root/results.parquet whose directories are still there, and the finished
    end-to-end runs. Columns: run (the id `find_run` takes), kind, time, encoders, head, seed,
    sample_f1 (tuned, in-sample), tuned_out_of_fold (the honest figure), map, fit_seconds."""
    from stores.results import read_results

    root = Path(root)
    present = {r.relative_to(root).as_posix() for r in list_runs(root, say=say)} if root.is_dir() else set()
    parts = []
    if (root / "results.parquet").exists():
        heads = read_results(root / "results.parquet").filter(pl.col("run").is_in(sorted(present)))
        parts.append(heads.with_columns(kind=pl.lit("head")).unique("run", keep="last", maintain_order=True))
    finals = e2e_results(root)
    if len(finals):  # finished when metrics.json was written
        when = [_iso((root / r / "metrics.json").stat().st_mtime) for r in finals["run"]]
        parts.append(finals.with_columns(time=pl.Series(when, dtype=pl.String)))
    columns = ["run", "kind", "time", "encoders", "head", "seed", "sample_f1", "tuned_out_of_fold", "map", "fit_seconds"]
    if not parts:
        return pl.DataFrame(schema={c: pl.String for c in columns})
    table = pl.concat([p.select([c for c in columns if c in p.columns]) for p in parts], how="diagonal_relaxed")
    return table.with_columns(pl.col("encoders").list.join("+")).sort("time", descending=True, nulls_last=True)


def _iso(timestamp: float) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(timestamp).isoformat(timespec="seconds")


def describe(run: str | Path, root: str | Path = "runs") -> dict:
    """`runs show`: one run's kind ("head" or "final", as `runs` and `report` say), directory, config.json (its settings, command line, versions)
    and metrics.json (history left out), and its files."""
    run_dir = find_run(run, root)
    kind = kind_of(run_dir)
    config, metrics = finished(run_dir)
    metrics.pop("history", None)
    return {"run": run_dir.as_posix(), "kind": {STAGE2: "head", E2E: "final"}[kind], "config": config, "metrics": metrics,
            "files": sorted(p.relative_to(run_dir).as_posix() for p in run_dir.iterdir())}


def load_model(run_dir: str | Path) -> nn.Module:
    """The model a run predicts with, on the CPU in eval mode: an end-to-end E2EModel (`.encoders`
    take images and captions) or a stage-2 HeadNet (`.dims`: cached features in)."""
    if kind_of(run_dir) == E2E:
        return e2e_predict.load_run(run_dir)[0]
    return Head.load(run_dir).net


def predict(run_dir: str | Path, data, cache: str | Path, out: str | Path, proba: bool = False) -> Path:
    """The dataset's rows to predict (COMP5329: test.csv) with the run's labels, in order, >= 1 label
    each; with `proba`, a probability column per label. A stage-2 run reads its encoders' features
    from `cache` (fingerprints checked); an end-to-end run reads the images and captions itself."""
    kind = kind_of(run_dir)
    finished(run_dir)  # a run killed while saving is never used
    dataset = load_dataset(data)
    # Never over or into an input: the dataset, the run, a cache, results.parquet (before any work).
    check_target(out, inputs_of(dataset=dataset, caches=[cache], run_dirs=[run_dir]))
    probs, preds = e2e_predict.predict_run(run_dir, dataset) if kind == E2E else predict_stage2(run_dir, dataset, cache)
    return write_predictions(out, dataset.predictions(preds, probs if proba else None))
