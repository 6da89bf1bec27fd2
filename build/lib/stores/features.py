"""The HDF5 feature cache: one file per cache name, one row per ImageID (train then test).

    <cache>/<name>.h5          complete, read-only from here on
    <cache>/<name>.h5.partial  being written; renamed to <name>.h5 (atomic) when complete
    <cache>/<name>.h5.lock     held by the one process writing it (so HDF5's own file lock is
                               off for the partial: a forked DataLoader worker that outlives a
                               killed writer would otherwise keep the file locked)
    <cache>/<name>.h5.shard-I-of-N  a sharded extraction's part I (work rows [lo, hi), same
                               layout, other rows left empty); `merge_shard_files` copies the parts in
                               order into <name>.h5 and deletes them

Layout: `features` [N, D] (float16 by default, chunked), `ids` [N] (utf-8), optionally `views`
[K, n_train, D] (augmented views of the train rows) and `valid` [N] (0 where an image was
skipped). Attributes: `fingerprint`, `config` (the whole configuration as JSON), `encoder`,
`modality`, `dim`, `n_train`, `n_views`, `rows_done`, `skipped` (JSON), `complete`.

Work rows are numbered 0 .. N + K * n_train: the clean rows first, then view 1, view 2, ...
`rows_done` counts the work rows written and flushed, so a killed writer resumes after them.
All chunks are allocated when the file is created, so a write changes raw data and one integer
attribute, never the file's structure: a kill between flushes leaves a readable file.
"""

from __future__ import annotations

from featcache.errors import UserError

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from featcache.artifacts import ArtifactError, check_features, check_finite
from featcache.encoders.registry import cache_name

CHUNK_BYTES = 1 << 20  # HDF5's sweet spot is ~1 MB chunks


class StoreError(UserError, RuntimeError):
    """A cache file that is missing, incomplete, corrupt, or built from a different configuration."""


def cache_path(cache_dir: str | Path, name: str) -> Path:
    return Path(cache_dir) / f"{name}.h5"


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def shard_path(path: Path, shard: int, num_shards: int) -> Path:
    return path.with_name(f"{path.name}.shard-{shard}-of-{num_shards}")


def read_attrs(path: Path) -> dict:
    """The attributes alone (cheap: no feature data is read); StoreError if unreadable."""
    try:
        with h5py.File(path, "r") as f:
            return {k: _plain(v) for k, v in f.attrs.items()}
    except (OSError, KeyError, ValueError) as e:
        raise StoreError(f"{path}: not a readable feature cache ({e}); delete it or rerun with --force") from None


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v


@dataclass
class FeatureSet:
    name: str
    path: Path
    attrs: dict
    ids: np.ndarray  # str [N]
    features: np.ndarray  # float32 [N, D]
    views: np.ndarray | None = None  # float32 [K, n_train, D]
    _index: dict = field(default_factory=dict, repr=False)

    encoder = property(lambda self: self.attrs["encoder"])
    modality = property(lambda self: self.attrs["modality"])
    dim = property(lambda self: int(self.attrs["dim"]))
    fingerprint = property(lambda self: self.attrs["fingerprint"])

    def _rows_of(self, ids, limit: int | None = None) -> np.ndarray:
        if not self._index:
            self._index = {i: r for r, i in enumerate(self.ids.tolist())}
        rows = [self._index.get(i, -1) for i in ids]
        missing = [i for i, r in zip(ids, rows) if r < 0 or (limit is not None and r >= limit)]
        if missing:
            raise KeyError(f"{self.path}: {len(missing)} ids not in the cache{' views' if limit else ''}: {missing[:5]}")
        return np.asarray(rows, dtype=np.int64)

    def rows(self, ids) -> np.ndarray:
        return self.features[self._rows_of(list(ids))]

    def view_rows(self, ids) -> np.ndarray | None:
        if self.views is None:
            return None
        return self.views[:, self._rows_of(list(ids), limit=self.views.shape[1])]


def open_features(cache_dir: str | Path, name: str) -> FeatureSet:
    """Load a complete cache into float32 memory: one read call per dataset (the fast path)."""
    path = cache_path(cache_dir, name)
    if not path.exists():
        hint = " (an extraction is in progress or was interrupted)" if partial_path(path).exists() else ""
        raise StoreError(f"{path}: no feature cache{hint}; run `python cli.py extract --encoder ...`")
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _plain(v) for k, v in f.attrs.items()}
            if not attrs.get("complete"):
                raise StoreError(f"{path}: incomplete cache (complete attribute not set)")
            ids = np.asarray(f["ids"].asstr()[()], dtype=str)
            spec_dtype = json.loads(attrs.get("fingerprint_spec") or "{}").get("dtype")
            views_shape = f["views"].shape if "views" in f else None
            check_features(path, f["features"].dtype, f["features"].shape, len(ids), attrs.get("dim"), spec_dtype,
                           views_shape, int(attrs.get("n_train", 0)))
            if views_shape is not None:
                check_features(path, f["views"].dtype, f["views"].shape[1:], views_shape[1], attrs.get("dim"), spec_dtype)
            features = _read_float32(f["features"])
            views = _read_float32(f["views"]) if "views" in f else None
            valid = f["valid"][()].astype(bool) if "valid" in f else None
    except ArtifactError as e:
        raise StoreError(str(e)) from None
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise StoreError(f"{path}: corrupt or truncated feature cache ({e}); rebuild it: extract again with --force") from None
    # A renamed or copied file: the name must be the one extract gives what it holds (`_ft`: fine-tuned)
    finetuned = bool(json.loads(attrs.get("fingerprint_spec") or "{}").get("finetune"))
    built_as = cache_name(str(attrs.get("encoder"))) + ("_ft" if finetuned else "")
    if built_as != name:
        what = f"{'fine-tuned ' if finetuned else ''}encoder {attrs.get('encoder')!r}"
        raise StoreError(f"{path}: holds features of {what} (cache name {built_as!r}), not {name!r}; extract {name} instead")
    if features.shape != (len(ids), attrs.get("dim")):
        raise StoreError(f"{path}: features {features.shape} do not match {len(ids)} ids x dim {attrs.get('dim')}")
    if valid is not None and not valid.all():  # rows skipped by a lenient run are absent
        n_train = int(attrs["n_train"])
        if views is not None:
            views = views[:, valid[:n_train]]
        features, ids = features[valid], ids[valid]
    try:  # NaN or inf would train and predict without a word
        check_finite(path, features)
        if views is not None:
            check_finite(path, views.reshape(-1, views.shape[-1]), "augmented views")
    except ArtifactError as e:
        raise StoreError(str(e)) from None
    return FeatureSet(name, path, attrs, ids, features, views)


def _read_float32(ds: h5py.Dataset) -> np.ndarray:
    """The whole dataset in one read call, as float32."""
    buf = np.empty(ds.shape, ds.dtype)
    if buf.size == 0:
        return buf.astype(np.float32)
    ds.read_direct(buf)
    if buf.dtype == np.float32:
        return buf
    import torch  # its float16 -> float32 cast is vectorised and threaded: 2-4x faster than numpy's

    return torch.from_numpy(buf).float().numpy()


class FeatureWriter:
    """Writes work rows into `<name>.h5.partial`; `finish()` marks it complete and renames it.
    A shard's writer (rows=(lo, hi) at open) writes only work rows [lo, hi) into its shard file."""

    def __init__(self, path: Path, f: h5py.File):
        self.path, self.f = path, f
        self.n, self.dim = f["features"].shape
        self.n_train, self.n_views = int(f.attrs["n_train"]), int(f.attrs["n_views"])
        self.total = self.n + self.n_views * self.n_train
        self.lo, self.hi = int(f.attrs.get("lo", 0)), int(f.attrs.get("hi", self.total))
        self.is_shard = "shard" in f.attrs
        self.skipped: list[dict] = json.loads(f.attrs["skipped"])

    @property
    def rows_done(self) -> int:
        return int(self.f.attrs["rows_done"])

    @classmethod
    def open(cls, path: Path, ids: list[str], dim: int, n_train: int, n_views: int, attrs: dict,
             dtype: str = "float16", rows: tuple[int, int] | None = None) -> tuple[FeatureWriter, str]:
        """Resume `<path>.partial` if it was written with the same fingerprint (and shard rows),
        else start it anew. Returns the writer and a message saying which."""
        partial = partial_path(path)
        if rows:
            attrs = {**attrs, "shard": path.name, "lo": rows[0], "hi": rows[1]}
        if partial.exists():
            try:
                f = h5py.File(partial, "r+", locking=False)
                if "fingerprint" not in f.attrs:  # HDF5 opens an empty (0-byte) file as a new one
                    f.close()
                    raise ValueError("no fingerprint attribute: empty or damaged")
                if (f.attrs.get("fingerprint") == attrs["fingerprint"] and f["features"].shape == (len(ids), dim)
                        and all(f.attrs.get(k) == attrs.get(k) for k in ("lo", "hi"))):
                    writer = cls(path, f)
                    return writer, f"resuming {partial} at row {writer.rows_done} of {writer.total}"
                f.close()
                why = "it was written with a different configuration"
            except (OSError, KeyError, ValueError) as e:
                why = f"it is unreadable ({e})"
            partial.unlink()
            message = f"discarded {partial}: {why}; starting over"
        else:
            message = f"writing {partial}"
        partial.parent.mkdir(parents=True, exist_ok=True)
        f = h5py.File(partial, "w", locking=False)
        chunk = max(1, min(len(ids), CHUNK_BYTES // (dim * np.dtype(dtype).itemsize)))
        # fletcher32: a checksum per chunk, so a flipped bit is a named error on read, never a silent feature
        f.create_dataset("features", (len(ids), dim), dtype=dtype, chunks=(chunk, dim), dcpl=_early_alloc(), fletcher32=True)
        f.create_dataset("ids", data=np.asarray(ids, dtype=object), dtype=h5py.string_dtype())
        if n_views:
            f.create_dataset("views", (n_views, n_train, dim), dtype=dtype, chunks=(1, min(chunk, n_train), dim),
                             dcpl=_early_alloc(), fletcher32=True)
        for k, v in attrs.items():
            f.attrs[k] = v
        f.attrs.update(n_train=n_train, n_views=n_views, dim=dim, rows_done=rows[0] if rows else 0, skipped="[]",
                       complete=False)
        f.flush()
        return cls(path, f), message

    def _slices(self, start: int, stop: int):
        """(dataset, index, offset into the values) per contiguous piece of work rows [start, stop)."""
        done = 0
        if start < self.n:  # clean rows
            k = min(stop, self.n) - start
            yield "features", np.s_[start:start + k], np.s_[0:k]
            start, done = start + k, k
        while start < stop:  # view rows: view v of train row r is work row n + v * n_train + r
            v, r = divmod(start - self.n, self.n_train)
            k = min(stop - start, self.n_train - r)
            yield "views", np.s_[v, r:r + k], np.s_[done:done + k]
            start, done = start + k, done + k

    def read(self, start: int, stop: int) -> np.ndarray:
        """Work rows [start, stop) as stored (merging shards)."""
        out = np.empty((stop - start, self.dim), self.f["features"].dtype)
        for name, index, part in self._slices(start, stop):
            out[part] = self.f[name][index]
        return out

    def write(self, start: int, values: np.ndarray, skipped: list[dict] = ()) -> None:
        """Work rows [start, start + len(values)), then flush, then advance rows_done: rows_done
        never counts a row that is not on disk. A failed write (disk full) is a StoreError naming
        the partial file; the previous complete cache is a different file and stays as it was."""
        stop = start + len(values)
        if start != self.rows_done or stop > self.hi:
            raise StoreError(f"{self.path}: writing rows {start}..{stop} but {self.rows_done} of {self.lo}..{self.hi} are done")
        try:
            for name, index, part in self._slices(start, stop):
                self.f[name][index] = values[part]
            if skipped:
                self.skipped += list(skipped)
                self.f.attrs["skipped"] = json.dumps(self.skipped)
            self.f.flush()
            self.f.attrs["rows_done"] = stop
            self.f.flush()
        except OSError as e:
            raise StoreError(f"{partial_path(self.path)}: write failed at row {start} ({e}); {self.path} is unchanged; "
                             f"free space and rerun to resume after row {self.rows_done}") from None

    def finish(self) -> Path:
        if self.rows_done != self.hi:
            raise StoreError(f"{self.path}: finishing with {self.rows_done - self.lo} of {self.hi - self.lo} rows written")
        bad = {s["row"] for s in self.skipped}
        if bad and not self.is_shard:  # a shard's skips go into the merged cache's `valid`
            self.f.create_dataset("valid", data=np.asarray([r not in bad for r in range(self.n)], dtype=np.uint8))
        self.f.attrs["rows"] = self.n - len(bad)
        self.f.attrs["complete"] = True
        self.f.close()
        os.replace(partial_path(self.path), self.path)  # atomic: readers see the old file or the new one
        return self.path

    def close(self) -> None:
        if self.f.id.valid:
            self.f.close()


def _early_alloc():
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return dcpl


_WRITER_KEYS = {"n_train", "n_views", "dim", "rows_done", "skipped", "complete", "rows", "shard", "lo", "hi"}


def shard_status(path: Path, num_shards: int) -> list[str]:
    """Why each unfinished shard of `path` is not ready (empty when all N are complete)."""
    problems = []
    for i in range(num_shards):
        p = shard_path(path, i, num_shards)
        if not p.exists():
            state = "being written or interrupted" if partial_path(p).exists() else "missing"
            problems.append(f"{p}: shard {i} of {num_shards} is {state}; run extract --shard {i} --num-shards {num_shards}")
    return problems


def merge_shard_files(path: Path, num_shards: int, block: int = 4096) -> Path:
    """Copy complete shards 0..N-1 of `path`, in order, into `path` through a FeatureWriter (so it
    is the file an unsharded run writes), then delete them. StoreError names the shard file that
    is missing, incomplete, or from another configuration."""
    if problems := shard_status(path, num_shards):
        raise StoreError("cannot merge: " + "; ".join(problems))
    parts = [shard_path(path, i, num_shards) for i in range(num_shards)]
    attrs = [read_attrs(p) for p in parts]
    expect_lo = 0
    for p, a in zip(parts, attrs):
        if not a.get("complete") or a.get("fingerprint") != attrs[0].get("fingerprint") or a.get("lo") != expect_lo:
            raise StoreError(f"{p}: incomplete, or from another configuration or shard plan than {parts[0]} "
                             f"(fingerprint {a.get('fingerprint')}, rows {a.get('lo')}..{a.get('hi')}); delete it and rerun that shard")
        expect_lo = a["hi"]
    with h5py.File(parts[0], "r") as f:
        ids, dtype = f["ids"].asstr()[()].tolist(), f["features"].dtype
    a0 = attrs[0]
    if expect_lo != len(ids) + int(a0["n_views"]) * int(a0["n_train"]):
        raise StoreError(f"{parts[-1]}: shards end at row {expect_lo}, not at the last work row")
    writer, _ = FeatureWriter.open(path, ids, int(a0["dim"]), int(a0["n_train"]), int(a0["n_views"]),
                                   {k: v for k, v in a0.items() if k not in _WRITER_KEYS}, dtype.name)
    try:
        for p in parts:
            with h5py.File(p, "r") as f:
                part = FeatureWriter(p, f)
                for a in range(max(part.lo, writer.rows_done), part.hi, block):
                    b = min(a + block, part.hi)
                    writer.write(a, part.read(a, b), [s for s in part.skipped if a <= s["work_row"] < b])
        writer.finish()
    finally:
        writer.close()
    for p in parts:
        p.unlink()
    return path
