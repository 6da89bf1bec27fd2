"""The fault classes of issue 28, one rule each (docs/faults.md): only regular files are opened as
data, photos decode as a viewer shows them, outputs never touch inputs, every artifact is checked
when read, OS limits are one-line errors. Rule 1 (the CSV reader) is tests/test_csv_properties.py."""

from __future__ import annotations

import io
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cli import app
from featcache.data import DataError, load_dataset, load_image
from featcache.data.synth import make_dataset

CLI_FAST = ["--encoder", "efficientnet_lite0", "--random-init", "--image-size", "32", "--batch-size", "4",
            "--threads", "1", "--num-workers", "0", "--backend", "torch", "--precision", "fp32"]


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("small"), n_train=16, n_test=4, seed=1, image_size=24)


def copy(root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(root, tmp_path / "data"))


@pytest.fixture
def no_hang():
    """A read that blocks fails the test after 60 s instead of hanging the suite."""
    def alarm(*_):
        raise TimeoutError("blocked: a read did not return")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


# --- rule 4: only regular files are opened as data -------------------------------------------------

def test_a_fifo_named_like_a_photo_is_refused_or_skipped_never_blocks(small, tmp_path, no_hang):
    root = copy(small, tmp_path)
    (root / "data" / "3.jpg").unlink()
    os.mkfifo(root / "data" / "3.jpg")
    with pytest.raises(DataError, match=r"3.jpg: not a regular file \(a FIFO\)"):
        load_image(root / "data" / "3.jpg")
    check = CliRunner().invoke(app, ["data", "check", "--data", str(root), "--json"])
    assert check.exit_code == 0 and "3.jpg" in check.output and "a FIFO" in check.output, check.output
    args = ["extract", "--data", str(root), "--cache", str(tmp_path / "cache"), *CLI_FAST]
    strict = CliRunner().invoke(app, args)
    assert strict.exit_code == 2 and "3.jpg: not a regular file (a FIFO)" in strict.output, strict.output
    lenient = CliRunner().invoke(app, args + ["--lenient"])
    assert lenient.exit_code == 0 and "skipped 1" in lenient.output, lenient.output


@pytest.mark.parametrize("name", ["train.csv", "test.csv", "labels.json"])
def test_a_fifo_as_a_dataset_file_is_refused(small, tmp_path, name, no_hang):
    root = copy(small, tmp_path)
    (root / name).unlink(missing_ok=True)
    os.mkfifo(root / name)
    with pytest.raises(DataError, match=rf"{name}: not a regular file \(a FIFO\)"):
        load_dataset(root)


# --- rule 5: photos decode as a viewer shows them ----------------------------------------------------

def _saved(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    (tmp_path / "r.jpg").write_bytes(_saved(im, "JPEG", exif=exif))
    assert load_image(tmp_path / "r.jpg").size == (20, 40)


@pytest.mark.parametrize("mode, values", [("F", np.linspace(0, 1, 64 * 64)), ("F", np.linspace(-3, 900, 64 * 64)),
                                          ("I;16", np.linspace(0, 65535, 64 * 64)), ("I", np.linspace(0, 2**20, 64 * 64))])
def test_wide_and_float_images_are_scaled_not_clipped(tmp_path, mode, values):
    arr = values.reshape(64, 64).astype({"F": np.float32, "I;16": np.uint16, "I": np.int32}[mode])
    im = Image.fromarray(arr, mode=mode) if mode != "I;16" else Image.fromarray(arr)
    (tmp_path / "w.tif").write_bytes(_saved(im, "TIFF"))
    got = np.asarray(load_image(tmp_path / "w.tif"))
    assert got.min() == 0 and got.max() == 255 and 100 < got.mean() < 155  # a gradient, not black or white


def test_float_nan_pixels_do_not_blacken_the_photo(tmp_path):
    arr = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    arr[0, 0] = np.nan
    (tmp_path / "n.tif").write_bytes(_saved(Image.fromarray(arr, mode="F"), "TIFF"))
    assert np.asarray(load_image(tmp_path / "n.tif")).max() == 255


def test_the_decoder_version_is_in_every_image_cache_fingerprint(small):
    from featcache.data.images import DECODE_VERSION
    from featcache.stage1.fingerprint import fingerprint_spec
    from featcache.encoders.registry import get_cfg
    from featcache.encoders.weights import resolve_weights

    cfg = get_cfg("efficientnet_lite0")
    spec = fingerprint_spec(cfg, resolve_weights(cfg, pretrained=False), load_dataset(small), 0, "float16", None)
    assert spec["decode"] == DECODE_VERSION >= 2


# --- a fitted run on generated data, for rules 2, 3 and 6 -------------------------------------------

FAST = dict(pretrained=False, image_size=32, batch_size=8, threads=1, num_workers=0, progress=False,
            log=lambda m: None, backend="torch", precision="fp32")


@pytest.fixture(scope="module")
def world(small, tmp_path_factory):
    """(data, cache, runs, run): a head fitted on a random-init efficientnet_lite0 cache."""
    from featcache.stage1.extract import extract
    from featcache.stage2.experiment import fit_head
    from heads.config import HeadConfig

    base = tmp_path_factory.mktemp("world")
    cache, runs = base / "cache", base / "runs"
    extract(load_dataset(small), "efficientnet_lite0", cache, **FAST)
    run = fit_head(small, ["efficientnet_lite0"], cache=cache, head=HeadConfig(width=8, epochs=1), runs=runs)[0]
    return small, cache, runs, run


def snapshot(*roots: Path) -> dict:
    return {p: p.read_bytes() for r in roots for p in ([r] if r.is_file() else r.rglob("*")) if p.is_file()}


# --- rule 2: outputs never touch inputs ---------------------------------------------------------------

def test_predict_never_writes_over_or_into_an_input(world, tmp_path):
    data, cache, runs, run = world
    before = snapshot(data, cache, runs)
    for out in [data / "data" / "3.jpg", data / "sub.csv", runs / "results.parquet", run / "x.csv", cache / "x.csv",
                cache / "efficientnet_lite0.h5", data / "train.csv"]:
        result = CliRunner().invoke(app, ["predict", "--run", str(run), "--data", str(data), "--cache", str(cache),
                                          "--out", str(out)])
        assert result.exit_code == 2 and "an input of this command" in result.output, (out, result.output)
        assert len(result.output.strip().splitlines()) == 1
    assert snapshot(data, cache, runs) == before
    ok = CliRunner().invoke(app, ["predict", "--run", str(run), "--data", str(data), "--cache", str(cache),
                                  "--out", str(tmp_path / "sub.csv")])
    assert ok.exit_code == 0, ok.output
    assert len((tmp_path / "sub.csv").read_text().splitlines()) == 1 + len(load_dataset(data).test)


def test_cache_and_runs_that_are_files_or_each_other_are_refused_before_any_work(world, tmp_path):
    data, cache, runs, _ = world
    (tmp_path / "file").write_text("mine")
    fit = ["fit-head", "--encoders", "efficientnet_lite0", "--data", str(data), "--epochs", "1"]
    for args, says in [([*fit, "--cache", str(cache), "--runs", str(cache)], "the same directory"),
                       ([*fit, "--cache", str(cache), "--runs", str(cache / "runs")], "one inside the other"),
                       ([*fit, "--cache", str(tmp_path / "file"), "--runs", str(runs)], "is a file"),
                       (["extract", "--data", str(data), "--cache", str(tmp_path / "file"), *CLI_FAST], "is a file"),
                       (["extract", "--data", str(data), "--cache", str(cache / "efficientnet_lite0.h5"), *CLI_FAST],
                        "is a file"),
                       (["extract", "--data", str(data), "--cache", str(data / "cache"), *CLI_FAST],
                        "an input of this command")]:
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and says in result.output and "Traceback" not in result.output, (args, result.output)
    assert (tmp_path / "file").read_text() == "mine" and not (data / "cache").exists()


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(base=st.sampled_from(["data", "data/data", "data/train.csv", "data/data/3.jpg", "cache", "cache/efficientnet_lite0.h5",
                             "run", "run/head.safetensors", "runs", "runs/results.parquet", "elsewhere", "."]),
       tail=st.sampled_from(["", "x.csv", "sub/x.csv", "..", "../x.csv", "../../x.csv", ".", "./x.csv"]),
       whole=st.booleans())
def test_random_output_paths_are_refused_or_touch_no_input(world, base, tail, whole):
    from featcache.outputs import OutputError, check_out_dir, check_target, inputs_of

    data, cache, runs, run = world
    top = runs.parent
    names = {"data": data, "cache": cache, "run": run, "runs": runs, "elsewhere": top / "elsewhere", ".": top}
    head, _, rest = base.partition("/")
    path = names[head] / rest / tail if rest else names[head] / tail
    inputs = inputs_of(dataset=load_dataset(data), caches=[cache], run_dirs=[run])
    try:
        target = (check_out_dir(path, inputs, whole=whole) if whole else check_target(path, inputs)).resolve()
    except OutputError as e:
        assert "\n" not in str(e)
        return
    protected = [data.resolve(), cache.resolve(), run.resolve(), (runs / "results.parquet").resolve()]
    for p in protected:
        assert target != p and not target.is_relative_to(p), (path, p)
        if whole:
            assert not p.is_relative_to(target), (path, p)


# --- rule 3: every artifact is checked when read ---------------------------------------------------

import math  # noqa: E402
import sys  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "benchmarks"))  # after the project: benchmarks/heads.py must not shadow the heads package
from fault_scenarios import mutate  # noqa: E402


def _mutations():
    leaf = st.sampled_from([float("nan"), "x", None, -1, [], {}, 1e9, True])
    return st.one_of(
        st.tuples(st.just("truncate"), st.floats(0, 0.99)),
        st.tuples(st.just("replace"), st.sampled_from([{}, [1, 2], "x", 1, None])),
        st.tuples(st.just("drop"), st.integers(0, 1000)),
        st.tuples(st.just("extra"), st.text(min_size=1, max_size=5)),
        st.tuples(st.just("leaf"), st.tuples(st.integers(0, 1000), leaf)),
    )


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["metrics.json", "config.json", "thresholds.json"]), how=_mutations())
def test_a_mutated_run_file_is_a_one_line_error_naming_it_or_the_same_result(world, tmp_path_factory, name, how):
    from featcache.runs.catalog import describe
    from featcache.runs.errors import RunError
    from featcache.stage2.experiment import load_head_run

    data, cache, runs, run = world
    copy = Path(shutil.copytree(run, tmp_path_factory.mktemp("mut") / run.name))
    mutate(copy / name, how)
    shown_cli = CliRunner().invoke(app, ["runs", "show", str(copy), "--runs", str(runs)])
    assert shown_cli.exit_code in (0, 2) and "Traceback" not in shown_cli.output, (shown_cli.output, shown_cli.exception)
    if shown_cli.exit_code == 2:
        assert name in shown_cli.output and len(shown_cli.output.strip().splitlines()) == 1
    try:
        shown = describe(copy, runs)
        head, thresholds, config = load_head_run(copy)
    except RunError as e:
        assert "\n" not in str(e) and name in str(e), str(e)
        return
    # accepted: what the run predicts with is what it was
    original = load_head_run(run)
    assert thresholds.values == original[1].values and config["encoders"] == original[2]["encoders"]
    assert all(math.isfinite(shown["metrics"][k]["sample_f1"]) for k in ("at_0.5", "tuned"))


def test_runs_show_with_empty_or_listed_metrics_exits_2_naming_the_file(world, tmp_path):
    data, cache, runs, run = world
    for content in ["{}", "[1, 2]", ""]:
        copy = Path(shutil.copytree(run, tmp_path / f"r{len(content)}"))
        (copy / "metrics.json").write_text(content)
        result = CliRunner().invoke(app, ["runs", "show", str(copy), "--runs", str(runs)])
        assert result.exit_code == 2 and "metrics.json" in result.output and "Traceback" not in result.output, result.output


def test_changed_head_weights_are_refused_by_their_hash(world, tmp_path):
    from featcache.runs.errors import RunError
    from featcache.stage2.experiment import load_head_run

    copy = Path(shutil.copytree(world[3], tmp_path / "r"))
    data = bytearray((copy / "head.safetensors").read_bytes())
    data[-1] ^= 1
    (copy / "head.safetensors").write_bytes(bytes(data))
    with pytest.raises(RunError, match=r"head.safetensors: sha256 .* is not the .* its run recorded"):
        load_head_run(copy)


@pytest.mark.parametrize("how, says", [("bytes", "stored as"), ("float64", "stored as float64"), ("nan", "not finite"),
                                       ("rows", "shape")])
def test_a_damaged_feature_cache_is_named(world, tmp_path, how, says):
    import h5py

    from stores.features import StoreError, open_features

    data, cache, _, _ = world
    copy = Path(shutil.copytree(cache, tmp_path / "cache"))
    with h5py.File(copy / "efficientnet_lite0.h5", "r+") as f:
        x = f["features"][()]
        del f["features"]
        if how == "bytes":
            f["features"] = np.array([b"x" * 4] * len(x))
        elif how == "float64":
            f["features"] = x.astype(np.float64)
        elif how == "nan":
            x[2, 3] = np.nan
            f["features"] = x
        else:
            f["features"] = x[:-1]
    with pytest.raises(StoreError, match=says):
        open_features(copy, "efficientnet_lite0")
    result = CliRunner().invoke(app, ["fit-head", "--encoders", "efficientnet_lite0", "--data", str(data), "--cache",
                                      str(copy), "--runs", str(tmp_path / "runs"), "--epochs", "1"])
    assert result.exit_code == 2 and "efficientnet_lite0.h5" in result.output and "Traceback" not in result.output


def test_an_empty_results_table_is_named_and_a_failed_save_leaves_no_run(world, tmp_path):
    data, cache, _, _ = world
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "results.parquet").write_bytes(b"")
    listed = CliRunner().invoke(app, ["runs", "--runs", str(runs)])
    assert listed.exit_code == 2 and "results.parquet" in listed.output and "Traceback" not in listed.output
    fit = CliRunner().invoke(app, ["fit-head", "--encoders", "efficientnet_lite0", "--data", str(data), "--cache",
                                   str(cache), "--runs", str(runs), "--epochs", "1"])
    assert fit.exit_code == 2 and "cannot save the run" in fit.output
    assert [p.name for p in runs.iterdir()] == ["results.parquet"] or not any(runs.rglob("metrics.json"))


# --- rule 6: OS limits are one-line errors -------------------------------------------------------

def test_names_too_long_are_one_line_errors(world, tmp_path):
    data, cache, runs, run = world
    for args in [["predict", "--run", str(run), "--data", str(data), "--cache", str(cache), "--out", str(tmp_path / ("x" * 257))],
                 ["runs", "show", "r" * 5000, "--runs", str(runs)],
                 ["fit-head", "--encoders", "efficientnet_lite0", "--data", str(data), "--cache", str(cache),
                  "--runs", str(tmp_path / ("r" * 300)), "--epochs", "1"]]:
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and "Traceback" not in result.output, (args[:2], result.output)
        assert len(result.output.strip().splitlines()) == 1 and len(result.output) < 600, result.output


@pytest.mark.parametrize("code", ["ENOSPC", "EACCES", "EROFS", "ENAMETOOLONG", "EDQUOT"])
def test_every_os_refusal_while_writing_is_one_line_naming_the_file(tmp_path, monkeypatch, code):
    import errno

    from featcache.outputs import OutputError, write_text

    target = tmp_path / "out.txt"
    target.write_text("previous")

    def refuse(*_a, **_k):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OutputError) as e:
        write_text(target, "new")
    assert str(target) in str(e.value) and "\n" not in str(e.value) and "previous file is unchanged" in str(e.value)
    assert target.read_text() == "previous" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]


# --- rule 7: interrupts are quiet, temporary files do not outlive their writer --------------------

def test_temporaries_of_a_killed_writer_are_swept_by_the_next(tmp_path):
    from featcache.outputs import write_text

    dead = 2**22 + 12345  # above the usual pid_max: no such process
    (tmp_path / f".out.txt.{dead}.tmp").write_text("half")
    (tmp_path / f".model.{dead}.tmp").mkdir()
    (tmp_path / f".model.{dead}.tmp" / "model.bin").write_text("half")
    write_text(tmp_path / "out.txt", "whole")
    from featcache.outputs import sweep_stale

    sweep_stale(tmp_path / "model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_openvino_telemetry_is_declined():
    pytest.importorskip("openvino_telemetry")
    from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker

    from featcache.encoders.backends import telemetry_off

    telemetry_off()
    assert OptInChecker().check(enable_opt_in_dialog=False) == ConsentCheckResult.DECLINED


def test_data_check_never_plots_over_its_data(small, tmp_path):
    root = copy(small, tmp_path)
    before = snapshot(root)
    for out in [root / "train.csv", root / "data" / "3.jpg", root / "l.png"]:
        result = CliRunner().invoke(app, ["data", "check", "--data", str(root), "--plot", str(out)])
        assert result.exit_code == 2 and "an input of this command" in result.output, result.output
    assert snapshot(root) == before


def test_a_tables_files_and_photos_are_inputs_its_folder_is_not(tmp_path):
    from featcache.outputs import OutputError, check_target, inputs_of
    from featcache.data.synth import make_table

    ds = load_dataset(make_table(tmp_path / "tab", "csv", 16, 4, seed=0, image_size=16))
    inputs = inputs_of(dataset=ds)
    for out in [ds.source, ds.images.path(ds.train[0]), ds.images.path(ds.test[-1])]:
        with pytest.raises(OutputError, match="is an input of this command"):
            check_target(out, inputs)
    assert check_target(ds.root / "submission.csv", inputs)  # beside the table: the user's folder
