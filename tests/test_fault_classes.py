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
from featcache.synth import make_dataset

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
    from featcache.extract import fingerprint_spec
    from featcache.registry import get_cfg
    from featcache.weights import resolve_weights

    cfg = get_cfg("efficientnet_lite0")
    spec = fingerprint_spec(cfg, resolve_weights(cfg, pretrained=False), load_dataset(small), 0, "float16", None)
    assert spec["decode"] == DECODE_VERSION >= 2
