"""The COMP5329 data layer: the broken CSV, labels, the split, image loading, generated data."""

from __future__ import annotations

import os

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from featcache.data import DataError, LabelSpace, load_dataset, load_image, read_records
from featcache.outputs import write_predictions
from featcache.data.split import train_val_split
from featcache.data.synth import make_dataset

# The real slice: beside the checkout on developer machines and in CI, or wherever FEATCACHE_DATA says.
SHARED = Path(os.environ.get("FEATCACHE_DATA") or Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "comp5329")
COCO = LabelSpace.coco()
sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))  # fault_scenarios, after the project


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_reader_keeps_unescaped_quotes_and_inner_newlines(tmp_path):
    csv = write(tmp_path / "train.csv", (
        "ImageID,Labels,Caption\n"
        '0.jpg,1,"Woman in swim suit holding parasol on sunny day."\n'
        '9084.jpg,3 1 11,"A street sign labeled "Seltzer Way," with a red fire hydrant."\n'
        '1014.jpg,18,"Atop an oriental rug rests a dog and a taller one\n'
        'full of very tidily arranged piles of jeans."\n'
        '2259.jpg,1 3,"Men loading up a van.\n."\n'
        '7.jpg,19,"He said "hi""\n'
        '8.jpg,1,""\n'
    ))
    records, skipped = read_records(csv, COCO)
    assert skipped == []
    got = {r.image_id: r for r in records}
    assert [r.image_id for r in records] == ["0.jpg", "9084.jpg", "1014.jpg", "2259.jpg", "7.jpg", "8.jpg"]
    assert got["9084.jpg"].caption == 'A street sign labeled "Seltzer Way," with a red fire hydrant.'
    assert got["9084.jpg"].labels == (3, 1, 11)
    assert got["1014.jpg"].caption == ("Atop an oriental rug rests a dog and a taller one\n"
                                       "full of very tidily arranged piles of jeans.")
    assert got["2259.jpg"].caption == "Men loading up a van.\n."
    assert got["7.jpg"].caption == 'He said "hi"'
    assert got["8.jpg"].caption == ""
    assert got["2259.jpg"].line == 6 and got["7.jpg"].line == 8


def test_test_csv_and_crlf_line_endings(tmp_path):
    csv = tmp_path / "test.csv"
    csv.write_bytes(b'ImageID,Caption\r\n36889.jpg,"Stop sign with added "war" annotation, at an intersection."\r\n'
                    b'36890.jpg,"two\r\nlines"\r\n')
    records, _ = read_records(csv, None)
    assert [r.caption for r in records] == ['Stop sign with added "war" annotation, at an intersection.', "two\r\nlines"]
    assert all(r.labels is None for r in records)


@pytest.mark.parametrize("bad", ["12", "20", "x", "0", "-1"])
def test_unknown_label_is_an_error_naming_the_row(tmp_path, bad):
    csv = write(tmp_path / "train.csv", f'ImageID,Labels,Caption\n0.jpg,1,"ok"\n5.jpg,1 {bad},"a caption"\n')
    with pytest.raises(DataError, match=rf"train.csv:3 \(5.jpg\): unknown label '{bad}'"):
        read_records(csv, COCO)


def test_unparseable_record_errors_or_is_counted_when_lenient(tmp_path):
    csv = write(tmp_path / "train.csv", (
        'ImageID,Labels,Caption\n0.jpg,1,"ok"\n'
        'garbage without commas\n'  # a stray line after a complete record
        '2.jpg,1,"caption never closed\n'
        '3.jpg,7,"fine"\n'
        '4.jpg,,"no labels"\n'
        '5.jpg,1,unquoted caption\n'
    ))
    with pytest.raises(DataError, match=r"train.csv:3: cannot parse record 'garbage without commas'"):
        read_records(csv, COCO)
    records, skipped = read_records(csv, COCO, lenient=True)
    assert [r.image_id for r in records] == ["0.jpg", "3.jpg", "5.jpg"]
    assert records[0].caption == "ok" and records[2].caption == "unquoted caption"
    assert [s.line for s in skipped] == [3, 4, 6]
    assert "cannot parse record" in skipped[0].reason and "cannot parse record" in skipped[1].reason
    assert "no label" in skipped[2].reason
    assert len(records) + len(skipped) == 6  # every record kept or reported


def test_duplicate_image_id_and_bad_header(tmp_path):
    dup = write(tmp_path / "train.csv", 'ImageID,Labels,Caption\n0.jpg,1,"a"\n0.jpg,2,"b"\n')
    with pytest.raises(DataError, match=r"train.csv:3: duplicate ImageID '0.jpg' \(first on line 2\)"):
        read_records(dup, COCO)
    hdr = write(tmp_path / "other.csv", 'id,caption\n0.jpg,"a"\n')
    with pytest.raises(DataError, match="other.csv:1: expected header"):
        read_records(hdr, None)


def test_label_space_coco_and_dataset_defined(tmp_path):
    assert COCO.num_labels == 18 and 12 not in COCO.ids and COCO.names[COCO.index(14)] == "parking meter"
    y = COCO.encode([(1, 19), (14,)])
    assert y.shape == (2, 18) and y.sum() == 3 and y[0, COCO.index(19)] == 1
    assert COCO.decode(y) == [(1, 19), (14,)]
    root = tmp_path / "ds"
    (root / "data").mkdir(parents=True)
    write(root / "labels.json", json.dumps({"42": "zebra", "7": "train", "100": "kite"}))
    write(root / "train.csv", 'ImageID,Labels,Caption\na.jpg,42 100,"zebra and kite"\nb.jpg,7,"a train"\n')
    write(root / "test.csv", 'ImageID,Caption\nc.jpg,"?"\n')
    ds = load_dataset(root)
    assert ds.label_space.ids == (7, 42, 100)
    np.testing.assert_array_equal(ds.targets(), [[0, 1, 1], [1, 0, 0]])
    write(root / "train.csv", 'ImageID,Labels,Caption\na.jpg,1,"person"\n')
    with pytest.raises(DataError, match="unknown label '1'"):
        load_dataset(root)


def test_split_is_seeded_stratified_and_covers_every_row():
    rng = np.random.default_rng(0)
    n = 5000
    y = (rng.random((n, 18)) < np.linspace(0.008, 0.76, 18)).astype(np.float32)
    tr, va = train_val_split(y, 0.2, seed=3)
    assert len(tr) + len(va) == n and not set(tr) & set(va)
    assert abs(len(va) - 0.2 * n) <= 18
    tr2, va2 = train_val_split(y, 0.2, seed=3)
    np.testing.assert_array_equal(va, va2)
    assert not np.array_equal(va, train_val_split(y, 0.2, seed=4)[1])
    share = y[va].sum(0) / np.maximum(y.sum(0), 1)
    assert y[va, 0].sum() >= 1 and y[tr, 0].sum() >= 1  # the rarest label lands in both parts
    assert np.all(np.abs(share - 0.2) < 0.05), share


def make_image(path: Path, mode: str, size=(40, 30)) -> Path:
    if mode == "I;16":
        Image.fromarray(np.full(size[::-1], 40000, dtype=np.uint16)).save(path.with_suffix(".png"))
        return path.with_suffix(".png")
    im = Image.new("RGB", size, (200, 30, 30))
    if mode == "CMYK":
        im.convert("CMYK").save(path, "JPEG")
    elif mode == "P":
        im.convert("P").save(path.with_suffix(".png"))
        return path.with_suffix(".png")
    elif mode == "RGBA":
        im.convert("RGBA").save(path.with_suffix(".png"))
        return path.with_suffix(".png")
    else:
        im.convert(mode).save(path, "JPEG")
    return path


@pytest.mark.parametrize("mode,size", [("RGB", (29, 25)), ("L", (40, 30)), ("CMYK", (40, 30)), ("P", (40, 30)),
                                       ("RGBA", (40, 30)), ("I;16", (40, 30)), ("RGB", (1, 1))])
def test_load_image_converts_every_mode_to_rgb(tmp_path, mode, size):
    im = load_image(make_image(tmp_path / "x.jpg", mode, size))
    assert im.mode == "RGB" and im.size == size
    if mode == "I;16":
        assert np.asarray(im).max() == 255  # scaled to 8 bits, not clipped to white everywhere
    elif mode in ("RGB", "CMYK", "P", "RGBA"):
        assert np.asarray(im)[0, 0, 0] > 150  # still red after conversion


@pytest.mark.parametrize("content", [None, b"", b"not an image at all", "truncated"])
def test_missing_or_corrupt_image_names_the_file(tmp_path, content):
    path = tmp_path / "broken.jpg"
    if content == "truncated":
        Image.new("RGB", (64, 64), (1, 2, 3)).save(path, "JPEG")
        path.write_bytes(path.read_bytes()[:200])
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match="broken.jpg"):
        load_image(path)


def test_generated_data_is_deterministic_and_has_the_real_faults(tmp_path):
    a = make_dataset(tmp_path / "a", n_train=60, n_test=10, seed=1)
    b = make_dataset(tmp_path / "b", n_train=60, n_test=10, seed=1)
    c = make_dataset(tmp_path / "c", n_train=60, n_test=10, seed=2)
    for name in ("train.csv", "test.csv", "data/5.jpg"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "train.csv").read_bytes() != (c / "train.csv").read_bytes()
    ds = load_dataset(a)
    assert len(ds.train) == 60 and len(ds.test) == 10 and ds.skipped == []
    captions = [r.caption for r in ds.train]
    assert any('"' in cap for cap in captions) and any("\n" in cap for cap in captions)
    assert load_image(ds.root / "data" / "1.jpg").size == (29, 25)


def test_generated_data_has_learnable_signal_in_each_modality(synth_root):
    """Image colour statistics and caption words each predict labels better than the majority
    baseline, and each misses something: the point of fusing them."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import StandardScaler

    ds = load_dataset(synth_root)
    y = ds.targets()
    tr, va = train_val_split(y, 0.25, seed=0)
    colour = np.stack([np.histogramdd(np.asarray(load_image(ds.image_path(r))).reshape(-1, 3),
                                      bins=6, range=[(0, 256)] * 3)[0].ravel() for r in ds.train])
    colour = np.log1p(colour)
    words = CountVectorizer(binary=True).fit_transform([r.caption for r in ds.train]).toarray()
    baseline = f1_score(y[va], np.tile(y[tr].mean(0) > 0.5, (len(va), 1)), average="samples", zero_division=0)
    scores = {}
    for name, x in (("image", colour), ("text", words), ("both", np.hstack([colour, words]))):
        x = StandardScaler().fit(x[tr]).transform(x)
        clf = OneVsRestClassifier(LogisticRegression(C=0.1, max_iter=2000)).fit(x[tr], y[tr])
        scores[name] = f1_score(y[va], clf.predict(x[va]), average="samples", zero_division=0)
    assert scores["image"] > baseline + 0.05 and scores["text"] > baseline + 0.05, (baseline, scores)
    assert scores["both"] > max(scores["image"], scores["text"]) + 0.02, scores


def test_write_submission_format(tmp_path):
    ds = load_dataset(make_dataset(tmp_path / "d", n_train=20, n_test=2, seed=0))
    space = ds.label_space
    preds = np.zeros((2, space.num_labels))
    preds[0, [space.index(1), space.index(19)]] = preds[1, space.index(3)] = 1
    write_predictions(tmp_path / "s.csv", ds.predictions(preds))
    ids = [r.image_id for r in ds.test]
    assert (tmp_path / "s.csv").read_text() == f"ImageID,Labels\n{ids[0]},1 19\n{ids[1]},3\n"
    with pytest.raises(DataError, match="1 predictions for 2 rows"):
        ds.predictions(preds[:1])


def test_data_check_json_and_plot(tmp_path):
    from cli import app

    root = make_dataset(tmp_path / "d", n_train=50, n_test=7, seed=0)
    (root / "data" / "6.jpg").unlink()
    result = CliRunner().invoke(app, ["data", "check", "--data", str(root), "--json", "--plot", str(tmp_path / "l.png")])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["train_rows"] == 50 and summary["test_rows"] == 7 and summary["skipped_rows"] == 0
    assert sum(summary["label_counts"].values()) == sum(len(r.labels) for r in load_dataset(root).train)
    assert summary["images_missing"] == ["6.jpg"]
    assert (tmp_path / "l.png").stat().st_size > 1000


def test_data_check_reports_bad_rows(tmp_path):
    from cli import app

    root = make_dataset(tmp_path / "d", n_train=20, n_test=3, seed=0)
    lines = (root / "train.csv").read_text().split("\n")
    lines[7] = lines[7].split(",")[0] + ',12,"unknown label"'  # line 8: lines 5-6 hold one record
    (root / "train.csv").write_text("\n".join(lines))
    strict = CliRunner().invoke(app, ["data", "check", "--data", str(root), "--json"])
    assert strict.exit_code == 2 and "train.csv:8" in strict.output and "unknown label '12'" in strict.output
    lenient = CliRunner().invoke(app, ["data", "check", "--data", str(root), "--json", "--lenient"])
    summary = json.loads(lenient.stdout.strip().splitlines()[-1])
    assert summary["train_rows"] == 19 and summary["skipped_rows"] == 1 and summary["skipped"][0]["line"] == 8


@pytest.mark.skipif(not SHARED.exists(), reason="the shared COMP5329 slice is not on this machine")
def test_real_slice_reads_every_row():
    ds = load_dataset(SHARED)
    assert len(ds.train) == 10000 and len(ds.test) == 1000 and ds.skipped == []
    got = {r.image_id: r.caption for r in ds.train + ds.test}
    assert '"Seltzer Way,"' in got["9084.jpg"] and '"war"' in got["36889.jpg"]
    assert "\n" in got["1014.jpg"] and "\n" in got["2259.jpg"]


def test_dataset_directory_errors(tmp_path):
    with pytest.raises(DataError, match="nope: not found"):
        load_dataset(tmp_path / "nope")
    root = make_dataset(tmp_path / "d", n_train=10, n_test=2, seed=0)
    shutil.copy(root / "train.csv", root / "test.csv")
    with pytest.raises(DataError, match="test.csv:1: expected header"):
        load_dataset(root)


def test_fingerprint_follows_contents_not_file_times(tmp_path):
    root = make_dataset(tmp_path / "a", n_train=24, n_test=6, seed=3)
    first = load_dataset(root).fingerprint()
    # A copy without preserved times (rsync without -t, a re-mounted share) is the same data.
    copy = Path(shutil.copytree(root, tmp_path / "b", copy_function=shutil.copyfile))
    assert load_dataset(copy).fingerprint() == first
    image = copy / "data" / "3.jpg"
    Image.new("RGB", (32, 32), (1, 2, 3)).save(image)  # same name, other photo
    replaced = load_dataset(copy).fingerprint()
    assert replaced != first
    image.unlink()  # a missing image is part of what the features depend on too
    assert load_dataset(copy).fingerprint() not in (first, replaced)


@pytest.mark.parametrize("image_id", ["../../../secret/x.jpg", "/etc/x.jpg", "sub/x.jpg", "../x.jpg", "a\\b.jpg"])
def test_an_image_id_that_is_not_a_file_name_inside_data_is_an_error_or_a_counted_skip(tmp_path, image_id):
    csv = write(tmp_path / "train.csv", f'ImageID,Labels,Caption\n1.jpg,1,"fine"\n{image_id},1,"a path"\n')
    with pytest.raises(DataError, match=rf"train.csv:3: ImageID .* is not a file name inside data/"):
        read_records(csv, COCO)
    records, skipped = read_records(csv, COCO, lenient=True)
    assert [r.image_id for r in records] == ["1.jpg"] and [s.line for s in skipped] == [3]


def test_a_decompression_bomb_is_refused_before_it_is_decoded(tmp_path):
    """30000 x 30000 pixels in a few hundred KB of PNG: refused from its header, named."""
    from fault_scenarios import decompression_bomb

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(decompression_bomb())
    with pytest.raises(DataError, match=r"bomb.png: refused as a decompression bomb"):
        load_image(bomb)


@pytest.mark.parametrize("content", ["[1, 2, 3]", "{}", '{"1": 5}', '{"x": "cat"}', "not json"])
def test_a_bad_labels_json_is_rejected_naming_the_file(tmp_path, content):
    root = make_dataset(tmp_path / "d", 8, 2, seed=0, image_size=16)
    (root / "labels.json").write_text(content)
    with pytest.raises(DataError, match=r"labels.json: expected a non-empty JSON object"):
        load_dataset(root)


def test_a_train_csv_that_is_a_directory_is_an_error_naming_it(tmp_path):
    root = make_dataset(tmp_path / "d", 8, 2, seed=0, image_size=16)
    (root / "train.csv").unlink()
    (root / "train.csv").mkdir()
    with pytest.raises(DataError, match=r"train.csv: not a regular file"):
        load_dataset(root)
