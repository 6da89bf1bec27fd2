"""Faults and bad input (issue 8): nothing is lost, nothing is mixed, nothing foreign is run.

What the other files already prove is not repeated here: a kill between two chunk writes and
resume, a truncated complete cache, two extractors at once, changed preprocessing or weights
(tests/test_extract.py); CSV round trips and unknown/duplicate rows in the reader
(tests/test_data.py, tests/test_csv_properties.py); a predict cache with another fingerprint
(tests/test_heads.py). This file adds kills inside a write and at random times, zeroed and
truncated files, another dataset or encoder at extract / fit-head / predict time, a full disk,
foreign checkpoints, a kill while fit-head saves its run, a read-only output folder, and every
data fault through `extract` itself. The faults themselves (kills, data damages, the planted
pickle) are benchmarks/fault_scenarios.py, which benchmarks/faults.py runs more often.
Small generated data, random-init encoders, threads fixed (bit-for-bit reproducible)."""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
import re
import shutil
import signal
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from featcache.data import load_dataset
from featcache.stage1.extract import extract
from featcache.data.synth import make_dataset
from stores.features import StoreError, cache_path, open_features, partial_path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "benchmarks"))  # after the project: benchmarks/heads.py must not shadow the heads package
from cli import app  # noqa: E402
from fault_scenarios import (CLI_FAST, DATA_FAULTS, ENC, FAST, Evil, fit_one, kill_child, kill_in_save,  # noqa: E402
                             read_only_cli)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), n_train=24, n_test=8, seed=4, image_size=40)


@pytest.fixture(scope="module")
def clean_cache(data_root, tmp_path_factory) -> Path:
    """The cache of the uninterrupted run (read-only for tests: stage 2 fits on it)."""
    cache = tmp_path_factory.mktemp("clean")
    extract(load_dataset(data_root), ENC, cache, **FAST)
    return cache


@pytest.fixture(scope="module")
def clean(clean_cache):
    """The uninterrupted run every faulty one is compared with."""
    return open_features(clean_cache, ENC)


def copy_data(data_root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(data_root, tmp_path / "data"))


def assert_same(cache: Path, clean) -> None:
    fs = open_features(cache, ENC)
    assert len(set(fs.ids.tolist())) == len(fs.ids), "duplicate ImageIDs"
    assert fs.ids.tolist() == clean.ids.tolist(), "missing or reordered ImageIDs"
    assert fs.fingerprint == clean.fingerprint
    np.testing.assert_array_equal(fs.features, clean.features)


# --- cache faults -------------------------------------------------------------------------------

def test_kill_9_inside_writes_and_at_random_times_then_resume(data_root, clean, tmp_path):
    rng = random.Random(8)
    # 8 chunks of 4 rows: flushes 1..16 (+ the one at open). Odd: data written, rows_done not yet.
    codes = [kill_child(data_root, tmp_path, kill_at=k) for k in (4, 5)]
    codes.append(kill_child(data_root, tmp_path, after=rng.uniform(0.0, 0.05)))  # anywhere in the ~50 ms writing loop
    assert all(c in (-signal.SIGKILL, 0) for c in codes), codes
    assert -signal.SIGKILL in codes
    extract(load_dataset(data_root), ENC, tmp_path, **FAST)
    assert_same(tmp_path, clean)


def test_zeroed_cache_is_refused_and_a_damaged_partial_is_rebuilt(data_root, clean, tmp_path):
    dataset = load_dataset(data_root)
    extract(dataset, ENC, tmp_path, **FAST)
    path = cache_path(tmp_path, ENC)
    path.write_bytes(bytes(path.stat().st_size))  # zeroed in place (a crashed disk, a bad copy)
    with pytest.raises(StoreError, match=r"efficientnet_lite0.h5: corrupt or truncated"):
        open_features(tmp_path, ENC)
    with pytest.raises(StoreError, match=r"efficientnet_lite0.h5: not a readable feature cache.*--force"):
        extract(dataset, ENC, tmp_path, **FAST)
    extract(dataset, ENC, tmp_path, force=True, **FAST)
    assert_same(tmp_path, clean)
    path.unlink()
    assert kill_child(data_root, tmp_path, kill_at=8) == -signal.SIGKILL  # leaves a partial
    partial = partial_path(path)
    killed = partial.read_bytes()
    for damage in (lambda b: b[: len(b) // 2], lambda b: bytes(len(b)), lambda b: b""):
        path.unlink(missing_ok=True)
        partial.write_bytes(damage(killed))
        messages = []
        extract(dataset, ENC, tmp_path, **{**FAST, "log": messages.append})
        assert any("efficientnet_lite0.h5.partial: it is unreadable" in m and "starting over" in m for m in messages), messages
        assert_same(tmp_path, clean)


def test_disk_full_mid_write_keeps_the_previous_cache_and_resumes(data_root, clean, tmp_path, monkeypatch):
    dataset = load_dataset(data_root)
    extract(dataset, ENC, tmp_path, **FAST)
    before = open_features(tmp_path, ENC)
    writes, setitem = [0], h5py.Dataset.__setitem__

    def disk_full(self, key, value):
        writes[0] += 1
        if writes[0] == 3:  # the third chunk's data write
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        setitem(self, key, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", disk_full)
    with pytest.raises(StoreError, match=r"efficientnet_lite0.h5.partial: write failed at row 8 .*No space left on device.*"
                                         r"efficientnet_lite0.h5 is unchanged"):
        extract(dataset, ENC, tmp_path, **{**FAST, "image_size": 40}, force=True)
    after = open_features(tmp_path, ENC)  # the previous complete cache still opens, unchanged
    assert after.fingerprint == before.fingerprint
    np.testing.assert_array_equal(after.features, before.features)
    monkeypatch.setattr(h5py.Dataset, "__setitem__", setitem)  # space freed: resume after row 8
    resumed = extract(dataset, ENC, tmp_path, **{**FAST, "image_size": 40}, force=True)
    assert resumed.resumed_from == 8 and open_features(tmp_path, ENC).fingerprint != before.fingerprint


def test_a_cache_from_another_dataset_or_encoder_is_never_used(data_root, clean, tmp_path):
    other = copy_data(data_root, tmp_path)
    train = other / "train.csv"
    train.write_text(train.read_text().replace("A photo", "A picture", 1))  # same ImageIDs, other data
    cache = tmp_path / "cache"
    extract(load_dataset(data_root), ENC, cache, **FAST)
    with pytest.raises(StoreError, match=r"different configuration.*differs in: dataset"):
        extract(load_dataset(other), ENC, cache, **FAST)
    # stage 2: fit-head and predict check the cache against the dataset they are given
    args = ["--encoders", ENC, "--cache", str(cache), "--runs", str(tmp_path / "runs"), "--epochs", "1", "--json"]
    out = CliRunner().invoke(app, ["fit-head", "--data", str(other), *args])
    assert out.exit_code == 2 and "efficientnet_lite0.h5: built from another dataset" in out.output, out.output
    out = CliRunner().invoke(app, ["fit-head", "--data", str(data_root), *args])
    assert out.exit_code == 0, out.output
    run = json.loads(out.output)["run_dir"]
    sub = tmp_path / "sub.csv"
    out = CliRunner().invoke(app, ["predict", "--run", run, "--data", str(other), "--cache", str(cache), "--out", str(sub)])
    assert out.exit_code == 2 and "built from another dataset" in out.output and not sub.exists(), out.output
    # a cache file copied under another encoder's name
    shutil.copy(cache_path(cache, ENC), cache_path(cache, "mobilenetv3_large"))
    with pytest.raises(StoreError, match=r"mobilenetv3_large.h5: holds features of encoder 'efficientnet_lite0'"):
        open_features(cache, "mobilenetv3_large")


# --- runs and outputs ---------------------------------------------------------------------------

def test_a_kill_while_fit_head_saves_leaves_no_usable_run(data_root, clean_cache, tmp_path):
    from featcache.study.benchmark import find_runs
    from featcache.runs.catalog import list_runs
    from stores.results import read_results

    runs = tmp_path / "runs"
    done = fit_one(data_root, clean_cache, runs)
    assert kill_in_save(data_root, clean_cache, runs) == -signal.SIGKILL
    [killed] = [d for d in runs.iterdir() if d.is_dir() and d != done]
    assert (killed / "head.json").exists() and not (killed / "metrics.json").exists()
    said = []
    assert list_runs(runs, say=said.append) == [done]
    assert len(said) == 1 and str(killed) in said[0], said
    assert find_runs(runs, "all") == [done]  # benchmark --heads all
    with pytest.raises(FileNotFoundError, match=killed.name):  # benchmark --heads <the killed run>
        find_runs(runs, killed.name)
    assert read_results(runs / "results.parquet")["run"].to_list() == [done.name]  # report, ranked
    out = CliRunner().invoke(app, ["predict", "--run", str(killed), "--data", str(data_root), "--cache", str(clean_cache),
                                   "--out", str(tmp_path / "sub.csv")])
    assert out.exit_code == 2 and f"{killed}: incomplete run (no metrics.json" in out.output, out.output
    assert not (tmp_path / "sub.csv").exists()


def test_learning_curve_into_the_dataset_is_refused_before_any_fit_and_mixes_nothing_in(data_root, clean_cache, tmp_path):
    root = copy_data(data_root, tmp_path)  # a copy has the same fingerprint: the cache fits it
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    args = ["learning-curve", "--encoders", ENC, "--fractions", "1", "--seeds", "1", "--data", str(root),
            "--cache", str(clean_cache)]
    for out, says in [(root, f"{root}: is an input of this command"), (root / "train.csv", "is a file, not a directory")]:
        result = CliRunner().invoke(app, [*args, "--out", str(out)])
        assert result.exit_code == 2 and "error: " in result.output and says in result.output, result.output
        assert "fits in" not in result.output  # no head was fitted
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    assert CliRunner().invoke(app, [*args, "--out", str(tmp_path / "curve")]).exit_code == 0  # elsewhere it runs


def test_a_read_only_output_folder_is_a_named_error_and_keeps_the_previous_file(data_root, clean_cache, tmp_path):
    run = fit_one(data_root, clean_cache, tmp_path / "runs")
    folder = tmp_path / "read-only"
    folder.mkdir()
    out, previous = folder / "sub.csv", "ImageID,Labels\nprevious,1\n"
    out.write_text(previous)
    proc = read_only_cli(folder, "predict", "--run", run, "--data", data_root, "--cache", clean_cache, "--out", out)
    if proc is None:
        pytest.skip("no read-only folder without root tricks here: needs `unshare --map-root-user --mount` and mount")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {out}: folder {folder} is not writable") and "Traceback" not in proc.stderr
    assert out.read_text() == previous and [p.name for p in folder.iterdir()] == ["sub.csv"]
    # an output directory there (report, learning-curve, ablate) is refused the same way, before any work
    proc = read_only_cli(folder, "report", "--runs", tmp_path / "runs", "--results", tmp_path / "runs" / "results.parquet",
                         "--out", folder / "report")
    assert proc.returncode == 2 and f"error: {folder / 'report'}: folder {folder} is not writable" in proc.stderr, proc.stderr
    assert not (folder / "report").exists() and "Traceback" not in proc.stderr


# --- model files --------------------------------------------------------------------------------

def test_every_torch_load_is_weights_only():
    calls = [(p, line) for p in [*ROOT.glob("featcache/**/*.py"), *ROOT.glob("heads/*.py"), *ROOT.glob("stores/*.py"),
                                 ROOT / "cli.py"]
             for line in p.read_text().splitlines() if "torch.load(" in line]
    assert calls, "no torch.load found: update this test"
    assert all("weights_only=True" in line for _, line in calls), calls
    assert not [p for p in ROOT.glob("**/*.py") if ".venv" not in p.parts and "pickle.load" in p.read_text()
                and p.name not in ("test_faults.py", "fault_scenarios.py")]


@pytest.mark.parametrize("kind", ["pickle", "torch-save", "bad-safetensors"])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on the planted pickle: expected here
def test_a_malicious_or_tampered_weights_file_is_refused_and_never_run(data_root, tmp_path, kind):
    marker = tmp_path / "pwned"
    if kind == "pickle":
        weights = tmp_path / "evil.pth"
        weights.write_bytes(pickle.dumps({"state_dict": Evil(marker)}))
    elif kind == "torch-save":
        weights = tmp_path / "evil.pt"
        torch.save({"state_dict": Evil(marker)}, weights)
    else:
        weights = tmp_path / "evil.safetensors"
        weights.write_bytes(b"\xff" * 8 + b"{not json")
    out = CliRunner().invoke(app, ["extract", "--data", str(data_root), "--cache", str(tmp_path / "c"),
                                   *[a for a in CLI_FAST if a != "--random-init"], "--weights", str(weights)])
    assert out.exit_code == 2, out.output
    assert f"{weights.name}: not a loadable weights file, refused without running it" in out.output
    assert not marker.exists()
    assert not cache_path(tmp_path / "c", ENC).exists()


def test_a_malicious_e2e_optimizer_checkpoint_is_refused(tmp_path):
    from safetensors.torch import save_file

    from featcache.e2e.checkpoints import CHECKPOINTS, load_checkpoint

    model = torch.nn.Linear(3, 2)
    ckpt = tmp_path / "run" / CHECKPOINTS / "epoch-1"
    ckpt.mkdir(parents=True)
    save_file(model.state_dict(), str(ckpt / "model.safetensors"))
    marker = tmp_path / "pwned"
    torch.save({"optimizer": Evil(marker)}, ckpt / "optimizer.pt")
    (ckpt / "state.json").write_text("{}")
    with pytest.raises(ValueError, match=r"epoch-1/optimizer.pt: not a loadable checkpoint, refused without running it"):
        load_checkpoint(tmp_path / "run", model, torch.optim.Adam(model.parameters()))
    assert not marker.exists()


# --- data faults, through `extract` -------------------------------------------------------------

@pytest.mark.parametrize("fault", list(DATA_FAULTS))
def test_data_fault_is_named_or_a_counted_skip(data_root, tmp_path, fault):
    damage, error = DATA_FAULTS[fault]
    root = copy_data(data_root, tmp_path)
    damage(root)
    records = 32 + (fault == "test.csv ID without image")
    args = ["extract", "--data", str(root), "--cache", str(tmp_path / "c"), *CLI_FAST]
    strict = CliRunner().invoke(app, args)
    assert strict.exit_code == 2 and re.search(error, strict.output), strict.output
    assert not cache_path(tmp_path / "c", ENC).exists()
    lenient = CliRunner().invoke(app, args + ["--lenient"])
    assert lenient.exit_code == 0 and re.search(r"skipped 1 (items|unreadable CSV rows)", lenient.output), lenient.output
    assert len(open_features(tmp_path / "c", ENC).ids) == records - 1  # every other row is cached


@pytest.mark.parametrize("mode", ["L", "CMYK", "I;16", "1x1", "RGBA", "P"])
def test_odd_image_modes_and_sizes_extract(data_root, tmp_path, mode):
    root = copy_data(data_root, tmp_path)
    path = root / "data" / "7.jpg"
    if mode == "I;16":
        Image.fromarray((np.arange(40 * 40).reshape(40, 40) * 40).astype(np.uint16)).save(path.with_suffix(".png"))
        path.write_bytes(path.with_suffix(".png").read_bytes())
    elif mode == "1x1":
        Image.new("RGB", (1, 1), (200, 10, 10)).save(path, format="JPEG")
    else:
        im = Image.open(path).convert(mode)
        im.save(path, format="JPEG" if mode in ("L", "CMYK") else "PNG")
    result = extract(load_dataset(root), ENC, tmp_path / "c", **FAST)
    fs = open_features(tmp_path / "c", ENC)
    assert result.rows == 32 and not result.skipped and np.isfinite(fs.rows(["7.jpg"])).all()
