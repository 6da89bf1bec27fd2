"""One Dataset, whatever it was read from: the COMP5329 folder, a table file, a Hugging Face dataset, a frame.

    ds = load_dataset("comp5329/")                                        # the Kaggle layout
    ds = load_dataset("items.csv", DataSpec(labels="tags", sep="|"))      # any table
    ds = Dataset.from_table(df, image="path", text=["title", "body"], labels="tags")

Every function of featcache that takes `data` passes it to `load_dataset`, so each accepts all of
these (and a Dataset already loaded).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from featcache.data.comp5329 import is_comp5329, load_comp5329
from featcache.data.records import MODALITIES, DataError, LabelSpace, Record, Skip
from featcache.data.spec import DataSpec

# featcache.data.tabular (polars) is imported where a table is read: a COMP5329 folder's warm
# cache check never loads it.


@dataclass
class Dataset:
    """Rows of one dataset. `train` holds every labelled row (the split draws validation from it,
    or a split column fixes it: `val_keys`), `test` the rows to predict. `train` and `test` may be
    handed in as functions that build the rows on first use (a million-row table is validated
    and fingerprinted without a Python object per row)."""

    root: Path  # the folder that holds the data (COMP5329) or the table
    label_space: LabelSpace
    train_rows: list[Record] | Callable[[], list[Record]]
    test_rows: list[Record] | Callable[[], list[Record]]
    skipped: list[Skip] = field(default_factory=list)
    source: Path | None = None  # the table file (None: the COMP5329 folder)
    images: object | None = None  # the image store (featcache.data.images): None when the data has no images
    modalities: tuple[str, ...] = MODALITIES
    val_keys: frozenset | None = None  # validation rows fixed by a split column
    content: tuple = ()  # what the fingerprint hashes besides images: file paths (their bytes) or bytes
    files: tuple[Path, ...] = ()  # the files the dataset was read from (never written over)
    id_column: str = "ImageID"  # the key's column in outputs
    labels_column: str = "Labels"
    label_sep: str = " "  # how outputs join labels
    describe: dict = field(default_factory=dict)  # how the table was read (columns, separator), for people
    hash_in_key_order: bool = False  # a table's rows are the same data in any order
    spec: DataSpec | None = None  # how it was read (load_dataset records it)
    val_fraction: float = 0.2  # the stratified split's, when no split column fixes `val_keys`
    split_seed: int = 0
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_table(cls, src, *, lenient: bool = False, **spec) -> Dataset:
        """A table (a path, a polars/pandas frame or a Hugging Face dataset) with DataSpec's options
        (image, text, labels, sep, id, split, image_root, labels_file, val_fraction, split_seed)."""
        spec = DataSpec.of(**spec)
        return load_dataset(src, spec, lenient)

    @property
    def train(self) -> list[Record]:
        if callable(self.train_rows):
            self.train_rows = self.train_rows()
        return self.train_rows

    @property
    def test(self) -> list[Record]:
        if callable(self.test_rows):
            self.test_rows = self.test_rows()
        return self.test_rows

    @property
    def name(self) -> str:
        """How errors name the data: the table file, or the folder."""
        return str(self.source or self.root)

    def where(self, rec: Record) -> str:
        """A row's place for a message: `train.csv line 12 (ImageID 10.jpg)` or `items.csv row 12 (photos/a.png)`."""
        if "table" not in self.describe:  # the COMP5329 folder
            return f"{'train.csv' if rec.labels is not None else 'test.csv'} line {rec.line}, ImageID {rec.image_id}"
        return f"{self.describe['table']} row {rec.line}, {self.id_column} {rec.image_id}"

    def has(self, modality: str) -> bool:
        return modality in self.modalities

    def image_path(self, rec: Record) -> Path:
        """The file of a row's photo (DataError when the data keeps its images elsewhere or has none)."""
        if self.images is None:
            raise DataError(f"{self.name}: has no image column")
        return self.images.path(rec)

    def open_image(self, rec: Record):
        """A row's photo as an RGB PIL image; DataError naming the file and the row."""
        if self.images is None:
            raise DataError(f"{self.name}: has no image column")
        try:
            return self.images.open(rec)
        except DataError as e:
            raise DataError(f"{e} ({self.where(rec)})") from None

    def photos(self, records: Sequence[Record]) -> Sequence:
        """The photos of `records`, opened as they are read (a slice is a list of PIL images)."""
        return _Photos(self, records)

    def predictions(self, preds: np.ndarray, probs: np.ndarray | None = None):
        """The rows to predict as a table: the key column (as the data names it), the labels joined
        as the data joins them (COMP5329: `ImageID,Labels` with ids, the Kaggle submission) and,
        with `probs`, one probability column per label name. One row per test row, in order."""
        import polars as pl

        if len(preds) != len(self.test):
            raise DataError(f"{self.name}: {len(preds)} predictions for {len(self.test)} rows to predict; not writing a "
                            "table that loses rows")
        labels = [self.label_sep.join(map(str, row)) for row in self.label_space.decode(preds)]
        frame = pl.DataFrame({self.id_column: [r.image_id for r in self.test], self.labels_column: labels},
                             schema={self.id_column: pl.String, self.labels_column: pl.String})
        if probs is not None:
            frame = frame.with_columns(pl.Series(name, np.asarray(probs)[:, j], pl.Float32)
                                       for j, name in enumerate(self.label_space.names))
        return frame

    def targets(self, records: list[Record] | None = None) -> np.ndarray:
        records = self.train if records is None else records
        return self.label_space.encode([r.labels for r in records])

    def fingerprint(self, memo: Path | None = None) -> str:
        """Hash of what a feature depends on: the rows (the CSV bytes, or a table's rows in key
        order), the label space and every image's bytes. Contents, not sizes and mtimes: a copy of
        the same data (rsync, a re-mounted share, a fresh CI checkout) must keep its caches. Done
        once per loaded Dataset. With `memo` (a JSON file), a fingerprint is remembered beside the
        size, mtime and inode of every file it read, and reused while all of them are unchanged:
        hashing 11,000 photos takes seconds, a stat of each a few hundredths."""
        if self._fingerprint is not None:
            return self._fingerprint
        stamp = self._stamp() if memo is not None else None
        if stamp is not None and (hit := _memo_read(memo).get(stamp)):
            self._fingerprint = hit
            return hit
        h = hashlib.sha256()
        for part in self.content:
            h.update(part.read_bytes() if isinstance(part, Path) else part)
        h.update(json.dumps([list(self.label_space.ids), list(self.label_space.names)]).encode())
        if self.images is not None:
            records = self.train + self.test
            for rec in sorted(records, key=lambda r: r.image_id) if self.hash_in_key_order else records:
                data = self.images.read_bytes(rec)
                data = b"<missing>" if data is None else data
                h.update(f"{rec.image_id}:{len(data)}:".encode())
                h.update(data)
        self._fingerprint = h.hexdigest()[:16]
        if stamp is not None:
            _memo_write(memo, stamp, self._fingerprint)
        return self._fingerprint

    def _stamp(self) -> str | None:
        """A hash of every read file's (name, size, mtime, inode), or None where a file has none."""
        h = hashlib.sha256()
        h.update(json.dumps([list(self.label_space.ids), list(self.label_space.names)]).encode())
        for part in self.content:
            h.update(repr(_stat(part) if isinstance(part, Path) else hashlib.sha256(part).hexdigest()).encode())
        if self.images is not None:
            if not hasattr(self.images, "stat"):
                return None
            for rec in self.train + self.test:
                h.update(repr((rec.image_id, self.images.stat(rec))).encode())
        return h.hexdigest()


def _stat(path: Path):
    try:
        st = path.stat()
    except OSError:
        return None
    return str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino


def _memo_read(memo: Path) -> dict:
    try:
        doc = json.loads(Path(memo).read_text())
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):  # none yet, or damaged: hash the files again
        return {}


def _memo_write(memo: Path, stamp: str, fingerprint: str) -> None:
    """Best effort (a memo that cannot be written costs a rehash next time); written whole."""
    import os

    doc = _memo_read(memo)
    doc[stamp] = fingerprint
    doc = dict(list(doc.items())[-200:])  # the latest datasets only
    try:
        Path(memo).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(memo).with_name(f".{Path(memo).name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, memo)
    except OSError:
        pass


class _Photos(Sequence):
    def __init__(self, dataset: Dataset, records: Sequence[Record]):
        self.dataset, self.records = dataset, records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.dataset.open_image(r) for r in self.records[i]]
        return self.dataset.open_image(self.records[i])


def load_dataset(data, spec: DataSpec | None = None, lenient: bool = False) -> Dataset:
    """`data`: a Dataset (returned as it is), a COMP5329 folder (train.csv, test.csv, data/), a
    CSV/TSV/Parquet/JSONL file or a folder holding one, a saved Hugging Face dataset, or a
    polars/pandas DataFrame or `datasets.Dataset`."""
    if isinstance(data, DataSpec):
        data, spec = data.source, data
    spec = spec or DataSpec()
    if data is None:
        raise DataError("no data given: pass --data (or set $FEATCACHE_DATA), or a table in Python")
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (str, Path)):
        path = Path(data)
        if not path.exists():
            raise DataError(f"{path}: not found (expected a COMP5329 folder with train.csv, test.csv and data/, "
                            "a table file or a folder holding one, or a saved Hugging Face dataset)")
        if is_comp5329(path):
            if spec.columns_named():
                raise DataError(f"{path}: a COMP5329 folder (train.csv, test.csv) has fixed columns; "
                                "--image-col, --text-col, --labels-col, --id-col and --split-col are for tables")
            return Dataset(**load_comp5329(path, lenient), spec=replace(spec, source=data), val_fraction=spec.val_fraction,
                           split_seed=spec.split_seed)
        from featcache.data.tabular import is_table

        if not is_table(path):
            raise DataError(f"{path}: not a dataset featcache reads (a COMP5329 folder with train.csv and test.csv, "
                            "a CSV/TSV/Parquet/JSONL table, or a saved Hugging Face dataset)")
    from featcache.data.tabular import read_table

    return Dataset(**read_table(data, spec, lenient), spec=replace(spec, source=data), val_fraction=spec.val_fraction,
                   split_seed=spec.split_seed)
