"""Where a dataset's photos are, and how one is read.

    Folder(root)                   photos are files under root (COMP5329's data/, a table's folder)
    Column(hf_dataset, "image")    photos are bytes in a Hugging Face dataset's Image column
    load_image(path)               any photo file as an RGB PIL image

Only regular files are opened as data (photos, CSV files): a FIFO, socket or device named like one
would block a read forever or read a stream, so it is refused by name before it is opened.

A photo decodes as a photo viewer shows it: EXIF orientation applied, 16-bit, 32-bit and float
pixels scaled to 0-255 by their range. DECODE_VERSION names that behaviour; it is part of every
image cache's fingerprint, so a cache decoded another way is refused, never mixed.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from featcache.data.records import DataError, Record

DECODE_VERSION = 2  # 2: EXIF orientation, 16/32-bit and float scaled by their range (1: neither)
_WIDE = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # more than 8 bits a channel

def regular_file(path: Path, what: str = "image") -> Path:
    """`path` when it is a regular file (after symlinks); DataError naming it otherwise. Every open
    of a data file goes through here first: stat does not block, an open of a FIFO does."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError(f"{path}: {what} file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read {what} ({e.strerror or e})") from None
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a socket" \
            if stat.S_ISSOCK(mode) else "a device" if (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)) else "not a file"
        raise DataError(f"{path}: not a regular file ({kind}); {'a photo' if what == 'image' else 'it'} must be a file")
    return path


def _to_8bit(im: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit or float image scaled to 0-255 by its finite range (a viewer's view):
    clipping would turn a float image in 0..1 black and a 16-bit one white."""
    arr = np.asarray(im, dtype=np.float64)
    finite = np.isfinite(arr)
    lo, hi = (float(arr[finite].min()), float(arr[finite].max())) if finite.any() else (0.0, 0.0)
    if hi > lo:
        arr = (arr - lo) * (255.0 / (hi - lo))
    else:  # one value: black if nothing, white otherwise
        arr = np.full(arr.shape, 255.0 if hi > 0 else 0.0)
    return Image.fromarray(np.where(finite, arr, 0.0).round().astype(np.uint8), mode="L")


def load_image(path: str | Path) -> Image.Image:
    """An RGB PIL image from any photo file PIL reads (grayscale, palette, CMYK, 16-bit, alpha)."""
    path = regular_file(Path(path))
    try:
        with open(path, "rb") as f:
            return decode(f, str(path))
    except OSError as e:
        raise DataError(f"{path}: cannot read image ({e.strerror or e})") from None


def decode(data, name: str) -> Image.Image:
    """A file object or bytes -> RGB PIL image; DataError naming `name`."""
    if isinstance(data, (bytes, bytearray)):
        data = io.BytesIO(data)
    try:
        with warnings.catch_warnings():
            # PIL warns above 89 M pixels and refuses above twice that: both are decompression bombs
            # here (a photo is resized to a few hundred pixels), and decoding one can take gigabytes.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(data) as im:
                im.load()
                im = ImageOps.exif_transpose(im)  # the camera's orientation tag, as a viewer applies it
                if im.mode in _WIDE:
                    im = _to_8bit(im)
                if im.mode in ("P", "PA") and "transparency" in im.info:
                    im = im.convert("RGBA")
                return im.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{name}: refused as a decompression bomb ({e})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{name}: cannot read image ({e})") from None


class Folder:
    """Photos are files: `root / rec.image` (or `root / rec.image_id`). With `confine`, a path that
    resolves outside root (a `..`, or a symlink out) is refused when it is read."""

    def __init__(self, root: Path, confine: bool = True):
        self.root, self.confine = Path(root), confine

    def path(self, rec: Record) -> Path:
        path = self.root / (rec.image if rec.image is not None else rec.image_id)
        if self.confine and not path.resolve().is_relative_to(self.root.resolve()):
            raise DataError(f"{path}: leaves the image folder {self.root} (a symlink or '..'); "
                            "name where the images live with --image-root")
        return path

    def open(self, rec: Record) -> Image.Image:
        return load_image(self.path(rec))

    def stat(self, rec: Record):
        """(size, mtime, inode) of a row's file, or None: what the fingerprint memo compares."""
        try:
            st = os.stat(self.root / (rec.image if rec.image is not None else rec.image_id))
        except OSError:
            return None
        return st.st_size, st.st_mtime_ns, st.st_ino

    def read_bytes(self, rec: Record) -> bytes | None:
        """The file's bytes for the fingerprint; None when missing, not a file, or outside the folder."""
        try:
            return regular_file(self.path(rec)).read_bytes()
        except (DataError, OSError):
            return None


class Column:
    """Photos are encoded bytes in a Hugging Face dataset's Image column; `rec.image` is the row."""

    def __init__(self, table, column: str, name: str):
        self.table, self.column, self.name = table, column, name

    def path(self, rec: Record) -> Path:
        raise DataError(f"{self.name}: its photos are inside the dataset, not files")

    def _bytes(self, rec: Record) -> bytes | None:
        cell = self.table[int(rec.image)][self.column]
        if cell is None:
            return None
        if cell.get("bytes") is not None:
            return cell["bytes"]
        if cell.get("path"):
            return regular_file(Path(cell["path"])).read_bytes()
        return None

    def open(self, rec: Record) -> Image.Image:
        data = self._bytes(rec)
        if data is None:
            raise DataError(f"{self.name} row {rec.image}: no image")
        return decode(data, f"{self.name} row {rec.image}")

    def read_bytes(self, rec: Record) -> bytes | None:
        try:
            return self._bytes(rec)
        except (DataError, OSError):
            return None
