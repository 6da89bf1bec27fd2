"""Property tests of the COMP5329 CSV reader (rule 1 of docs/faults.md): every line is a record, a
continuation inside an open quoted field, or an error. Generated records, written by Python's csv
module or by hand in the Kaggle style (quotes inside captions not escaped, raw newlines), read back
kept exactly or reported: never merged with a neighbour, never lost."""

from __future__ import annotations

import csv
import io

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from featcache.data import DataError, LabelSpace, read_records

COCO = LabelSpace.coco()
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

tricky = st.sampled_from(list(' ",\n\r\'.;é日\u2028\t١３') + ['.jpg', ',1,"', '""', '",', '\n5.jpg,1,"x"'])
caption_text = st.lists(st.one_of(tricky, st.characters(codec="utf-8", exclude_categories=("Cs",))), max_size=25).map("".join)
# Any file name: no separator, not . or .., no NUL; no newline (kept simple: file names with one are not photos)
image_id = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="/\\\0\n\r"),
                   min_size=1, max_size=12).filter(lambda s: s not in (".", ".."))
label_sets = st.lists(st.sampled_from(COCO.ids), min_size=1, max_size=4, unique=True)


def rows_of(ids, captions=caption_text):
    return st.lists(st.tuples(ids, captions, label_sets), min_size=1, max_size=10,
                    unique_by=lambda r: r[0])


def write(path, rows, train, style, eol="\n"):
    """The file, and each row's (first, last) line number."""
    out, spans, line = io.StringIO(newline=""), [], 2
    out.write(("ImageID,Labels,Caption" if train else "ImageID,Caption") + eol)
    writer = csv.writer(out, quoting=style, lineterminator=eol) if style is not None else None
    for image, caption, labels in rows:
        fields = [image, " ".join(map(str, labels)), caption] if train else [image, caption]
        before = out.tell()
        if writer:
            writer.writerow(fields)
        else:  # the Kaggle style: ID and labels bare, the caption in quotes, nothing escaped
            out.write(",".join(fields[:-1]) + f',"{caption}"' + eol)
        text = out.getvalue()[before:]
        spans.append((line, line + text.count("\n") - 1))
        line += text.count("\n")
    path.write_bytes(out.getvalue().encode())
    return spans


def check(path, rows, spans, train, exact=True):
    """Every row kept (ID, labels, line; the caption exactly, or with `exact=False` any caption
    within the row's own lines: a Kaggle-style caption holding `""` reads as CSV) or reported by a
    skip within its lines; a kept record that is no row comes from a caption's own lines (a
    Kaggle-style caption holding a whole record: the one thing that format cannot tell apart)."""
    records, skipped = read_records(path, COCO if train else None, lenient=True)
    got = {(r.image_id, r.line): r for r in records}
    reported = lambda a, b: any(a <= s.line <= b for s in skipped)  # noqa: E731
    for (image, caption, labels), (a, b) in zip(rows, spans):
        r = got.pop((image, a), None)
        same = r and (r.caption == caption if exact else r.caption.count("\n") <= b - a)
        if not (same and r.labels == (tuple(labels) if train else None)):
            assert reported(a, b), f"row {image!r} (lines {a}-{b}) neither kept as written nor reported: {r}"
    for r in got.values():  # read from a caption's line: only where that caption was split or reported
        assert any(a < r.line <= b for a, b in spans), f"invented record {r}"
    return records, skipped


@SETTINGS
@given(rows=rows_of(image_id), train=st.booleans(), style=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]),
       eol=st.sampled_from(["\n", "\r\n"]))
def test_csv_module_files_round_trip(tmp_path, rows, train, style, eol):
    """What Python's csv module writes reads back exactly, whatever the caption holds; the one
    ambiguity (a caption line that is a record of its own) is reported, never merged."""
    path = tmp_path / "f.csv"
    spans = write(path, rows, train, style, eol)
    records, skipped = check(path, rows, spans, train)
    if not any("record of its own" in s.reason for s in skipped):
        assert skipped == [] and len(records) == len(rows)


kaggle_id = st.text(st.characters(codec="ascii", exclude_characters=',"/\\\0\n\r'), min_size=1, max_size=10).filter(
    lambda s: s.strip() not in ("", ".", ".."))


@SETTINGS
@given(rows=rows_of(kaggle_id), train=st.booleans())
def test_kaggle_style_files_keep_or_report_every_row(tmp_path, rows, train):
    """Written by hand as the published files are (nothing escaped): any caption, any ID."""
    path = tmp_path / "f.csv"
    check(path, rows, write(path, rows, train, None), train, exact=False)


def plain_caption(c: str) -> bool:
    """A caption as the published files have them: inner quotes in pairs or alone but never at a
    line's end, never doubled or before a comma, no line after the first holding a comma."""
    lines = c.split("\n")
    return ('""' not in c and '",' not in c and not c.startswith('"') and not any(l.endswith(('"', "\r")) for l in lines)
            and not any("," in l for l in lines[1:]))


@SETTINGS
@given(rows=rows_of(st.integers(0, 50000).map(lambda i: f"{i}.jpg")), train=st.booleans())
def test_kaggle_style_captions_read_back_exactly(tmp_path, rows, train):
    assume(all(plain_caption(c) for _, c, _ in rows))
    path = tmp_path / "f.csv"
    write(path, rows, train, None)
    records, skipped = read_records(path, COCO if train else None)
    assert skipped == [] and [(r.image_id, r.caption) for r in records] == [(i, c) for i, c, _ in rows]


@SETTINGS
@given(rows=rows_of(st.integers(0, 50000).map(lambda i: f"{i}.jpg"), caption_text.filter(lambda c: '"' not in c)),
       damage=st.integers(0, 9),
       how=st.sampled_from(["drop the closing quote", "drop the opening quote", "stray quote at the end"]))
def test_a_broken_row_is_reported_never_merged(tmp_path, rows, damage, how):
    """One row's quoting broken: every other row is kept or reported, never merged. (The captions
    hold no quotes of their own: an odd number of them in one caption and a missing quote in
    another pair up into valid CSV, which no reader can tell from a caption with a newline.)"""
    path = tmp_path / "test.csv"
    spans = write(path, rows, False, None)
    lines = path.read_bytes().decode().split("\n")
    k = spans[damage % len(rows)][0] - 1
    lines[k] = {"drop the closing quote": lambda s: s, "drop the opening quote": lambda s: s.replace(',"', ",", 1),
                "stray quote at the end": lambda s: s + '"'}[how](lines[k])
    if how == "drop the closing quote":
        last = spans[damage % len(rows)][1] - 1
        lines[last] = lines[last][:-1] + "\x00"
    path.write_bytes("\n".join(lines).encode())
    check(path, rows, spans, False, exact=False)


@pytest.mark.parametrize("line, image_id, labels, caption", [
    ('5.jpg,"3 19","a quoted labels field"', "5.jpg", (3, 19), "a quoted labels field"),
    ('5,1,"no extension"', "5", (1,), "no extension"),
    ('my photo 5.jpg,1,"a space"', "my photo 5.jpg", (1,), "a space"),
    ('"5.jpg","1","all ""quoted"""', "5.jpg", (1,), 'all "quoted"'),
    ("5.jpg,1 1,plain", "5.jpg", (1,), "plain"),
])
def test_records_the_old_reader_glued_into_a_caption_are_kept(tmp_path, line, image_id, labels, caption):
    path = tmp_path / "train.csv"
    path.write_text(f'ImageID,Labels,Caption\n0.jpg,1,"before"\n{line}\n7.jpg,2,"after"\n')
    records, skipped = read_records(path, COCO)
    assert skipped == [] and [r.image_id for r in records] == ["0.jpg", image_id, "7.jpg"]
    assert (records[1].labels, records[1].caption, records[0].caption) == (labels, caption, "before")


@pytest.mark.parametrize("labels, error", [("١", "unknown label '١'"), ("３", "unknown label '３'"), ("1 01", "label 1 written two ways"),
                                           ("", "no label"), ("1,2", "expected 3 fields, found 4")])
def test_labels_have_a_strict_grammar(tmp_path, labels, error):
    path = tmp_path / "train.csv"
    path.write_text(f'ImageID,Labels,Caption\n0.jpg,1,"ok"\n5.jpg,{labels},"x"\n')
    with pytest.raises(DataError, match=rf"train.csv:3.*{error}"):
        read_records(path, COCO)
    records, skipped = read_records(path, COCO, lenient=True)
    assert [r.image_id for r in records] == ["0.jpg"] and [s.line for s in skipped] == [3]


def test_every_test_row_is_read(tmp_path):
    """20 test rows in the styles the old reader glued together: 20 records."""
    ids = ["1.jpg", "2", "my photo 3.jpg", "4.png", "5.JPEG", "six", "7 .jpg", "8.jpg", "9.jpg", "10.jpg"] * 2
    ids = [f"{i}-{n}" for n, i in enumerate(ids)]
    path = tmp_path / "test.csv"
    path.write_text("ImageID,Caption\n" + "".join(f'{i},"cap {i}\nwith a newline"\n' for i in ids))
    records, skipped = read_records(path, None)
    assert skipped == [] and [r.image_id for r in records] == ids
