"""Any table as a dataset: CSV, TSV, Parquet, JSONL, a Hugging Face dataset, a polars or pandas frame.

    fields = read_table("items.csv", DataSpec(labels="tags", sep="|"))   # -> Dataset(**fields)

Columns are named by the spec or detected from common names (reported in `describe`). The table is
read with a real parser (polars) and checked column-wise, so a million rows are validated and
hashed without a Python object per row; Records are built when first used. Every fault is a
DataError naming the file, row and column, or (lenient) a counted Skip.

Rules: a row's key is its id column, else its image path, else its text; keys are unique. Image
paths are relative to the table's folder (or `image_root`), nested folders allowed, and never
leave it. Rows without labels (or split=test) are the rows to predict. Rows keep the table's order
(the stratified split depends on it); the fingerprint hashes them in key order, so the same rows in
CSV and Parquet, or reordered, are the same data and share their caches.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from pathlib import Path

import polars as pl

from featcache.data.images import Column, Folder
from featcache.data.records import DataError, LabelSpace, Record, Skip
from featcache.data.spec import ID_NAMES, IMAGE_NAMES, LABEL_NAMES, SPLIT_NAMES, SPLIT_VALUES, TEXT_NAMES, DataSpec

SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
_ROW, _KEY, _IMG, _TXT, _LAB, _SPLIT = "__row", "__key", "__image", "__text", "__labels", "__split"


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
    cols = _columns(frame, spec, name, hints)
    frame = frame.with_row_index(_ROW)
    hf_img = hf_image(hf, cols)
    work = frame.select(
        pl.col(_ROW),
        *([_text(frame, cols["text"]).alias(_TXT)] if cols["text"] else []),
        *([pl.col(cols["image"]).cast(pl.String).alias(_IMG)] if cols["image"] and not hf_img else []),
        *([pl.col(cols["split"]).cast(pl.String).str.strip_chars().str.to_lowercase().alias(_SPLIT)] if cols["split"] else []),
    )
    labels, sep, label_space, declared = _labels(frame[cols["labels"]], spec, name, cols["labels"], hints)
    # No labels is one thing whatever the source wrote (null, "", []): a row to predict.
    work = work.with_columns(labels.alias(_LAB)).with_columns(
        pl.when(pl.col(_LAB).list.len() > 0).then(pl.col(_LAB)).alias(_LAB))
    image_root = Path(spec.image_root) if spec.image_root else base
    problems = _problems(work, cols, image_root, declared)
    # The key: the id column, else the image path, else (a HF dataset's photos have no path) the row, else the text.
    if cols["id"]:
        key_col, key = cols["id"], frame[cols["id"]].cast(pl.String)
    elif _IMG in work.columns:
        key_col, key = cols["image"], work[_IMG]
    elif hf_img:
        key_col, key = "row", work[_ROW].cast(pl.String)
    else:
        key_col, key = cols["text"][0], work[_TXT]
    work = work.with_columns(key.alias(_KEY))
    order = work[_KEY].arg_sort()  # the rows in key order: duplicates side by side, and the hash order-free
    sorted_keys = work[_KEY].gather(order)
    if (sorted_keys == sorted_keys.shift(1)).any():
        problems = problems + _duplicates(work, key_col)
    skipped = []
    if problems:
        problems.sort()
        if not lenient:
            row, column, reason = problems[0]
            more = f" (and {len(problems) - 1} more; --lenient skips them)" if len(problems) > 1 else ""
            raise DataError(f"{name} row {row} column {column!r}: {reason}{more}")
        bad = sorted({row - 1 for row, _, _ in problems})
        skipped = [Skip(name, row, f"column {column!r}: {reason}") for row, column, reason in problems]
        work = work.filter(~pl.col(_ROW).is_in(bad))
        order = work[_KEY].arg_sort()
    if _SPLIT in work.columns:
        work = work.with_columns(pl.col(_SPLIT).replace(SPLIT_VALUES))
    is_test = pl.col(_LAB).is_null() | (pl.col(_LAB).list.len() == 0)
    if _SPLIT in work.columns:
        is_test = is_test | (pl.col(_SPLIT) == "test")
    work = work.with_columns(is_test.alias("__test"))  # rows keep the table's order: the split depends on it
    if work.filter(~pl.col("__test")).height == 0:
        raise DataError(f"{name}: no labelled rows (column {cols['labels']!r} is empty on every row"
                        + (f", or {cols['split']!r} says test" if cols["split"] else "") + ")")
    numeric = all(isinstance(i, int) for i in label_space.ids)
    modalities = tuple(m for m, present in (("image", bool(cols["image"])), ("text", bool(cols["text"]))) if present)
    images = (Column(hf[0], cols["image"], name) if hf_img else Folder(image_root) if cols["image"] else None)
    val_keys = None
    if _SPLIT in work.columns:
        val_keys = frozenset(work.filter((pl.col(_SPLIT) == "val") & ~pl.col("__test"))[_KEY].to_list())
    describe = {"table": name, "id": cols["id"] or f"(none: rows keyed by {key_col!r})", "image": cols["image"],
                "text": list(cols["text"]), "labels": cols["labels"], "label_sep": sep, "split": cols["split"],
                "detected": sorted(hints["detected"]), "labels_found": label_space.num_labels}
    return {
        "root": base, "label_space": label_space,
        "train_rows": lambda: _records(work.filter(~pl.col("__test")), hf_img, numeric),
        "test_rows": lambda: _records(work.filter(pl.col("__test")), hf_img, numeric),
        "skipped": skipped, "source": Path(name) if isinstance(src, (str, Path)) else None, "images": images,
        "modalities": modalities, "val_keys": val_keys,
        "content": (_digest(work, order, label_space),), "hash_in_key_order": True,
        "files": tuple(hints["files"]), "id_column": key_col, "labels_column": cols["labels"],
        "label_sep": sep if sep not in (None, "list") else "|", "describe": describe,
    }


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
    """(list[str] labels per row (null: none), separator used, LabelSpace, declared label set or None)."""
    sep = spec.sep
    if col in hints["class_names"]:  # ClassLabel ints -> names, in the ClassLabel's order
        names = hints["class_names"][col]
        ints = column.cast(pl.List(pl.Int64)) if column.dtype.base_type() == pl.List else \
            column.cast(pl.Int64).to_frame().select(pl.concat_list(pl.col(column.name))).to_series()
        # -1 is a ClassLabel's "no label"
        labels = ints.list.eval(pl.element().filter(pl.element() >= 0).replace_strict(
            list(range(len(names))), names, default=None, return_dtype=pl.String))
        return labels, "list", LabelSpace.from_names(names), set(names)
    if column.dtype.base_type() == pl.List:
        labels, sep = column.cast(pl.List(pl.String)), "list"
    else:
        text = column.cast(pl.String)
        if sep is None:
            sep = next((s for s in ("|", ",", ";") if text.str.contains(s, literal=True).any()), " ")
            hints["detected"].add(f"label_sep={sep!r}")
        if (text.str.strip_chars() == "").any():  # a blank cell is a row without labels (CSV reads an empty one as null)
            text = text.to_frame("t").select(pl.when(pl.col("t").str.strip_chars() != "").then(pl.col("t"))).to_series()
        s = re.escape(sep)
        # Only a column with padding or empty names pays for cleaning each name (a million rows: 0.2 s).
        messy = r"^\s|\s$|\s\s" if sep == " " else rf"^\s|\s$|\s{s}|{s}\s|{s}{s}|^{s}|{s}$"
        labels = text.str.split(sep)
        if text.str.contains(messy).any():
            labels = labels.list.eval(pl.element().str.strip_chars()).list.eval(pl.element().filter(pl.element() != ""))
    found = labels.explode().drop_nulls().unique().to_list()
    declared = _declared(spec.labels_file) if spec.labels_file else None
    if declared is not None:
        ids, names = declared
        space = LabelSpace(tuple(ids), tuple(names))
        if all(isinstance(i, int) for i in ids):
            labels = _canonical_ints(labels)
        return labels, sep, space, {str(i) for i in ids}
    if found and all(f.isascii() and f.isdigit() for f in found):  # integer ids, as COMP5329 writes them
        ids = sorted({int(f) for f in found})
        return _canonical_ints(labels), sep, LabelSpace(tuple(ids), tuple(str(i) for i in ids)), None
    return labels, sep, LabelSpace.from_names(sorted(found)), None


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
            return [i for i, _ in items], [n for _, n in items]
        raise DataError(f"{path}: expected a JSON list of distinct label names or an object {{\"<id>\": \"<name>\"}}")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names or len(set(names)) != len(names):
        raise DataError(f"{path}: expected one distinct label name per line")
    return names, names


# --- checks ------------------------------------------------------------------------------------

def _problems(work: pl.DataFrame, cols: dict, image_root: Path, declared) -> list:
    """(row, column, reason) of every bad row, found column-wise."""
    found = []

    def rows(mask: pl.Expr, column: str, reason, limit: int = 1000):
        hit = work.filter(mask).head(limit)
        for row in hit.iter_rows(named=True):
            found.append((row[_ROW] + 1, column, reason(row) if callable(reason) else reason))

    if _IMG in work.columns:
        rows(pl.col(_IMG).is_null() | (pl.col(_IMG).str.strip_chars() == ""), cols["image"], "empty image path")
        root = image_root.resolve()
        risky = work.filter(pl.col(_IMG).str.contains(r"(^|[/\\])\.\.([/\\]|$)") | pl.col(_IMG).str.starts_with("/")
                            | pl.col(_IMG).str.contains(r"^[A-Za-z]:[/\\]"))
        for row in risky.iter_rows(named=True):
            p = row[_IMG]
            target = Path(posixpath.normpath(p if p.startswith("/") else posixpath.join(str(root), p)))
            if not target.is_relative_to(root):
                found.append((row[_ROW] + 1, cols["image"], f"image path {p!r} leaves {root}; name where images live "
                                                            "with --image-root"))
    if _SPLIT in work.columns:
        rows(~pl.col(_SPLIT).is_in(list(SPLIT_VALUES)) | pl.col(_SPLIT).is_null(), cols["split"],
             lambda r: f"split {r[_SPLIT]!r} is not one of train, val, test")
        work_split = pl.col(_SPLIT).replace(SPLIT_VALUES)
        rows(work_split.is_in(["train", "val"]) & (pl.col(_LAB).is_null() | (pl.col(_LAB).list.len() == 0)),
             cols["labels"], lambda r: f"a {r[_SPLIT]} row has no label")
    if declared is not None:
        unknown = work.select(_ROW, _LAB).explode(_LAB).filter(pl.col(_LAB).is_not_null() & ~pl.col(_LAB).is_in(list(declared)))
        for row in unknown.head(1000).iter_rows(named=True):
            found.append((row[_ROW] + 1, cols["labels"], f"label {row[_LAB]!r} is not in the declared label set"))
    return found


def _duplicates(work: pl.DataFrame, key_col: str) -> list:
    dup = work.filter(pl.col(_KEY).is_duplicated())
    if dup.height == 0:
        return []
    first = dup.group_by(_KEY).agg(pl.col(_ROW).min().alias("first"))
    dup = dup.join(first, on=_KEY).filter(pl.col(_ROW) != pl.col("first")).head(1000)
    return [(r[_ROW] + 1, key_col, f"duplicate key {r[_KEY]!r} (first on row {r['first'] + 1}); name an id column with --id-col")
            for r in dup.iter_rows(named=True)]


# --- rows and their hash -----------------------------------------------------------------------

def _records(part: pl.DataFrame, hf_images: bool, numeric: bool) -> list[Record]:
    keys = part[_KEY].to_list()
    texts = part[_TXT].to_list() if _TXT in part.columns else [""] * part.height
    images = (part[_ROW].cast(pl.String).to_list() if hf_images else part[_IMG].to_list() if _IMG in part.columns
              else [None] * part.height)
    labels = part[_LAB].to_list()
    rows = (part[_ROW] + 1).to_list()
    test = part["__test"].to_list()
    out = []
    for k, t, im, lab, r, is_test in zip(keys, texts, images, labels, rows, test):
        labels = None if is_test else tuple(dict.fromkeys(int(x) for x in lab) if numeric else dict.fromkeys(lab))
        out.append(Record(k, t, labels, r, im))
    return out


def _digest(work: pl.DataFrame, order: pl.Series, label_space: LabelSpace) -> bytes:
    """An order-free hash of the rows: each row's columns joined by NUL, the rows in key order,
    hashed as their Arrow buffers (lengths, then bytes) without a Python string per row."""
    import numpy as np

    parts = []
    for column in (_KEY, _IMG, _TXT, _LAB, "__test"):
        if column not in work.columns:
            parts.append(pl.lit(f"<no {column}>"))
            continue
        expr = pl.col(column)
        dtype = work.schema[column]
        if dtype.base_type() == pl.List:  # labels: a list from any source, joined one way
            expr = expr.cast(pl.List(pl.String)).list.join("\x1e")
        parts.append(expr.cast(pl.String).fill_null("\x01"))
    rows = work.select(pl.concat_str(parts, separator="\x00").alias("r")).to_series().gather(order).rechunk()
    arr = rows.to_arrow()
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64 if "large" in str(arr.type) else np.int32,
                            count=len(arr) + 1, offset=arr.offset * (8 if "large" in str(arr.type) else 4))
    h = hashlib.sha256(b"featcache-table-v2")
    h.update(np.diff(offsets).astype(np.int64).tobytes())
    h.update(memoryview(arr.buffers()[2])[offsets[0]:offsets[-1]])
    h.update(b"ids:int" if all(isinstance(i, int) for i in label_space.ids) else b"ids:names")
    return h.digest()
