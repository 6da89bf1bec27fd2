"""Runs as a person reads them: the table of runs, and one run's settings, metrics and files."""

from __future__ import annotations

import os

import polars as pl

from featcache.stage2.thresholds import metrics_table
from featcache.tables import render


def format_runs(table: pl.DataFrame) -> str:
    if not len(table):
        return "no complete runs\nnext: python cli.py fit-head --encoders a,b --data DIR   (or ablate)"
    return render(table, {"run": "run", "kind": "kind", "time": "time", "encoders": "encoders", "head": "head",
                          "seed": "seed", "sample_f1": "tuned", "tuned_out_of_fold": "out of fold", "map": "mAP",
                          "fit_seconds": "fit s"}, formats={"fit_seconds": ".2f"}) + \
        "\nnext: python cli.py runs show ID   (any unique part of a run id works wherever a run is named)"


def format_run(doc: dict) -> str:
    config = doc["config"]
    settings = config.get("head") or config.get("config") or {}
    lines = [f"{doc['run']} ({doc['kind']})",
             "encoders: " + " + ".join(config.get("encoder_names") or config.get("encoders") or []),
             "settings: " + ", ".join(f"{k}={v}" for k, v in settings.items())]
    if config.get("command"):
        lines.append(f"command: {config['command']}  (git {config.get('git') or '-'}; "
                     + ", ".join(f"{k} {v}" for k, v in (config.get("versions") or {}).items()) + ")")
    lines += [metrics_table(doc["metrics"]), "files: " + ", ".join(doc["files"]),
              f"next: python cli.py predict --run {doc['run']} --out submission.csv"
              + ("" if os.environ.get("FEATCACHE_DATA") else "   (add --data DIR, or set FEATCACHE_DATA)")]
    return "\n".join(lines)
