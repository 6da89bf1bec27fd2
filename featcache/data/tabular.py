"""Any table as a dataset: CSV, TSV, Parquet, JSONL, a Hugging Face dataset, a polars or pandas frame.

    fields = read_table("items.csv", DataSpec(labels="tags", sep="|"))   # -> Dataset(**fields)

Columns are named by the spec or detected from common names (reported in `describe`). The table is
read with a real parser (polars) and checked column-wise, so a million rows are validated and
hashed without a Python object per row; Records are built when first used. Every fault is a
DataError naming the file, row and column, or (lenient) a counted Skip.

Rules: a row's key is its id column, else its image path, else its text; keys are unique. Image
paths are relative to the table's folder (or `image_root`), nested folders allowed, and never
leave it. Rows without labels (or split=test) are the rows to predict. Rows keep the table's order
(the stratified split depends on it); the fingerprint hashes each row's strings (`_row_hashes`,
XXH3) in an order of their keys (by the key's hash, see `_key_order`), so the same rows in CSV and
Parquet, or reordered, are the same data and share their caches.
"""

from __future__ import annotations

import functools
import hashlib
import json
import posixpath
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl
import polars_hash as plh

from featcache.data.images import Column, Folder
from featcache.data.records import DataError, LabelSpace, Record, Skip
from featcache.data.spec import ID_NAMES, IMAGE_NAMES, LABEL_NAMES, SPLIT_NAMES, SPLIT_VALUES, TEXT_NAMES, DataSpec

SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
_ROW, _KEY, _IMG, _TXT, _LAB, _SPLIT = "__row", "__key", "__image", "__text", "__labels", "__split"
_HAS, _TEST = "__has_labels", "__test"
LIST_SEP = "\x1f"  # joins a list cell's labels, so that list and string columns are split one way


def is_table(src) -> bool:
    """A path this module reads (a table file, a folder holding one or a saved HF dataset), or a frame."""
    if not isinstance(src, (str, Path)):
        return True
    path = Path(src)
    return path.suffix.lower() in SUFFIXES or (path.is_dir() and (any((path / m).is_file() for m in HF_MARKERS)
                                                                   or bool(_tables_in(path))))


def read_table(src, spec: DataSpec, lenient: bool = False) -> dict:
    """The fields of a Dataset (featcache.data.dataset) read from `src`."""
    frame, name, base, hf, hints = _frame(src)
    if spec.labels_file:
        hints["files"].append(Path(spec.labels_file))  # an input: no output may be written over it
    cols = _columns(frame, spec, name, hints)
    frame = frame.with_row_index(_ROW)
    hf_img = hf_image(hf, cols)
    work, key_col, key_from = _work(frame, cols, hf_img)
    image_root = Path(spec.image_root) if spec.image_root else base
    # The string columns hashed: the key, and the image path and text unless the key is one of them.
    hashed = [_KEY] + [c for c in (_IMG, _TXT) if c in work.columns and c != key_from]
    # The rows' hashes and key order, and the path checks, run beside the labels and their checks: all
    # of them let go of the GIL (polars, numpy, hashlib).
    with ThreadPoolExecutor(2) as pool:
        keyed = pool.submit(_keyed, work, hashed)
        paths = pool.submit(_path_problems, work, cols, image_root, key_col, key_from)
        codes, lists, sep, label_space, declared = _labels(frame[cols["labels"]], spec, name, cols["labels"], hints)
        work = work.with_columns(codes.alias(_LAB), lists.is_not_null().gather(codes).alias(_HAS))
        problems = paths.result() + _label_problems(work, cols, declared, lists)
        order, duplicated, strings_digest = keyed.result()
    if duplicated:
        problems = problems + _duplicates(work, key_col)
    skipped = []
    if problems:
        problems.sort()
        if not lenient:
            row, column, reason = problems[0]
            more = f" (and {len(problems) - 1} more; --lenient skips them)" if len(problems) > 1 else ""
            raise DataError(f"{name} row {row} column {column!r}: {reason}{more}")
        bad = sorted({row - 1 for row, _, _ in problems})
        by_row = {}
        for row, column, reason in problems:  # one skip a row, however many checks it fails
            by_row.setdefault(row, []).append(f"column {column!r}: {reason}")
        skipped = [Skip(name, row, "; ".join(reasons)) for row, reasons in by_row.items()]
        work = work.filter(~pl.col(_ROW).is_in(bad))
        order, _, strings_digest = _keyed(work, hashed)
    if _SPLIT in work.columns:
        work = work.with_columns(pl.col(_SPLIT).replace(SPLIT_VALUES))
    is_test = ~pl.col(_HAS)
    if _SPLIT in work.columns:
        is_test = is_test | (pl.col(_SPLIT) == "test")
    work = work.with_columns(is_test.alias(_TEST))  # rows keep the table's order: the split depends on it
    if work[_TEST].all():
        raise DataError(f"{name}: no labelled rows (column {cols['labels']!r} is empty on every row"
                        + (f", or {cols['split']!r} says test" if cols["split"] else "") + ")")
    numeric = all(isinstance(i, int) for i in label_space.ids)
    tuples = functools.cache(lambda: _label_tuples(lists, numeric))
    modalities = tuple(m for m, present in (("image", bool(cols["image"])), ("text", bool(cols["text"]))) if present)
    images = (Column(hf[0], cols["image"], name) if hf_img else Folder(image_root) if cols["image"] else None)
    val_keys = None
    if _SPLIT in work.columns:
        val_keys = frozenset(work.filter((pl.col(_SPLIT) == "val") & ~pl.col(_TEST))[_KEY].to_list())
    describe = {"table": name, "id": cols["id"] or f"(none: rows keyed by {key_col!r})", "image": cols["image"],
                "text": list(cols["text"]), "labels": cols["labels"], "label_sep": sep, "split": cols["split"],
                "detected": sorted(hints["detected"]), "labels_found": label_space.num_labels}
    return {
        "root": base, "label_space": label_space,
        "train_rows": lambda: _records(work.filter(~pl.col(_TEST)), tuples(), hf_img),
        "test_rows": lambda: _records(work.filter(pl.col(_TEST)), tuples(), hf_img),
        "skipped": skipped, "source": Path(name) if isinstance(src, (str, Path)) else None, "images": images,
        "modalities": modalities, "val_keys": val_keys,
        "content": (_digest(work, order, strings_digest, lists, label_space),), "hash_in_key_order": True,
        "files": tuple(hints["files"]), "id_column": key_col, "labels_column": cols["labels"],
        "label_sep": sep if sep not in (None, "list") else "|", "describe": describe,
    }


def _work(frame: pl.DataFrame, cols: dict, hf_img: bool) -> tuple[pl.DataFrame, str, str | None]:
    """The columns checked and hashed, one way whatever the source named them; the key's column for
    messages, and which of them the key is (None: the id column)."""
    work = frame.select(
        pl.col(_ROW),
        *([_text(frame, cols["text"]).alias(_TXT)] if cols["text"] else []),
        *([pl.col(cols["image"]).cast(pl.String).alias(_IMG)] if cols["image"] and not hf_img else []),
        *([pl.col(cols["split"]).cast(pl.String).str.strip_chars().str.to_lowercase().alias(_SPLIT)] if cols["split"] else []),
        *([pl.col(cols["id"]).cast(pl.String).alias(_KEY)] if cols["id"] else []),
    )
    # The key: the id column, else the image path, else (a HF dataset's photos have no path) the row, else the text.
    if cols["id"]:
        return work, cols["id"], None
    if _IMG in work.columns:
        key_col, key_from = cols["image"], _IMG
    elif hf_img:
        key_col, key_from = "row", _ROW
    else:
        key_col, key_from = cols["text"][0], _TXT
    return work.with_columns(pl.col(key_from).cast(pl.String).alias(_KEY)), key_col, key_from


def hf_image(hf, cols) -> bool:
    return hf is not None and cols["image"] is not None and cols["image"] in hf[1]


# --- reading -----------------------------------------------------------------------------------

def _tables_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file())


def _frame(src):
    """(polars frame, name for messages, base folder, (HF dataset, its image columns) or None, hints)."""
    hints = {"detected": set(), "files": [], "class_names": {}}
    if isinstance(src, pl.DataFrame):
        return src, "<DataFrame>", Path.cwd(), None, hints
    if type(src).__module__.startswith("pandas"):
        return pl.from_pandas(src), "<DataFrame>", Path.cwd(), None, hints
    if type(src).__module__.startswith("datasets"):
        return _hf_frame(src, "<Hugging Face dataset>", Path.cwd(), hints)
    path = Path(src)
    if path.is_dir():
        if any((path / m).is_file() for m in HF_MARKERS):
            try:
                import datasets
            except ImportError:
                raise DataError(f"{path}: a Hugging Face dataset; install the `datasets` package (pip install datasets)") from None
            try:
                ds = datasets.load_from_disk(str(path))
            except Exception as e:  # noqa: BLE001 - any reader failure is the file's fault here
                raise DataError(f"{path}: cannot read the Hugging Face dataset ({type(e).__name__}: {e})") from None
            hints["files"] += [p for p in path.rglob("*") if p.is_file()]
            return _hf_frame(ds, str(path), path, hints)
        tables = _tables_in(path)
        if len(tables) != 1:
            raise DataError(f"{path}: expected one table (CSV, TSV, Parquet or JSONL), train.csv + test.csv (COMP5329), "
                            f"or a saved Hugging Face dataset; found {', '.join(p.name for p in tables) or 'none'}")
        path = tables[0]
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: not a table featcache reads (CSV, TSV, Parquet, JSONL), a COMP5329 folder or a saved "
                        "Hugging Face dataset")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    hints["files"].append(path)
    try:
        if fmt in ("csv", "tsv"):
            frame = pl.read_csv(path, separator="\t" if fmt == "tsv" else ",", infer_schema=False, encoding="utf8",
                                raise_if_empty=True)
        elif fmt == "parquet":
            frame = pl.read_parquet(path)
        else:
            frame = pl.read_ndjson(path)
    except Exception as e:  # noqa: BLE001 - polars raises its own types; all of them mean this file
        raise DataError(f"{path}: cannot read it as {fmt.upper()} ({_first_line(e)})") from None
    return frame, str(path), path.parent, None, hints


def _hf_frame(ds, name: str, base: Path, hints: dict):
    import datasets

    if isinstance(ds, datasets.DatasetDict):  # its splits become a split column
        parts = []
        for split, part in ds.items():
            parts.append(part.add_column("split", [split] * len(part)) if "split" not in part.column_names else part)
        ds = datasets.concatenate_datasets(parts)
    features = ds.features
    images = [c for c, f in features.items() if isinstance(f, datasets.Image)]
    for c in images:
        ds = ds.cast_column(c, datasets.Image(decode=False))
    for c, f in features.items():
        inner = getattr(f, "feature", None)
        if isinstance(inner, datasets.ClassLabel):  # Sequence(ClassLabel): the label order is the ClassLabel's
            hints["class_names"][c] = list(inner.names)
        elif isinstance(f, list) and f and isinstance(f[0], datasets.ClassLabel):
            hints["class_names"][c] = list(f[0].names)
        elif isinstance(f, datasets.ClassLabel):
            hints["class_names"][c] = list(f.names)
    rest = [c for c in ds.column_names if c not in images]
    frame = pl.from_arrow(ds.select_columns(rest).data.table) if rest else pl.DataFrame()
    for c in images:  # only the column's name is needed in the frame: photos are read from ds by row
        frame = frame.with_columns(pl.lit(None, pl.String).alias(c))
    hints["hf_images"] = images
    return frame, name, base, (ds, images), hints


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


# --- columns -----------------------------------------------------------------------------------

def _columns(frame: pl.DataFrame, spec: DataSpec, name: str, hints: dict) -> dict:
    present = frame.columns
    lower = {c.lower(): c for c in present}

    def named(flag: str, column: str) -> str:
        if column not in present:
            raise DataError(f"{name}: no column {column!r} ({flag}); columns: {', '.join(present)}")
        return column

    def detect(kind: str, candidates) -> str | None:
        for c in candidates:
            if c in lower:
                hints["detected"].add(f"{kind}={lower[c]}")
                return lower[c]
        return None

    hf_images = hints.get("hf_images", [])
    image = named("--image-col", spec.image) if spec.image else (hf_images[0] if hf_images else detect("image", IMAGE_NAMES))
    text = tuple(named("--text-col", t) for t in spec.text) if spec.text else tuple(
        t for t in [detect("text", TEXT_NAMES)] if t)
    class_labelled = [c for c in hints["class_names"] if c not in (spec.split, "split")]
    labels = named("--labels-col", spec.labels) if spec.labels else (
        class_labelled[0] if class_labelled else detect("labels", LABEL_NAMES))
    if labels is None:
        raise DataError(f"{name}: no labels column (looked for {', '.join(LABEL_NAMES)}); name it with --labels-col; "
                        f"columns: {', '.join(present)}")
    ident = named("--id-col", spec.id) if spec.id else detect("id", ID_NAMES)
    split = named("--split-col", spec.split) if spec.split else (detect("split", SPLIT_NAMES) if "split" in lower else None)
    if image is None and not text:
        raise DataError(f"{name}: no image or text column (looked for {', '.join(IMAGE_NAMES + TEXT_NAMES)}); "
                        f"name them with --image-col / --text-col; columns: {', '.join(present)}")
    used = [c for c in (image, labels, ident, split, *text) if c]
    if len(set(used)) != len(used):
        raise DataError(f"{name}: one column serves two roles ({', '.join(used)}); name each with its option")
    return {"image": image, "text": text, "labels": labels, "id": ident, "split": split}


def _text(frame: pl.DataFrame, columns: tuple[str, ...]) -> pl.Expr:
    parts = [pl.col(c).cast(pl.String).fill_null("") for c in columns]
    return parts[0] if len(parts) == 1 else pl.concat_str(parts, separator="\n")


# --- labels ------------------------------------------------------------------------------------

def _labels(column: pl.Series, spec: DataSpec, name: str, col: str, hints: dict):
    """(a code per row, the labels of each code (null: none), separator used, LabelSpace, declared label
    set or None). A labels column holds few distinct values (a million rows, a few thousand label
    combinations), so each value is split, cleaned and checked once and a row keeps its value's code."""
    sep = spec.sep
    class_names = hints["class_names"].get(col)
    if class_names is not None:  # ClassLabel ints -> names, in the ClassLabel's order
        ints = column.cast(pl.List(pl.Int64)) if column.dtype.base_type() == pl.List else \
            column.cast(pl.Int64).to_frame().select(pl.concat_list(pl.col(column.name))).to_series()
        # -1 is a ClassLabel's "no label"
        column = ints.list.eval(pl.element().filter(pl.element() >= 0).replace_strict(
            list(range(len(class_names))), class_names, default=None, return_dtype=pl.String))
    if column.dtype.base_type() == pl.List:  # a list and a string column are read one way: joined, split
        text, sep = column.cast(pl.List(pl.String)).list.join(LIST_SEP), "list"
    else:
        text = column.cast(pl.String)
    text = text.fill_null("")
    values = text.unique(maintain_order=True)  # in order of appearance: one pass, half the time of unordered
    codes = text.cast(pl.Enum(values)).to_physical().cast(pl.UInt32)  # each row's place in `values`
    if sep is None:
        sep = next((s for s in ("|", ",", ";") if values.str.contains(s, literal=True).any()), " ")
        hints["detected"].add(f"label_sep={sep!r}")
    lists = _split(values, sep)
    if class_names is not None:
        return codes, lists, sep, LabelSpace.from_names(class_names), set(class_names)
    found = lists.explode().drop_nulls().unique().to_list()
    declared = _declared(spec.labels_file) if spec.labels_file else None
    if declared is not None:
        ids, names = declared
        space = LabelSpace(tuple(ids), tuple(names))
        if all(isinstance(i, int) for i in ids):
            lists = _canonical_ints(lists)
        return codes, lists, sep, space, {str(i) for i in ids}
    if found and all(f.isascii() and f.isdigit() for f in found):  # integer ids, as COMP5329 writes them
        ids = sorted({int(f) for f in found})
        return codes, _canonical_ints(lists), sep, LabelSpace(tuple(ids), tuple(str(i) for i in ids)), None
    return codes, lists, sep, LabelSpace.from_names(sorted(found)), None


def _split(values: pl.Series, sep: str) -> pl.Series:
    """Each distinct cell's labels; null where it has none (blank, or only separators and spaces)."""
    if sep == "list":  # a list column's names are taken as they are
        lists = values.str.split(LIST_SEP)
    else:
        lists, s = values.str.split(sep), re.escape(sep)
        # Only cells with padding or empty names pay for cleaning each name.
        messy = r"^\s|\s$|\s\s" if sep == " " else rf"^\s|\s$|\s{s}|{s}\s|{s}{s}|^{s}|{s}$"
        if values.str.contains(messy).any():
            lists = lists.list.eval(pl.element().str.strip_chars()).list.eval(pl.element().filter(pl.element() != ""))
    blank = values.str.strip_chars() == ""
    return pl.DataFrame({"l": lists, "blank": blank}).select(
        pl.when(~pl.col("blank") & (pl.col("l").list.len() > 0)).then(pl.col("l"))).to_series()


def _canonical_ints(labels: pl.Series) -> pl.Series:
    """Integer ids spelled one way ("007" is "7"), so they match the label set's."""
    return labels.list.eval(pl.element().str.strip_chars_start("0").replace("", "0"))


def _declared(path: Path) -> tuple[list, list[str]]:
    """A labels file: a JSON list of names, a JSON object {id: name} (integer ids), or one name per line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the labels file ({e})") from None
    if Path(path).suffix.lower() == ".json":
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise DataError(f"{path}: not JSON ({e})") from None
        if isinstance(doc, list) and doc and all(isinstance(n, str) and n for n in doc) and len(set(doc)) == len(doc):
            return list(doc), list(doc)
        if isinstance(doc, dict) and doc and all(isinstance(v, str) for v in doc.values()):
            try:
                items = sorted((int(k), v) for k, v in doc.items())
            except ValueError:
                raise DataError(f"{path}: an object's keys must be integer label ids") from None
            if len({i for i, _ in items}) != len(items):  # "1" and "01" are one id
                raise DataError(f"{path}: an integer label id is declared twice ({sorted(doc)})")
            return [i for i, _ in items], [n for _, n in items]
        raise DataError(f"{path}: expected a JSON list of distinct label names or an object {{\"<id>\": \"<name>\"}}")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names or len(set(names)) != len(names):
        raise DataError(f"{path}: expected one distinct label name per line")
    return names, names


# --- checks ------------------------------------------------------------------------------------

def _path_problems(work: pl.DataFrame, cols: dict, image_root: Path, key_col: str, key_from: str | None) -> list:
    """(row, column, reason) of every row without a key or whose image path is empty or leaves the root.
    One pass over the columns (polars runs the checks side by side); only flagged rows become Python
    objects."""
    checks = {}
    if _IMG in work.columns:
        checks["empty"] = pl.col(_IMG).is_null() | (pl.col(_IMG).str.strip_chars() == "")  # blank: nothing but spaces
        # Paths that may leave the root (a '..' part, or absolute), then resolved in Python, these rows
        # only. A Windows drive is a name here, as `posixpath` reads it.
        checks["risky"] = pl.col(_IMG).str.contains(r"(^|[/\\])\.\.([/\\]|$)") | pl.col(_IMG).str.starts_with("/")
    if key_from in (None, _TXT):  # the key is the id, or the text: every row needs one (a path: "empty")
        checks["keyless"] = pl.col(_KEY).is_null() | (pl.col(_KEY).str.strip_chars() == "")
    # A NUL byte is cut off by numpy's strings and HDF5's, and refused by the OS: two keys would merge.
    nul = {key_col: _KEY} | ({cols["image"]: _IMG} if _IMG in work.columns and key_from != _IMG else {})
    for column, c in nul.items():
        checks[f"nul {column}"] = pl.col(c).str.contains("\x00", literal=True)
    hit = _hits(work, checks)
    found = []
    if hit.get("keyless"):
        what = "empty id" if key_from is None else "empty text (the row's key: the table has no id or image column)"
        found += [(r[_ROW] + 1, key_col, what) for r in _flagged(work, checks["keyless"])]
    for column in nul:
        if hit.get(f"nul {column}"):
            found += [(r[_ROW] + 1, column, "holds a NUL byte") for r in _flagged(work, checks[f"nul {column}"])]
    if hit.get("empty"):
        found += [(r[_ROW] + 1, cols["image"], "empty image path") for r in _flagged(work, checks["empty"])]
    if hit.get("risky"):
        root = image_root.resolve()
        for r in _flagged(work, checks["risky"]):
            p = r[_IMG]
            target = Path(posixpath.normpath(p if p.startswith("/") else posixpath.join(str(root), p)))
            if not target.is_relative_to(root):
                reason = f"image path {p!r} leaves {root}; name where images live with --image-root"
                found.append((r[_ROW] + 1, cols["image"], reason))
    return found


def _label_problems(work: pl.DataFrame, cols: dict, declared, lists: pl.Series) -> list:
    """(row, column, reason) of every row whose split is not train/val/test, that is a train or val row
    without labels, or that names a label outside the declared set."""
    checks = {}
    if _SPLIT in work.columns:
        checks["split"] = ~pl.col(_SPLIT).is_in(list(SPLIT_VALUES)) | pl.col(_SPLIT).is_null()
        checks["unlabelled"] = pl.col(_SPLIT).replace(SPLIT_VALUES).is_in(["train", "val"]) & ~pl.col(_HAS)
    unknown = {}
    if declared is not None:  # found per distinct cell, then its rows
        bad = lists.list.eval(pl.element().filter(~pl.element().is_in(list(declared))))
        codes = (bad.list.len() > 0).arg_true()
        unknown = dict(zip(codes.to_list(), bad.gather(codes).to_list()))
        checks["unknown"] = pl.col(_LAB).is_in(list(unknown))
    hit = _hits(work, checks)
    found = []
    if hit.get("split"):
        found += [(r[_ROW] + 1, cols["split"], f"split {r[_SPLIT]!r} is not one of train, val, test")
                  for r in _flagged(work, checks["split"])]
    if hit.get("unlabelled"):
        found += [(r[_ROW] + 1, cols["labels"], f"a {r[_SPLIT]} row has no label") for r in _flagged(work, checks["unlabelled"])]
    if hit.get("unknown"):
        found += [(r[_ROW] + 1, cols["labels"], f"label {label!r} is not in the declared label set")
                  for r in _flagged(work, checks["unknown"]) for label in unknown[r[_LAB]]]
    return found


def _hits(work: pl.DataFrame, checks: dict) -> dict:
    """Which checks flag any row."""
    return work.select(mask.any().alias(check) for check, mask in checks.items()).row(0, named=True) if checks else {}


def _flagged(work: pl.DataFrame, mask: pl.Expr):
    """Every flagged row (not the first thousand: --lenient must skip them all)."""
    return work.filter(mask).iter_rows(named=True)


def _duplicates(work: pl.DataFrame, key_col: str) -> list:
    dup = work.filter(pl.col(_KEY).is_duplicated())
    if dup.height == 0:
        return []
    first = dup.group_by(_KEY).agg(pl.col(_ROW).min().alias("first"))
    dup = dup.join(first, on=_KEY).filter(pl.col(_ROW) != pl.col("first"))
    return [(r[_ROW] + 1, key_col, f"duplicate key {r[_KEY]!r} (first on row {r['first'] + 1}); name an id column with --id-col")
            for r in dup.iter_rows(named=True)]


# --- the hash of each row's strings, and the key order ----------------------------------------

def _row_hashes(work: pl.DataFrame, columns: list[str]) -> dict[str, np.ndarray]:
    """Each string column's XXH3-64 hash of every row (polars-hash: one pass in Rust, all columns in
    parallel; XXH3 is a published algorithm, so the hashes stay the same across versions, which polars'
    own `hash` does not promise). A row's hash is its own, whatever its neighbours or the table's order,
    so the hashes stand for the rows in the fingerprint and the key's order them. A null hashes as
    the empty string, as it reads: a missing text is empty, and a row without a key or image path is
    refused (`_path_problems`)."""
    hashed = work.select([plh.col(c).fill_null("").nchash.xxh3_64().alias(c) for c in columns])
    return {c: hashed[c].to_numpy() for c in columns}


def _keyed(work: pl.DataFrame, columns: list[str]) -> tuple[np.ndarray, bool, bytes]:
    """The key order, whether two rows share a key, and a hash of the string columns' row hashes in
    that order."""
    strings = _row_hashes(work, columns)
    order, duplicated = _key_order(work[_KEY], strings[_KEY])
    h = hashlib.sha256()
    for column, hashes in strings.items():
        h.update(column.encode())
        h.update(hashes[order])
    return order, duplicated, h.digest()


def _key_order(keys: pl.Series, key_hashes: np.ndarray) -> tuple[np.ndarray, bool]:
    """The rows in the order the fingerprint hashes them, and whether two rows share a key: by the
    key's hash, and where two hashes tie (a duplicate key, or rarely two keys) by the key itself, so
    the order depends on the keys alone and duplicates sit side by side."""
    bits = max(len(key_hashes) - 1, 1).bit_length()  # of a row number
    # The hash's top bits with the row number below them: sorting plain integers is twice as fast as
    # an argsort.
    packed = key_hashes >> np.uint64(bits)
    packed <<= np.uint64(bits)
    packed |= np.arange(len(packed), dtype=np.uint64)
    packed.sort()
    same = packed[1:] ^ packed[:-1]
    same >>= np.uint64(bits)
    if not (same == 0).any():
        packed &= np.uint64((1 << bits) - 1)
        return packed, False
    order = pl.DataFrame({"h": key_hashes, "k": keys}).select(pl.arg_sort_by("h", "k")).to_series().to_numpy()
    tie = np.flatnonzero(key_hashes[order[1:]] == key_hashes[order[:-1]])
    return order, bool(tie.size and (keys.gather(order[tie]) == keys.gather(order[tie + 1])).any())


# --- rows and their hash -----------------------------------------------------------------------

def _label_tuples(lists: pl.Series, numeric: bool) -> list:
    """Each code's labels as a Record holds them (once each, integers where the ids are)."""
    return [tuple(dict.fromkeys(int(x) for x in lab) if numeric else dict.fromkeys(lab)) if lab is not None else ()
            for lab in lists.to_list()]


def _records(part: pl.DataFrame, labels: list, hf_images: bool) -> list[Record]:
    keys = part[_KEY].to_list()
    texts = part[_TXT].to_list() if _TXT in part.columns else [""] * part.height
    images = (part[_ROW].cast(pl.String).to_list() if hf_images else part[_IMG].to_list() if _IMG in part.columns
              else [None] * part.height)
    codes = part[_LAB].to_list()
    rows = (part[_ROW] + 1).to_list()
    test = part[_TEST].to_list()
    return [Record(k, t, None if is_test else labels[c], r, im)
            for k, t, im, c, r, is_test in zip(keys, texts, images, codes, rows, test)]


def _digest(work: pl.DataFrame, order: np.ndarray, strings_digest: bytes, lists: pl.Series,
            label_space: LabelSpace) -> bytes:
    """An order-free hash of the rows, in key order: their strings (`strings_digest`, see `_keyed`),
    each row's labels as their place among the distinct label lists (sorted) and whether it is a row
    to predict."""
    canon = lists.list.join("\x1e")  # a list from any source, one way
    distinct = canon.drop_nulls().unique().sort()
    none = np.uint32(len(distinct))  # no labels
    rank = canon.replace_strict(distinct, pl.Series(np.arange(len(distinct), dtype=np.uint32)), default=none,
                                return_dtype=pl.UInt32).to_numpy()
    h = hashlib.sha256(b"featcache-table-v4")
    h.update(strings_digest)
    h.update(json.dumps(distinct.to_list()).encode())
    h.update(rank[work[_LAB].to_numpy()[order]])
    h.update(work[_TEST].to_numpy()[order])
    if _SPLIT in work.columns:  # which rows validate is part of the data
        h.update(b"val:" + (work[_SPLIT] == "val").fill_null(False).to_numpy()[order].tobytes())
    h.update(b"ids:int" if all(isinstance(i, int) for i in label_space.ids) else b"ids:names")
    return h.digest()
