"""A study's fits, one per core: `jobs` checked in one place, the heads' precision planned once.

    results = fits(tasks, fit, jobs, bar)   # [fit(task) for task in tasks], in order, on `jobs` processes

Workers are forked after the features are loaded, so every worker reads the parent's arrays
(copy-on-write: numpy never writes to them) instead of a pickled copy each; a worker holds the
features once (shared) plus the head it is fitting. Each fit trains on one torch thread (its
HeadConfig), so a fit gives the same weights in any worker as in the parent: `jobs` changes the
wall time, never the table. Results come back in the tasks' order; the one progress bar is the
parent's.
"""

from __future__ import annotations

import multiprocessing
import sys
from dataclasses import replace
from typing import Callable

from featcache.encoders import planner
from heads.train import SHAPE, matmul_rates
from heads.config import HeadConfig

_TASKS: list = []  # set before the fork; workers read it from the parent's memory
_FIT: Callable | None = None


def check_jobs(jobs: int | None, tasks: int | None = None, say=None) -> int:
    """The number of worker processes: None = the cores this process may use; more than the cores
    is allowed (with a note: they share cores, and a fit then runs slower, not wrong)."""
    cores = planner.cpus()
    if jobs is None:
        jobs = cores
    elif isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"--jobs {jobs}: expected a positive number of parallel fits (1: one after another; "
                         f"default: the {cores} cores)")
    elif jobs > cores:
        (say or (lambda m: print(m, file=sys.stderr)))(
            f"note: --jobs {jobs} is more than the {cores} cores; fits will share cores and each will run slower")
    return max(1, min(jobs, tasks)) if tasks else jobs


def planned_head(cfg: HeadConfig, say=None) -> HeadConfig:
    """cfg with bf16 decided: as given, or the faster of bf16 and fp32 measured on this machine
    once (heads.train.matmul_rates) and remembered by featcache.encoders.planner."""
    if cfg.bf16 is not None:
        return cfg
    say = say or (lambda m: print(m, file=sys.stderr))

    def measure() -> dict:
        rates = {k: v / 1e9 for k, v in matmul_rates(cfg.threads).items()}
        return {"path": max(rates, key=rates.get), "rates": rates}

    choice, measured = planner.planned("heads", {"shape": list(SHAPE)}, cfg.threads, measure, say)
    if measured:
        say(planner.rates_line("heads", choice, "GFLOP"))
    return replace(cfg, bf16=choice["path"] == "bf16")


def _run(i: int):
    return i, _FIT(_TASKS[i])


def fits(tasks: list, fit: Callable, jobs: int, bar=None) -> list:
    """[fit(t) for t in tasks], in order; on `jobs` forked workers when jobs > 1."""
    global _TASKS, _FIT
    if jobs <= 1 or len(tasks) <= 1:
        out = []
        for t in tasks:
            out.append(fit(t))
            if bar is not None:
                bar.update()
        return out
    _TASKS, _FIT = tasks, fit
    out = [None] * len(tasks)
    try:
        # fork: the features are the parent's pages, not a copy per worker
        with multiprocessing.get_context("fork").Pool(min(jobs, len(tasks))) as pool:
            for i, result in pool.imap_unordered(_run, range(len(tasks))):
                out[i] = result
                if bar is not None:
                    bar.update()
    finally:
        _TASKS, _FIT = [], None
    return out
