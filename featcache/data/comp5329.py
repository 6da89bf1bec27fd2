"""The COMP5329 layout: train.csv (ImageID,Labels,Caption), test.csv (ImageID,Caption), data/<ImageID>.

The published CSV files are not valid CSV: quotes inside captions are not escaped and some
captions hold a raw newline. Every record is still unambiguous line by line: a record starts
with `<ImageID>,[<labels>,]"` and its caption runs to the closing quote at the end of a line.
So the reader works on lines, not on a CSV tokenizer, and never drops a row silently.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .images import Folder
from .records import DataError, LabelSpace, Record, Skip

LABELS_FILE = "labels.json"  # optional, in a dataset root: {"<label id>": "<name>", ...}
FILES = ("train.csv", "test.csv")


def is_comp5329(root: Path) -> bool:
    """A folder with train.csv is this layout (its test.csv then must be there too)."""
    return Path(root).is_dir() and (Path(root) / "train.csv").exists()


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


def load_comp5329(root: str | Path, lenient: bool = False) -> dict:
    """The fields of a Dataset (featcache.data.dataset) read from a COMP5329 folder."""
    root = Path(root)
    label_space = read_label_space(root)
    train, skip_train = read_records(root / "train.csv", label_space, lenient)
    test, skip_test = read_records(root / "test.csv", None, lenient)
    train_lines = {r.image_id: r.line for r in train}
    clash = [Skip(str(root / "test.csv"), r.line, f"ImageID {r.image_id!r} is also in train.csv line {train_lines[r.image_id]}")
             for r in test if r.image_id in train_lines]
    if clash and not lenient:
        raise DataError(f"{clash[0].file}:{clash[0].line}: {clash[0].reason}" + (f" (and {len(clash) - 1} more)" if len(clash) > 1 else ""))
    test = [r for r in test if r.image_id not in train_lines]
    return dict(root=root, label_space=label_space, train_rows=train, test_rows=test, skipped=skip_train + skip_test + clash,
                images=Folder(root / "data", confine=False),
                content=(root / "train.csv", root / "test.csv"),
                files=(root / "train.csv", root / "test.csv", root / LABELS_FILE),
                describe={"layout": "COMP5329", "id": "ImageID", "labels": "Labels (ids, space separated)",
                          "text": ["Caption"], "image": "data/<ImageID>"})
