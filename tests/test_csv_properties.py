"""Property tests of the CSV reader: any caption written the way the published files are written
(quoted, inner quotes unescaped, raw newlines) reads back exactly, and no row is ever lost."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featcache.data import LabelSpace, read_records

COCO = LabelSpace.coco()
# The one thing this unescaped format cannot tell apart: a caption line that itself looks like
# the start of a record (`7.jpg,1,"...`). Such captions are excluded; everything else must work.
LOOKS_LIKE_RECORD = re.compile(r'[^,"\s]+\.[A-Za-z0-9]+,')

caption_text = st.text(
    alphabet=st.one_of(st.sampled_from(list(' ",\n\r\'.;é日\u2028\t')), st.characters(codec="utf-8", exclude_categories=("Cs",))),
    max_size=60,
).filter(lambda c: not any(LOOKS_LIKE_RECORD.match(line) for line in c.split("\n")[1:]))
rows = st.lists(st.tuples(caption_text, st.lists(st.sampled_from(COCO.ids), min_size=1, max_size=4, unique=True)),
                min_size=1, max_size=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=rows)
def test_train_captions_round_trip_exactly(tmp_path, rows):
    path = tmp_path / "train.csv"
    path.write_bytes(("ImageID,Labels,Caption\n" + "".join(
        f'{i}.jpg,{" ".join(map(str, labels))},"{caption}"\n' for i, (caption, labels) in enumerate(rows))).encode())
    records, skipped = read_records(path, COCO)
    assert skipped == []
    assert [(r.image_id, r.caption, r.labels) for r in records] == [
        (f"{i}.jpg", caption, tuple(labels)) for i, (caption, labels) in enumerate(rows)]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(captions=st.lists(caption_text, min_size=1, max_size=12), damage=st.integers(0, 11))
def test_a_broken_row_is_reported_never_dropped(tmp_path, captions, damage):
    """Break one row's closing quote: with lenient reading every row is either kept or reported."""
    lines = [f'{36000 + i}.jpg,"{c}"' for i, c in enumerate(captions)]
    damage %= len(lines)
    lines[damage] = lines[damage][:-1] + "\x00"  # the closing quote is gone
    path = tmp_path / "test.csv"
    path.write_bytes(("ImageID,Caption\n" + "\n".join(lines) + "\n").encode())
    records, skipped = read_records(path, None, lenient=True)
    got = {r.image_id: r for r in records}
    for i, c in enumerate(captions):
        if i != damage:
            assert got[f"{36000 + i}.jpg"].caption == c  # every undamaged row kept, exactly
    broken = got.get(f"{36000 + damage}.jpg")
    # The damaged row is reported; if a complete record survives in its first lines it is kept
    # and only the lines after it are reported.
    assert len(skipped) == 1
    assert skipped[0].line == (broken.line + broken.caption.count("\n") + 1 if broken else lines_before(captions, damage))


def lines_before(captions, k):
    return 2 + sum(c.count("\n") + 1 for c in captions[:k])
