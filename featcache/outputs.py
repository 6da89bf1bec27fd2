"""Outputs that are never lost or half written, and never written over an input.

    write_predictions(out, dataset.predictions(preds), inputs=dataset.files)
    with replacing(path) as tmp:            # for writers that take a path (parquet, safetensors, PNG)
        frame.write_parquet(tmp)
    out_dir = check_out_dir(out, inputs=[dataset.root, cache])  # a directory of outputs, checked before any work

Each output is written to a temporary file beside its target, flushed to disk and renamed into
place: a full disk, a kill or a read-only folder leaves the previous file as it was, and a reader
never sees half of one. What cannot be written is an `OutputError` naming the file and the reason.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path


def _file_mode() -> int:
    umask = os.umask(0o022)  # the only way to read the umask is to set it, then put it back
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()  # what open() gives a new file: every output gets it


class OutputError(ValueError):
    """An output cannot be written where asked; the message names it and says what was kept."""


def check_target(path: str | Path, inputs=()) -> Path:
    """The target as a Path, or OutputError when it is a directory, its folder is missing, or it is
    one of the command's own inputs (a dataset file, a cache, a run's file)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a directory; give a file name inside it, e.g. {path / 'submission.csv'}")
    if not path.parent.is_dir():
        raise OutputError(f"{path}: folder {path.parent} does not exist; create it first")
    _check_writable(path, path.parent)
    target = path.resolve()
    for source in inputs:
        if Path(source).resolve() == target:
            raise OutputError(f"{path}: is an input of this command ({source}); write the output elsewhere")
    return path


def check_out_dir(path: str | Path, inputs=()) -> Path:
    """An output directory as a Path, or OutputError when it is (or lies under) an existing file,
    cannot be created or written, or is one of the command's input directories (the dataset, the
    cache, a runs directory it reads): its outputs would be mixed into what the command reads.
    Called before any work; the directory itself is made by the writer."""
    path = Path(path)
    # The nearest part of the path that exists: the directory itself, or the folder it goes in.
    there = next(p for p in (path, *path.parents) if p.exists())
    if not there.is_dir():
        what = "is a file" if there == path else f"{there} is a file"
        raise OutputError(f"{path}: {what}, not a directory; give a directory for the outputs")
    _check_writable(path, there)
    target = path.resolve()
    for source in inputs:
        if Path(source).resolve() == target:
            raise OutputError(f"{path}: is an input of this command ({source}); write the outputs elsewhere")
    return path


def _check_writable(path: Path, folder: Path) -> None:
    # Before any work: a read-only file system refuses root too (os.access says so), where a
    # chmod does not. A folder that turns read-only later is still caught by `replacing`.
    if not os.access(folder, os.W_OK):
        raise OutputError(f"{path}: folder {folder} is not writable (read-only or no permission); nothing was written")


@contextlib.contextmanager
def replacing(path: str | Path, inputs=()):
    """Yield a temporary path beside `path`; once the block has written it, it replaces `path`."""
    path = check_target(path, inputs)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)  # one mode for every output (safetensors writes 0600, the rest 0644)
        os.replace(tmp, path)
    except OSError as e:
        kept = "the previous file is unchanged" if path.exists() else "nothing was written"
        raise OutputError(f"{path}: cannot write it ({e.strerror or e}); {kept}") from None
    finally:
        # Nothing to remove when the write failed before creating it; on a read-only folder
        # unlink says EROFS even then, and must not hide the OutputError above.
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str, inputs=()) -> Path:
    with replacing(path, inputs) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_predictions(path: str | Path, frame, inputs=()) -> Path:
    """A predictions table (featcache.data's Dataset.predictions) as Parquet (.parquet) or CSV
    (anything else; the COMP5329 one is the Kaggle submission `ImageID,Labels`)."""
    with replacing(path, inputs) as tmp:
        if Path(path).suffix.lower() in (".parquet", ".pq"):
            frame.write_parquet(tmp)
        else:
            frame.write_csv(tmp, separator="\t" if Path(path).suffix.lower() == ".tsv" else ",")
    return Path(path)


def write_study(out_dir: str | Path, raw, table) -> None:
    """A study's rows and their summary (polars frames): raw.parquet, table.parquet, table.csv."""
    for name, frame, write in [("raw.parquet", raw, "write_parquet"), ("table.parquet", table, "write_parquet"),
                               ("table.csv", table, "write_csv")]:
        with replacing(Path(out_dir) / name) as tmp:
            getattr(frame, write)(tmp)


@functools.lru_cache(maxsize=1)
def provenance() -> dict:
    """What produced an output, for a run's config.json: the command line, the versions of the
    libraries the numbers depend on, and the git commit of this checkout (None outside one).
    Once per process: a study saves dozens of runs, and none of this changes between them."""
    versions = {}
    for name in ("featcache", "torch", "timm", "transformers", "numpy", "scikit-learn", "openvino"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    try:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True,
                               text=True, timeout=5)
        git = (commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")) if commit.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        git = None
    return {"command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else None,
            "python": sys.version.split()[0], "versions": versions, "git": git}

