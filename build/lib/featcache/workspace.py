"""Where featcache keeps what it builds, by default: the feature caches and the runs. Every config
with a cache or runs field declares it with these, so the default and its help live here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from featcache.options import check_fields, option

CACHE, RUNS = Path("cache"), Path("runs")


def cache_field():
    return option(CACHE, "Feature cache directory: <cache>/<name>.h5.")


def runs_field():
    return option(RUNS, "Runs directory: one directory per run, and results.parquet.")


@dataclass(frozen=True)
class Workspace:
    cache: Path = cache_field()
    runs: Path = runs_field()

    def __post_init__(self):
        check_fields(self)
