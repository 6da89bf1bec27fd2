"""The COMP5329 layout: train.csv (ImageID,Labels,Caption), test.csv (ImageID,Caption), data/<ImageID>.

Every physical line is a record's first line, a continuation inside an open quoted field, or an
error: no line is ever glued to a neighbour because of what it looks like. A record is read as
standard CSV (quoted fields, doubled quotes) wherever that parses. The published files are not
valid CSV (quotes inside captions are not escaped; some captions hold a raw newline): where
standard quoting fails inside the caption, the caption runs from its opening quote to the first
quote that ends a line (the Kaggle style). Either way a continuation line that starts a record of
its own (a valid ImageID and labels, then an opening quote) is ambiguous: the open record is
reported, never merged with it, and that line is read as a record. What no reader can tell apart:
a Kaggle-style caption (nothing escaped) holding a line that is itself a whole record. Every field has a strict grammar: an ImageID is a file name (no path separator), a
label id is ASCII digits.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from featcache.data.images import Folder, regular_file
from featcache.data.records import DataError, LabelSpace, Record, Skip

LABELS_FILE = "labels.json"  # optional, in a dataset root: {"<label id>": "<name>", ...}
FILES = ("train.csv", "test.csv")
_LABEL = re.compile(r"[0-9]+")  # ASCII digits only: str.isdigit() and \d accept '١' and '３'


def is_comp5329(root: Path) -> bool:
    """A folder with train.csv is this layout (its test.csv then must be there too)."""
    return Path(root).is_dir() and (Path(root) / "train.csv").exists()


def _csv(text: str, limit: int | None = None) -> tuple[list[str], str, int]:
    """Standard CSV fields of one record's text: (fields, status, end). status "ok" (all read),
    "bad" (a quote where CSV allows none: an unescaped inner quote) or "prefix" (`limit` fields
    read; the rest starts at `end`)."""
    fields, i, n = [], 0, len(text)
    while True:
        if limit is not None and len(fields) == limit:
            return fields, "prefix", i
        if text.startswith('"', i):
            j, parts = i + 1, []
            while True:
                k = text.find('"', j)
                if k < 0:
                    return fields, "bad", i  # still open: the caller decides where the record ends
                parts.append(text[j:k])
                if text.startswith('"', k + 1):  # a doubled quote is one quote
                    parts.append('"')
                    j = k + 2
                    continue
                i = k + 1
                break
            fields.append("".join(parts))
            if i == n:
                return fields, "ok", i
            if text[i] != ",":
                return fields, "bad", i
            i += 1
        else:
            k = text.find(",", i)
            field = text[i:] if k < 0 else text[i:k]
            if '"' in field:
                return fields, "bad", i
            fields.append(field)
            if k < 0:
                return fields, "ok", n
            i = k + 1


class _Reader:
    """Records of one CSV file's lines: `n` fields each, the last one the caption. `crlf`: lines
    end in CR LF (as the header's does); otherwise a CR before a line's end is data (Python's csv
    module writes a field ending in CR unquoted)."""

    def __init__(self, lines: list[str], n: int, crlf: bool):
        self.lines, self.n, self.crlf = lines, n, crlf
        self.quotes = [line.count('"') for line in lines]

    def _chomp(self, line: str) -> str:
        return line[:-1] if self.crlf and line.endswith("\r") else line

    def span(self, i: int) -> tuple[int, list[str] | None, str, bool]:
        """(last line, fields or None, why not, standard CSV) of the record starting on line i."""
        lines, n = self.lines, self.n
        # Standard CSV: a quoted field is open while the record has an odd number of quotes.
        j, count = i, self.quotes[i]
        while count % 2 and j + 1 < len(lines):
            j += 1
            count += self.quotes[j]
        if count % 2 == 0:
            fields, status, _ = _csv(self._chomp("\n".join(lines[i:j + 1])))
            if status == "ok":
                return j, fields, "" if len(fields) == n else f"expected {n} fields, found {len(fields)}", True
        # Not standard CSV: the Kaggle style, a quoted caption with unescaped quotes inside,
        # closed by the first quote that ends a line.
        prefix, status, at = _csv(lines[i], limit=n - 1)
        rest = lines[i][at:]
        if status != "prefix" or not rest.startswith('"'):
            return i, None, "not CSV (a quote inside an unquoted field, or text after a closing quote)", False
        first = self._chomp(rest)
        if len(first) >= 2 and first.endswith('"'):
            return i, prefix + [first[1:-1]], "", False
        for j in range(i + 1, len(lines)):
            if self._chomp(lines[j]).endswith('"'):
                return j, prefix + [self._chomp("\n".join([rest, *lines[i + 1:j + 1]]))[1:-1]], "", False
        return len(lines) - 1, None, "the caption's opening quote is never closed", False

    def whole(self, i: int, valid) -> bool:
        """Line i is a complete, valid record on its own."""
        j, fields, why, _ = self.span(i)
        return j == i and fields is not None and not why and valid(fields)

    def starts(self, i: int, valid) -> bool:
        """Line i starts a record: valid fields before an opening quote (or a whole record)."""
        prefix, status, at = _csv(self.lines[i], limit=self.n - 1)
        return (status == "prefix" and self.lines[i].startswith('"', at) and valid(prefix + [""])) or self.whole(i, valid)

    def records(self, valid):
        """(first line index, last line index, fields or None, why) for every record and error."""
        i = 0
        while i < len(self.lines):
            j, fields, why, _ = self.span(i)
            # A continuation line that starts a record of its own is ambiguous: never merged.
            inner = next((k for k in range(i + 1, j + 1) if self.starts(k, valid)), None)
            if inner is not None:
                yield i, inner - 1, None, (f"its quoted caption is still open at line {inner + 2}, which is a record "
                                           "of its own (a quote missing or not escaped?)")
                i = inner
                continue
            if fields is None and j > i:  # never closed: report this line, read on from the next
                j = i
            yield i, j, fields, why
            i = j + 1


def _read_lines(path: Path) -> list[str]:
    try:
        text = regular_file(path, "CSV").read_bytes().decode("utf-8-sig")  # no newline translation
    except OSError as e:  # a directory, no permission, an I/O error
        raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def image_id_problem(image_id: str) -> str | None:
    """Why an ImageID is not a file name inside data/ (None when it is): a photo is read from
    data/<ImageID>, so a separator, '..' or an absolute path would read elsewhere."""
    if image_id in ("", ".", "..") or "/" in image_id or "\\" in image_id or "\0" in image_id:
        return (f"ImageID {image_id!r} is not a file name inside data/ "
                "(no folder separators, no '..', not absolute, not empty)")
    return None


def parse_labels(field_text: str, label_space: LabelSpace) -> tuple[int, ...]:
    """Label ids separated by spaces, each ASCII digits in the label set; one id spelled two ways
    ('1' and '01') is a conflict. DataError (without the file) otherwise."""
    spelled: dict[int, str] = {}
    for token in field_text.split(" "):
        if not token:
            continue
        if not _LABEL.fullmatch(token) or int(token) not in label_space.ids:
            raise DataError(f"unknown label {token!r} (label ids are ASCII digits; label set: "
                            f"{' '.join(map(str, label_space.ids))})")
        if spelled.setdefault(int(token), token) != token:
            raise DataError(f"label {int(token)} written two ways ({spelled[int(token)]!r} and {token!r})")
    if not spelled:
        raise DataError("a training row has no label")
    return tuple(spelled)  # in order, repeats dropped


def read_records(path: Path, label_space: LabelSpace | None, lenient: bool = False) -> tuple[list[Record], list[Skip]]:
    """Read train.csv (label_space given) or test.csv (label_space None).

    A line that is not part of a record, a record that cannot be parsed, an unknown label or a
    repeated ImageID is a DataError naming the file and line; with lenient=True it is skipped and
    returned in the skip list instead. Every line is in a record or in a skip."""
    path = Path(path)
    is_train = label_space is not None
    header = ("ImageID", "Labels", "Caption") if is_train else ("ImageID", "Caption")
    lines = _read_lines(path)
    crlf = bool(lines) and lines[0].endswith("\r")
    found = _csv(lines[0].removesuffix("\r"))[0] if lines else []
    if [f.strip() for f in found] != list(header):
        raise DataError(f"{path}:1: expected header {','.join(header)!r}, found {lines[0][:80] if lines else ''!r}")

    def valid(fields: list[str]) -> bool:
        if image_id_problem(fields[0]):
            return False
        try:
            return not is_train or bool(parse_labels(fields[1], label_space))
        except DataError:
            return False

    records: list[Record] = []
    skipped: list[Skip] = []
    seen: dict[str, int] = {}
    for first, last, fields, why in _Reader(lines[1:], len(header), crlf).records(valid):
        line_no = first + 2
        where = f"{path}:{line_no}"
        try:
            if fields is None or why:
                text = "\n".join(lines[first + 1:last + 2])
                raise DataError(f"{where}: cannot parse record {text[:80]!r}: {why} "
                                f"(expected {','.join(header[:-1])},\"Caption\")")
            image_id, caption = fields[0], fields[-1]
            if problem := image_id_problem(image_id):
                raise DataError(f"{where}: {problem}")
            if image_id in seen:
                raise DataError(f"{where}: duplicate ImageID {image_id!r} (first on line {seen[image_id]})")
            try:
                labels = parse_labels(fields[1], label_space) if is_train else None
            except DataError as e:
                raise DataError(f"{where} ({image_id}): {e}") from None
        except DataError as e:
            if not lenient:
                raise
            skipped.append(Skip(str(path), line_no, str(e).removeprefix(where + ": ")))
            continue
        seen[image_id] = line_no
        records.append(Record(image_id, caption, labels, line_no))
    return records, skipped


def read_label_space(root: Path) -> LabelSpace:
    """The dataset's own label set if it ships labels.json, else COMP5329's 18 COCO labels."""
    path = Path(root) / LABELS_FILE
    if not path.exists():
        return LabelSpace.coco()
    try:
        mapping = json.loads(regular_file(path, "labels").read_text())
        if not isinstance(mapping, dict) or not mapping:
            raise ValueError(f"found {type(mapping).__name__ if mapping else 'nothing'}")
        if not all(isinstance(v, str) for v in mapping.values()):
            raise ValueError("every name must be a string")
        return LabelSpace.from_mapping(mapping)
    except DataError:
        raise
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
