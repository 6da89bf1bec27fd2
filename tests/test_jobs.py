"""Parallel fits (featcache.stage2.pool): the same table for any --jobs, one check of --jobs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from featcache.data import load_dataset
from featcache.stage2.ablate import ablate_features
from featcache.stage2.curve import curve_points
from featcache.stage2.experiment import Split, load_features
from featcache.stage2.pool import check_jobs
from heads.config import HeadConfig

ROOT = Path(__file__).resolve().parents[1]
SMALL = HeadConfig(width=32, max_steps=12, min_steps=6, bf16=False)
TIMING = {"fit_seconds", "fit_seconds_std", "time", "run"}


def _same(a, b) -> None:
    assert a.columns == b.columns and len(a) == len(b)
    for col in a.columns:
        if col in TIMING:
            continue
        x, y = a[col].to_list(), b[col].to_list()
        assert x == y, col


def test_ablate_gives_the_same_table_for_one_job_and_two(planted_data, tmp_path):
    root, cache = planted_data
    dataset = load_dataset(root)
    features = load_features(cache, ["img", "txt"], dataset)
    split = Split.of(dataset)
    out = {}
    for jobs in (1, 2):
        out[jobs] = ablate_features(features, split, dataset.label_space, tmp_path / f"j{jobs}", base=SMALL,
                                    fusions=["late", "concat"], seeds=2, progress=False, jobs=jobs)
    _same(out[1][0], out[2][0])  # the summary
    _same(out[1][1], out[2][1])  # every fit, in the plan's order
    assert np.isfinite(out[2][0]["tuned_out_of_fold"].to_numpy()).all()


def test_learning_curve_gives_the_same_points_for_one_job_and_two(planted_data):
    root, cache = planted_data
    dataset = load_dataset(root)
    sets = [load_features(cache, ["img"], dataset)]
    a, b = (curve_points(sets, Split.of(dataset), SMALL, (0.5, 1.0), 2, progress=False, jobs=j) for j in (1, 2))
    _same(a, b)


@pytest.mark.parametrize("jobs", [0, -1, 1.5, True])
def test_bad_jobs_is_one_value_error(jobs):
    with pytest.raises(ValueError, match="--jobs .*: expected a positive number of parallel fits"):
        check_jobs(jobs)


def test_more_jobs_than_cores_is_allowed_with_a_note():
    notes = []
    assert check_jobs(1000, say=notes.append) == 1000
    assert "more than the" in notes[0]
    assert check_jobs(1000, tasks=3, say=notes.append) == 3
    assert check_jobs(None) >= 1


@pytest.mark.parametrize("command", ["ablate", "learning-curve"])
def test_cli_refuses_jobs_zero_in_one_line(planted_data, tmp_path, command):
    root, cache = planted_data
    extra = ["--candidates", "img,txt"] if command == "ablate" else ["--encoders", "img"]
    from typer.testing import CliRunner

    from cli import app

    r = CliRunner().invoke(app, [command, *extra, "--jobs", "0", "--data", str(root), "--cache", str(cache),
                                 "--runs", str(tmp_path / "runs")])
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: jobs=0: must be in [1, 1024]")


def test_api_ablate_refuses_bad_jobs_with_the_same_message(planted_data, tmp_path):
    import featcache as fc

    root, cache = planted_data
    with pytest.raises(ValueError, match=r"jobs=-1: must be in \[1, 1024\] \(AblateConfig\)"):
        fc.ablate(root, ["img", "txt"], cache=cache, runs=tmp_path / "runs", jobs=-1)
