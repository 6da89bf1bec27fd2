"""Outputs that are never lost or half written, and never written over an input.

    inputs = inputs_of(dataset=ds, caches=[cache], run_dirs=[run])  # what the command reads
    write_predictions(out, ds.predictions(preds), inputs)
    with replacing(path, inputs) as tmp:    # for writers that take a path (parquet, safetensors, PNG)
        frame.write_parquet(tmp)
    out_dir = check_out_dir(out, inputs)    # a directory of outputs, checked before any work

Outputs never touch inputs: `check_target` and `check_out_dir` are the one check every writer
calls before any work. An output may not be, or be inside, the dataset (its folder, its files,
its image folder), a cache, a run, or a runs directory's results.parquet; a directory replaced
whole (an export) may not hold one either. Each output is written to a temporary file beside its
target, flushed to disk and renamed into place: a full disk, a kill or a read-only folder leaves
the previous file as it was, and a reader never sees half of one. Whatever the OS refuses (a name
too long, a full disk, no permission, a read-only file system) is an `OutputError` naming the file
and the reason in one line (`os_error`), never a traceback.
"""

from __future__ import annotations

from featcache.errors import UserError

import contextlib
import errno
import functools
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path


def _file_mode() -> int:
    umask = os.umask(0o022)  # the only way to read the umask is to set it, then put it back
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()  # what open() gives a new file: every output gets it


class OutputError(UserError, ValueError):
    """An output cannot be written where asked; the message names it and says what was kept."""


# What the OS says, in the words a user acts on.
_WHY = {errno.ENAMETOOLONG: "name too long (at most 255 bytes a name, 4096 a path)", errno.ENOSPC: "disk full",
        errno.EDQUOT: "disk quota exceeded", errno.EACCES: "no permission", errno.EPERM: "no permission",
        errno.EROFS: "read-only file system", errno.ENOTDIR: "a part of the path is a file, not a folder",
        errno.EISDIR: "is a directory", errno.ELOOP: "too many symlinks", errno.EEXIST: "already exists"}


def os_error(path, e: OSError, kept: str = "") -> OutputError:
    """The one translation of an OS refusal into a one-line OutputError naming the path."""
    why = _WHY.get(e.errno, e.strerror or str(e))
    return OutputError(f"{_short(path)}: cannot write it ({why})" + (f"; {kept}" if kept else ""))


def _short(path) -> str:
    text = str(path)
    return text if len(text) <= 300 else f"{text[:120]}...{text[-120:]} ({len(text)} characters)"


@contextlib.contextmanager
def os_errors(path, kept: str = ""):
    """Run a block that writes `path`; an OSError comes out as `os_error`'s one line."""
    try:
        yield
    except OSError as e:
        raise os_error(path, e, kept) from None


@dataclass(frozen=True)
class Inputs:
    """What a command reads. An output may not be one of `files`, nor be or lie inside one of
    `dirs`; a directory that an output replaces whole may not hold any of them either."""

    files: frozenset = frozenset()
    dirs: frozenset = frozenset()
    roots: frozenset = frozenset()  # folders outputs go inside of (a runs directory), but may not be

    @classmethod
    def of(cls, paths) -> Inputs:
        """Inputs named by path: a directory protects all of it, anything else itself."""
        if isinstance(paths, Inputs):
            return paths
        paths = [Path(p) for p in paths if p is not None]
        return cls(frozenset(_real(p) for p in paths if not _is_dir(p)), frozenset(_real(p) for p in paths if _is_dir(p)))

    def __add__(self, other) -> Inputs:
        other = Inputs.of(other)
        return Inputs(self.files | other.files, self.dirs | other.dirs, self.roots | other.roots)

    def refuse(self, path: Path, whole: bool = False) -> None:
        """OutputError when `path` is an input, inside one, or (`whole`: replaced as a whole) holds one."""
        target = _real(path)
        for f in sorted(self.files):
            if f == target or (whole and f.is_relative_to(target)):
                what = "is an input" if f == target else "holds an input"
                raise OutputError(f"{_short(path)}: {what} of this command ({f}); write the output elsewhere")
        for d in sorted(self.dirs):
            if target == d or target.is_relative_to(d) or (whole and d.is_relative_to(target)):
                # an existing file in an input folder is an input itself
                what = "is" if target == d or (target.is_relative_to(d) and target.exists()) else \
                    f"is inside {d}," if target.is_relative_to(d) else f"holds {d},"
                raise OutputError(f"{_short(path)}: {what} an input of this command ({d}); write the output elsewhere")
        for d in sorted(self.roots):
            if target == d or (whole and d.is_relative_to(target)):
                raise OutputError(f"{_short(path)}: {'is' if target == d else f'holds {d},'} an input of this command "
                                  f"({d}); write the output elsewhere")


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def inputs_of(dataset=None, caches=(), runs=None, run_dirs=(), files=()) -> Inputs:
    """Everything a command reads, collected once: the dataset (a COMP5329 folder whole; a table's
    files and its photos), cache directories or .h5 files, the runs under `runs` and its
    results.parquet, the runs read (and the results.parquet of the runs directory each is in)."""
    paths, dirs = [Path(f) for f in files], []
    if dataset is not None:
        paths += [Path(f) for f in dataset.files]
        if dataset.source is None:  # a COMP5329 folder: all of it
            dirs.append(Path(dataset.root))
        else:  # a table: its photos one by one (they may share a folder with anything, the project's too)
            paths += _photos(dataset)
    paths += [Path(c) for c in caches if c is not None]
    for run in run_dirs:
        dirs.append(Path(run))
        paths += [p / "results.parquet" for p in Path(run).resolve().parents]
    roots = []
    if runs is not None and _is_dir(Path(runs)):
        roots.append(Path(runs))
        paths.append(Path(runs) / "results.parquet")
        dirs += {m.parent for name in ("metrics.json", "head.json", "config.json") for m in Path(runs).rglob(name)}
    found = [p for p in paths if _exists(p)]
    return Inputs.of(found) + Inputs(frozenset(), frozenset(_real(d) for d in dirs if _exists(d)),
                                     frozenset(_real(r) for r in roots))


def _photos(dataset) -> list[Path]:
    found = []
    for rec in dataset.train + dataset.test:
        try:
            found.append(Path(dataset.images.path(rec)))
        except Exception:  # noqa: BLE001 - photos inside the table (no path), or a path the reader refuses
            continue
    return found


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:
        return False


def check_target(path: str | Path, inputs=()) -> Path:
    """The target as a Path, or OutputError when it is a directory, its folder is missing or not
    writable, or it is, or is inside, one of the command's own inputs (`Inputs`, or paths)."""
    path = Path(path)
    with os_errors(path, "nothing was written"):  # a name too long fails the very first stat
        if path.is_dir():
            raise OutputError(f"{path}: is a directory; give a file name inside it, e.g. {path / 'submission.csv'}")
        if not path.parent.is_dir():
            raise OutputError(f"{path}: folder {path.parent} does not exist; create it first")
        _check_name(path)
        _check_writable(path, path.parent)
        Inputs.of(inputs).refuse(path)
    return path


def check_out_dir(path: str | Path, inputs=(), whole: bool = False) -> Path:
    """An output directory as a Path, or OutputError when it is (or lies under) an existing file,
    cannot be created or written, or is, lies inside or (`whole`: it is replaced as a whole)
    holds one of the command's inputs: its outputs would be mixed into what the command reads.
    Called before any work; the directory itself is made by the writer."""
    path = Path(path)
    with os_errors(path, "nothing was written"):
        # The nearest part of the path that exists: the directory itself, or the folder it goes in.
        there = next(p for p in (path, *path.parents) if p.exists())
        if not there.is_dir():
            what = "is a file" if there == path else f"{there} is a file"
            raise OutputError(f"{path}: {what}, not a directory; give a directory for the outputs")
        _check_name(path)
        _check_writable(path, there)
        Inputs.of(inputs).refuse(path, whole)
    return path


def check_apart(**paths) -> None:
    """Options naming directories a command both reads and writes (--cache, --runs, --out) must
    not be files, the same directory, or one inside another: refused before any work."""
    named = {k: Path(v) for k, v in paths.items() if v is not None}
    for name, p in named.items():
        with os_errors(p):
            there = next(q for q in (p, *p.parents) if q.exists())
            if not there.is_dir():
                raise OutputError(f"{_short(p)}: {'is a file' if there == p else f'{there} is a file'}; --{name} is a "
                                  "directory")
    items = list(named.items())
    for i, (a, pa) in enumerate(items):
        for b, pb in items[i + 1:]:
            ra, rb = _real(pa), _real(pb)
            if ra == rb or ra.is_relative_to(rb) or rb.is_relative_to(ra):
                raise OutputError(f"--{a} {pa} and --{b} {pb}: {'the same directory' if ra == rb else 'one inside the other'}; "
                                  "give each its own")


def _check_name(path: Path) -> None:
    # Before any work: a name the file system cannot hold would fail only at the end.
    for part in path.parts:
        if len(os.fsencode(part)) > 255:
            raise OutputError(f"{_short(path)}: cannot write it ({_WHY[errno.ENAMETOOLONG]}); nothing was written")
    if len(os.fsencode(str(path.absolute()))) >= 4096:
        raise OutputError(f"{_short(path)}: cannot write it ({_WHY[errno.ENAMETOOLONG]}); nothing was written")


def _check_writable(path: Path, folder: Path) -> None:
    # Before any work: a read-only file system refuses root too (os.access says so), where a
    # chmod does not. A folder that turns read-only later is still caught by `replacing`.
    if not os.access(folder, os.W_OK):
        raise OutputError(f"{path}: folder {folder} is not writable (read-only or no permission); nothing was written")


def sweep_stale(path: Path) -> None:
    """Remove the temporary files and folders (`.<name>.<pid>.tmp`, `.old`) that a killed writer of
    `path` left beside it: those of processes no longer running."""
    with contextlib.suppress(OSError):
        for p in Path(path).parent.glob(f".{Path(path).name}.*"):
            pid, _, end = p.name.removeprefix(f".{Path(path).name}.").partition(".")
            if pid.isdigit() and end in ("tmp", "old") and int(pid) != os.getpid() and not _alive(int(pid)):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


@contextlib.contextmanager
def replacing(path: str | Path, inputs=()):
    """Yield a temporary path beside `path`; once the block has written it, it replaces `path`."""
    path = check_target(path, inputs)
    sweep_stale(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)  # one mode for every output (safetensors writes 0600, the rest 0644)
        os.replace(tmp, path)
    except OSError as e:
        raise os_error(path, e, "the previous file is unchanged" if path.exists() else "nothing was written") from None
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
    (anything else; the COMP5329 one is the Kaggle submission `ImageID,Labels`): one row per key,
    checked before it is written."""
    check_rows(path, frame.get_column(frame.columns[0]).to_list(), frame.get_column(frame.columns[1]).to_list())
    with replacing(path, inputs) as tmp:
        if Path(path).suffix.lower() in (".parquet", ".pq"):
            frame.write_parquet(tmp)
        else:
            frame.write_csv(tmp, separator="\t" if Path(path).suffix.lower() == ".tsv" else ",")
    return Path(path)


def check_rows(path, image_ids, labels) -> None:
    """A prediction file has one row per record asked for, each key once: checked before it is written."""
    if len(image_ids) != len(labels) or len(set(image_ids)) != len(image_ids):
        raise OutputError(f"{path}: {len(labels)} predictions for {len(image_ids)} rows "
                          f"({len(image_ids) - len(set(image_ids))} repeated keys); nothing was written")


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


def count_rows(path: Path) -> int:
    """Rows of a CSV or Parquet file written here (predictions), without reading it whole."""
    import polars as pl

    frame = pl.scan_parquet(path) if Path(path).suffix in (".parquet", ".pq") else pl.scan_csv(path)
    return frame.select(pl.len()).collect().item()
