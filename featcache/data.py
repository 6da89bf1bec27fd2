"""The COMP5329 layout: train.csv (ImageID,Labels,Caption), test.csv (ImageID,Caption), data/<ImageID>.

The published CSV files are not valid CSV: quotes inside captions are not escaped and some
captions hold a raw newline. Every record is still unambiguous line by line: a record starts
with `<ImageID>,[<labels>,]"` and its caption runs to the closing quote at the end of a line.
So the reader works on lines, not on a CSV tokenizer, and never drops a row silently.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# COCO category ids used by COMP5329 (12 is unused) and their names, for display.
COCO_NAMES = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train",
    8: "truck", 9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign",
    14: "parking meter", 15: "bench", 16: "bird", 17: "cat", 18: "dog", 19: "horse",
}
LABELS_FILE = "labels.json"  # optional, in a dataset root: {"<label id>": "<name>", ...}


class DataError(ValueError):
    """Bad input data; the message names the file and, where there is one, the line."""


@dataclass(frozen=True)
class LabelSpace:
    """Label ids (as written in the CSV) <-> column indices of the multi-hot target."""

    ids: tuple[int, ...]
    names: tuple[str, ...]

    @classmethod
    def coco(cls) -> LabelSpace:
        return cls(tuple(COCO_NAMES), tuple(COCO_NAMES.values()))

    @classmethod
    def from_mapping(cls, mapping: dict) -> LabelSpace:
        items = sorted((int(k), str(v)) for k, v in mapping.items())
        return cls(tuple(i for i, _ in items), tuple(n for _, n in items))

    @property
    def num_labels(self) -> int:
        return len(self.ids)

    def index(self, label: int) -> int:
        return self._index[label]

    def encode(self, rows: list[tuple[int, ...]]) -> np.ndarray:
        """Multi-hot float32 targets, one row per label tuple."""
        y = np.zeros((len(rows), self.num_labels), dtype=np.float32)
        for r, labels in enumerate(rows):
            y[r, [self._index[lab] for lab in labels]] = 1.0
        return y

    def decode(self, multi_hot: np.ndarray) -> list[tuple[int, ...]]:
        return [tuple(self.ids[j] for j in np.flatnonzero(row)) for row in np.asarray(multi_hot)]

    @property
    def _index(self) -> dict[int, int]:
        return {lab: j for j, lab in enumerate(self.ids)}


@dataclass(frozen=True)
class Record:
    image_id: str
    caption: str
    labels: tuple[int, ...] | None  # None for test rows
    line: int  # 1-based line where the record starts, for error messages


@dataclass(frozen=True)
class Skip:
    file: str
    line: int
    reason: str


@dataclass
class Dataset:
    root: Path
    label_space: LabelSpace
    train: list[Record]
    test: list[Record]
    skipped: list[Skip] = field(default_factory=list)
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)

    def image_path(self, image_id: str) -> Path:
        return self.root / "data" / image_id

    def targets(self, records: list[Record] | None = None) -> np.ndarray:
        records = self.train if records is None else records
        return self.label_space.encode([r.labels for r in records])

    def fingerprint(self) -> str:
        """Hash of what a feature depends on: the CSV bytes (ids, captions), the label space and
        every image's bytes. Contents, not sizes and mtimes: a copy of the same data (rsync, a
        re-mounted share, a fresh CI checkout) must keep its caches. Reading 11,000 photos
        (140 MB) takes about 0.2 s warm, so it is done once per loaded Dataset."""
        if self._fingerprint is not None:
            return self._fingerprint
        h = hashlib.sha256()
        for name in ("train.csv", "test.csv"):
            h.update((self.root / name).read_bytes())
        h.update(json.dumps([self.label_space.ids, self.label_space.names]).encode())
        for rec in self.train + self.test:
            path = self.image_path(rec.image_id)
            data = path.read_bytes() if path.is_file() else b"<missing>"
            h.update(f"{rec.image_id}:{len(data)}:".encode())
            h.update(data)
        self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint


# An ImageID is a file name (no spaces, an extension): that is what tells a record's first line
# from a caption's continuation line.
_ID = r'(?P<id>[^,"\s]+\.[A-Za-z0-9]+)'
_TRAIN_START = re.compile(_ID + r',(?P<labels>[^,"\n]*),(?P<rest>.*)\Z', re.S)
_TEST_START = re.compile(_ID + r',(?P<rest>.*)\Z', re.S)


def _split_records(path: Path, start: re.Pattern, header: str) -> list[tuple[int, list[str]]]:
    """Group physical lines into records: (first line number, the record's lines)."""
    try:
        text = path.read_bytes().decode("utf-8-sig")  # no newline translation: captions come back exactly
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:  # a directory, no permission, an I/O error
        raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or lines[0].rstrip("\r").replace(" ", "") != header:
        raise DataError(f"{path}:1: expected header {header!r}, found {lines[0][:80] if lines else ''!r}")
    records: list[tuple[int, list[str]]] = []
    for n, line in enumerate(lines[1:], start=2):
        # A caption may hold a newline: a line that cannot start a record continues the last one.
        if records and not start.match(line):
            records[-1][1].append(line)
        else:
            records.append((n, [line]))
    return records


def _parse(text: str, start: re.Pattern) -> tuple[str, str, str] | None:
    """(ImageID, labels field, caption) of one record's text, or None if it is not a whole record."""
    m = start.match(text)
    if not m:
        return None
    rest = m.group("rest")
    rest = rest[:-1] if rest.endswith("\r") else rest
    if rest.startswith('"'):
        # Inner quotes are not escaped in the published files: everything between the first and
        # the last quote is the caption.
        if len(rest) < 2 or not rest.endswith('"'):
            return None
        caption = rest[1:-1]
    elif "\n" in rest:  # an unquoted caption cannot span lines
        return None
    else:
        caption = rest
    return m.group("id").strip(), m.groupdict().get("labels", ""), caption


def _parse_labels(field_text: str, label_space: LabelSpace, where: str) -> tuple[int, ...]:
    labels = []
    for token in field_text.split():
        if not re.fullmatch(r"\d+", token) or int(token) not in label_space.ids:
            raise DataError(f"{where}: unknown label {token!r} (label set: {' '.join(map(str, label_space.ids))})")
        labels.append(int(token))
    if not labels:
        raise DataError(f"{where}: a training row has no label")
    return tuple(dict.fromkeys(labels))  # keep order, drop duplicates


def read_records(path: Path, label_space: LabelSpace | None, lenient: bool = False) -> tuple[list[Record], list[Skip]]:
    """Read train.csv (label_space given) or test.csv (label_space None).

    A record that cannot be parsed, an unknown label or a repeated ImageID is a DataError naming
    the file and line; with lenient=True it is skipped and returned in the skip list instead."""
    path = Path(path)
    is_train = label_space is not None
    start, header = (_TRAIN_START, "ImageID,Labels,Caption") if is_train else (_TEST_START, "ImageID,Caption")
    records: list[Record] = []
    skipped: list[Skip] = []
    seen: dict[str, int] = {}
    for line_no, text in _recover_stray_lines(_split_records(path, start, header), start):
        where = f"{path}:{line_no}"
        try:
            parsed = _parse(text, start)
            if parsed is None:
                raise DataError(f"{where}: cannot parse record {text[:80]!r} (expected ImageID,{'Labels,' if is_train else ''}\"Caption\")")
            image_id, labels_field, caption = parsed
            if not _is_file_name(image_id):
                raise DataError(f"{where}: ImageID {image_id!r} is not a file name inside data/ "
                                "(no folder separators, no '..', not absolute)")
            if image_id in seen:
                raise DataError(f"{where}: duplicate ImageID {image_id!r} (first on line {seen[image_id]})")
            labels = _parse_labels(labels_field, label_space, f"{where} ({image_id})") if is_train else None
        except DataError as e:
            if not lenient:
                raise
            skipped.append(Skip(str(path), line_no, str(e).removeprefix(where + ": ")))
            continue
        seen[image_id] = line_no
        records.append(Record(image_id, caption, labels, line_no))
    return records, skipped


def _is_file_name(image_id: str) -> bool:
    """A photo is read from data/<ImageID>: an ID with a separator or '..' would read elsewhere."""
    return Path(image_id).name == image_id and "\\" not in image_id and image_id not in (".", "..")


def _recover_stray_lines(records: list[tuple[int, list[str]]], start: re.Pattern):
    """Yield (line, text) per record. A record that does not parse as a whole but whose first lines
    do (a complete record followed by stray lines) is yielded as that record plus the stray lines
    as a record of their own, so one bad line never takes a good neighbour down with it."""
    for line_no, lines in records:
        if _parse("\n".join(lines), start) is None:
            for k in range(len(lines) - 1, 0, -1):
                if _parse("\n".join(lines[:k]), start) is not None:
                    yield line_no, "\n".join(lines[:k])
                    yield line_no + k, "\n".join(lines[k:])
                    break
            else:
                yield line_no, "\n".join(lines)
        else:
            yield line_no, "\n".join(lines)


def read_label_space(root: Path) -> LabelSpace:
    """The dataset's own label set if it ships labels.json, else COMP5329's 18 COCO labels."""
    path = Path(root) / LABELS_FILE
    if not path.exists():
        return LabelSpace.coco()
    try:
        mapping = json.loads(path.read_text())
        if not isinstance(mapping, dict) or not mapping:
            raise ValueError(f"found {type(mapping).__name__ if mapping else 'nothing'}")
        if not all(isinstance(v, str) for v in mapping.values()):
            raise ValueError("every name must be a string")
        return LabelSpace.from_mapping(mapping)
    except (OSError, ValueError, TypeError) as e:
        raise DataError(f"{path}: expected a non-empty JSON object {{\"<integer label id>\": \"<name>\"}} ({e})") from None


def load_dataset(root: str | Path, lenient: bool = False) -> Dataset:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset directory not found (expected train.csv, test.csv, data/)")
    label_space = read_label_space(root)
    train, skip_train = read_records(root / "train.csv", label_space, lenient)
    test, skip_test = read_records(root / "test.csv", None, lenient)
    train_lines = {r.image_id: r.line for r in train}
    clash = [Skip(str(root / "test.csv"), r.line, f"ImageID {r.image_id!r} is also in train.csv line {train_lines[r.image_id]}")
             for r in test if r.image_id in train_lines]
    if clash and not lenient:
        raise DataError(f"{clash[0].file}:{clash[0].line}: {clash[0].reason}" + (f" (and {len(clash) - 1} more)" if len(clash) > 1 else ""))
    test = [r for r in test if r.image_id not in train_lines]
    return Dataset(root, label_space, train, test, skip_train + skip_test + clash)


def load_image(path: str | Path) -> Image.Image:
    """An RGB PIL image from any mode PIL reads (grayscale, palette, CMYK, 16-bit, alpha)."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # PIL warns above 89 M pixels and refuses above twice that: both are decompression bombs
            # here (a photo is resized to a few hundred pixels), and decoding one can take gigabytes.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                    # 16/32-bit grayscale: scale to 8 bits instead of clipping to white.
                    arr = np.asarray(im, dtype=np.float32)
                    hi = float(arr.max()) or 1.0
                    im = Image.fromarray((arr * (255.0 / hi)).astype(np.uint8), mode="L")
                if im.mode in ("P", "PA") and "transparency" in im.info:
                    im = im.convert("RGBA")
                return im.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{path}: refused as a decompression bomb ({e})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot read image ({e})") from None
