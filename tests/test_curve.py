"""Learning curves (featcache/stage2/curve.py): nested subsets, the power-law fit, the command's files."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from cli import app
from featcache.data import load_dataset
from featcache.stage2.curve import fit_power_law, power_law
from featcache.stage2.experiment import Split


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes is not None else "")


def test_subsets_are_nested_per_seed_and_keep_every_validation_row():
    ids = np.array([f"{i}.jpg" for i in range(100)])
    y = np.eye(4, dtype=np.float32)[np.arange(100) % 4]
    split = Split(ids[:80], ids[80:], y[:80], y[80:])
    quarter, half, full = (split.share(f, seed=1) for f in (0.25, 0.5, 1.0))
    assert (len(quarter.ids_train), len(half.ids_train), len(full.ids_train)) == (20, 40, 80)
    assert set(quarter.ids_train) < set(half.ids_train) < set(full.ids_train)
    assert all(list(s.ids_val) == list(ids[80:]) for s in (quarter, half, full))
    rows = {i: k for k, i in enumerate(split.ids_train)}  # targets stay with their rows
    assert np.array_equal(half.y_train, split.y_train[[rows[i] for i in half.ids_train]])
    assert set(split.share(0.25, seed=2).ids_train) != set(quarter.ids_train)  # another seed, another draw
    assert list(split.share(0.25).ids_train) == list(split.share(0.25, seed=0).ids_train)  # default: the split's seed
    assert quarter.fraction == 0.25 and split.fraction == 1.0
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match="share of the train rows"):
            split.share(bad)


def test_power_law_recovers_its_parameters_and_needs_four_points():
    n = np.array([500, 1000, 2000, 4000, 8000])
    law = fit_power_law(n, power_law(n, 0.9, 2.0, 0.5))
    assert law is not None
    assert law["top"] == pytest.approx(0.9, abs=1e-3) and law["rate"] == pytest.approx(0.5, abs=1e-2)
    assert fit_power_law(n[:3], power_law(n[:3], 0.9, 2.0, 0.5)) is None


def test_learning_curve_command_on_planted_features(planted_data, tmp_path):
    """Planted features carry real signal, so more rows must score better; every file is written."""
    root, cache = planted_data
    out = tmp_path / "curve"
    code, text = invoke("learning-curve", "--encoders", "img", "--encoders", "img,txt", "--fractions", "0.125,0.25,0.5,1",
                        "--seeds", 2, "--extrapolate", "5000", "--target", 0.9, "--data", root, "--cache", cache,
                        "--out", out)
    assert code == 0, text
    table = pl.read_parquet(out / "table.parquet")
    assert sorted(set(table["encoders"])) == ["img", "img+txt"] and (table["seeds"] == 2).all()
    n_train = table["rows"].max()
    assert sorted(set(table["rows"])) == [round(f * n_train) for f in (0.125, 0.25, 0.5, 1)]
    for name in ("img", "img+txt"):
        f1 = table.filter(pl.col("encoders") == name).sort("rows")["sample_f1"]
        assert f1[-1] > f1[0] + 0.02, (name, list(f1))
    assert len(pl.read_parquet(out / "raw.parquet")) == 2 * 4 * 2
    fits = json.loads((out / "fits.json").read_text())
    assert set(fits) == {"img", "img+txt"} and fits["img"]["measured_rows"] == n_train
    assert (out / "curve.png").stat().st_size > 1000
    assert "extrapolated" in text and "at 5,000 rows" in text

    code, text = invoke("learning-curve", "--encoders", "nothere", "--data", root, "--cache", cache, "--out", out)
    assert code != 0 and "nothere.h5" in text


def test_fit_head_train_fraction_trains_on_the_share_and_records_it(planted_data, tmp_path):
    root, cache = planted_data
    code, text = invoke("fit-head", "--encoders", "img", "--train-fraction", 0.25, "--data", root, "--cache", cache,
                        "--runs", tmp_path, "--json")
    assert code == 0, text
    m = json.loads(text.strip().splitlines()[-1])
    full = len(Split.of(load_dataset(root)).ids_train)
    assert m["n_train"] == round(0.25 * full) and m["train_fraction"] == 0.25
    assert json.loads((tmp_path / m["run"] / "config.json").read_text())["train_fraction"] == 0.25
