"""The runs under a root: listing, finding one by id, the `runs` table, prediction. What a run
directory holds and how its model loads is its kind's (featcache.runs.kinds).

    list_runs(root)                      every run under root with a model to load
    find_run(run, root)                  a run by directory, id, or a part of the id only it has
    e2e_results(root)                    finished end-to-end runs as rows of the results table
    run_table(root), describe(run, root) the `runs` and `runs show` commands
    predict(run_dir, data, cache, out)   predictions of the dataset's rows to predict (a submission for COMP5329)
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from featcache.data import load_dataset
from featcache.outputs import check_target, inputs_of, write_predictions
from featcache.runs.errors import RunError
from featcache.runs.kinds import KINDS, E2ERun, HeadRun, open_run


def list_runs(root: str | Path, kind: str | None = None, say=None) -> list[Path]:
    """Every complete run under root (nested ones too, as ablate writes them), sorted; only those of
    `kind` (a key of featcache.runs.kinds.KINDS) when given. A run is complete once its
    metrics.json, written last, is there: a run killed while saving is never listed, and `say` (if
    given) is told which were left out."""
    root = Path(root)
    kinds = KINDS.values() if kind is None else [KINDS[kind]]
    runs = set().union(*(cls.under(root) for cls in kinds))
    incomplete = sorted(r for r in runs if not (r / "metrics.json").exists())
    if incomplete and say:
        say(f"left out {len(incomplete)} incomplete runs (no metrics.json; killed while saving, or still running): "
            + ", ".join(str(r) for r in incomplete[:5]) + (" ..." if len(incomplete) > 5 else ""))
    return sorted(runs - set(incomplete))


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
    for run_dir in list_runs(root, E2ERun.kind):  # complete runs only
        run = E2ERun(run_dir)
        config, metrics = run.finished()
        facts = run.summary(config, metrics)
        rows.append({"run": run_dir.relative_to(root).as_posix(), "kind": run.label, "encoders": facts["encoders"],
                     "head": facts["head"], "variant": "default", "sample_f1": metrics["tuned"]["sample_f1"],
                     "tuned_out_of_fold": metrics.get("tuned_out_of_fold"), "fit_seconds": facts["fit_seconds"]})
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
        parts.append(heads.with_columns(kind=pl.lit(HeadRun.label)).unique("run", keep="last", maintain_order=True))
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
    """`runs show`: one run's kind ("head" or "final", as `runs` and `report` say), directory,
    config.json (its settings, command line, versions) and metrics.json (history left out), and its files."""
    run_dir = find_run(run, root)
    found = open_run(run_dir)
    config, metrics = found.finished()
    metrics.pop("history", None)
    return {"run": run_dir.as_posix(), "kind": found.label, "config": config, "metrics": metrics,
            "files": sorted(p.relative_to(run_dir).as_posix() for p in run_dir.iterdir())}


def predict(run_dir: str | Path, data, cache: str | Path, out: str | Path, proba: bool = False) -> Path:
    """The dataset's rows to predict (COMP5329: test.csv) with the run's labels, in order, >= 1 label
    each; with `proba`, a probability column per label. A stage-2 run reads its encoders' features
    from `cache` (fingerprints checked); an end-to-end run reads the images and captions itself."""
    run = open_run(run_dir)
    run.finished()  # a run killed while saving is never used
    dataset = load_dataset(data)
    # Never over or into an input: the dataset, the run, a cache, results.parquet (before any work).
    check_target(out, inputs_of(dataset=dataset, caches=[cache], run_dirs=[run_dir]))
    probs, preds = run.predict(dataset, cache)
    return write_predictions(out, dataset.predictions(preds, probs if proba else None))
