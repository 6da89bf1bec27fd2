"""Datasets as tables (CSV, TSV, Parquet, JSONL, Hugging Face, DataFrames): the same rows give the
same features and metrics as the COMP5329 folder; every bad table is one line naming the file,
row and column (or a counted skip); image-only and text-only tables run every stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cli import app
from featcache.data import DataError, Dataset, DataSpec, load_dataset
from featcache.data.synth import make_dataset, make_table

FAST = dict(pretrained=False, batch_size=64, threads=1, num_workers=0, progress=False, log=lambda m: None,
            backend="torch", precision="fp32")  # no planning or conversion: the features are compared, not timed


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """The same 200 + 40 generated rows as a COMP5329 folder, a CSV (names, '|', nested paths), a
    Parquet file and a saved Hugging Face dataset; the tables with labels.txt (COMP5329's label order)."""
    base = tmp_path_factory.mktemp("shapes")
    out = {"comp5329": DataSpec(make_dataset(base / "comp", n_train=200, n_test=40, seed=0))}
    for fmt in ("csv", "parquet", "hf"):  # parquet: read, not extracted (it shares csv's fingerprint, tested below)
        table = make_table(base / fmt, fmt, n_train=200, n_test=40, seed=0)
        out[fmt] = DataSpec(table, labels_file=base / fmt / "labels.txt")
    return out


@pytest.fixture(scope="module")
def extracted(shapes, tmp_path_factory):
    """Each shape extracted (random-init lite0 at 32 px, minilm_l6) and one head fitted on each."""
    from featcache.stage1.extract import extract
    from featcache.stage2.experiment import fit_head
    from heads.config import HeadConfig

    out = {}
    for name, spec in ((n, s) for n, s in shapes.items() if n != "parquet"):
        cache, runs = tmp_path_factory.mktemp(f"cache-{name}"), tmp_path_factory.mktemp(f"runs-{name}")
        ds = load_dataset(spec)
        extract(ds, "efficientnet_lite0", cache, image_size=32, **FAST)
        extract(ds, "minilm_l6", cache, **FAST)
        run_dir, result = fit_head(spec, ["efficientnet_lite0", "minilm_l6"], cache=cache, head=HeadConfig(epochs=3), runs=runs)
        out[name] = (ds, cache, runs, run_dir, result)
    return out


def test_every_shape_gives_identical_features_and_metrics(extracted, shapes):
    from stores.features import open_features

    ref_ds, ref_cache, _, _, ref = extracted["comp5329"]
    for name in ("csv", "hf"):
        ds, cache, _, _, result = extracted[name]
        assert [r.caption for r in ds.train + ds.test] == [r.caption for r in ref_ds.train + ref_ds.test], name
        assert ds.label_space.names == ref_ds.label_space.names and (ds.targets() == ref_ds.targets()).all(), name
        for enc in ("efficientnet_lite0", "minilm_l6"):
            mine, theirs = open_features(cache, enc), open_features(ref_cache, enc)
            a = mine.rows([r.image_id for r in ds.train + ds.test])
            b = theirs.rows([r.image_id for r in ref_ds.train + ref_ds.test])
            assert np.array_equal(a, b), (name, enc)
        for key in ("tuned_out_of_fold", "n_train", "n_val"):
            assert result.metrics[key] == ref.metrics[key], (name, key)
        assert result.metrics["tuned"] == ref.metrics["tuned"], name
    # Parquet: the same rows as the CSV, so the same fingerprint and the CSV's caches, warm.
    from featcache.stage2.experiment import fit_head
    from heads.config import HeadConfig

    _, csv_cache, csv_runs, _, csv_result = extracted["csv"]
    assert load_dataset(shapes["parquet"]).fingerprint() == extracted["csv"][0].fingerprint()
    _, result = fit_head(shapes["parquet"], ["efficientnet_lite0", "minilm_l6"], cache=csv_cache, head=HeadConfig(epochs=3),
                         runs=csv_runs)
    assert result.metrics["tuned"] == csv_result.metrics["tuned"] == ref.metrics["tuned"]


def test_csv_and_parquet_share_a_fingerprint_and_reordering_keeps_it(shapes, tmp_path):
    csv, parquet = load_dataset(shapes["csv"]), load_dataset(shapes["parquet"])
    assert csv.fingerprint() == parquet.fingerprint()
    table = Path(shapes["csv"].source)
    shuffled = tmp_path / "items.csv"
    pl.read_csv(table).sample(fraction=1.0, shuffle=True, seed=3).write_csv(shuffled)
    for sub in ("photos",):
        (tmp_path / sub).symlink_to(table.parent / sub)
    again = load_dataset(DataSpec(shuffled, labels_file=table.parent / "labels.txt",
                                  image_root=table.parent))
    assert again.fingerprint() == csv.fingerprint()
    assert [r.image_id for r in again.train] != [r.image_id for r in csv.train]  # the rows did move


def test_predict_writes_names_and_evaluate_scores_a_holdout(extracted, tmp_path):
    ds, cache, runs, run_dir, _ = extracted["csv"]
    spec = ["--data", ds.source, "--labels-file", ds.source.parent / "labels.txt"]
    code, out, err = invoke("predict", "--run", run_dir.name, *spec, "--cache", cache, "--runs", runs,
                            "--out", tmp_path / "p.csv", "--proba")
    assert code == 0, err
    preds = pl.read_csv(tmp_path / "p.csv")
    assert preds.columns[:2] == ["path", "tags"] and preds.height == len(ds.test)
    assert preds["path"].to_list() == [r.image_id for r in ds.test]
    names = set(ds.label_space.names)
    assert all(set(v.split("|")) <= names for v in preds["tags"])
    assert set(preds.columns[2:]) == names
    code, out, err = invoke("predict", "--run", run_dir.name, *spec, "--cache", cache, "--runs", runs,
                            "--out", tmp_path / "p.parquet")
    assert code == 0, err
    assert pl.read_parquet(tmp_path / "p.parquet")["tags"].to_list() == preds["tags"].to_list()
    # A labelled hold-out the run never saw: other rows, the same labels by name.
    holdout = make_table(tmp_path / "holdout", "csv", n_train=60, n_test=0, seed=9)
    code, out, err = invoke("evaluate", "--run", run_dir, "--data", holdout, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["rows"] == 60 and 0 < result["tuned"]["sample_f1"] <= 1
    assert {r["label"] for r in result["per_label"]} == names


@pytest.mark.parametrize("modality", ["image", "text"])
def test_one_modality_tables_run_every_stage(modality, tmp_path):
    table = make_table(tmp_path / "d", "csv", n_train=120, n_test=20, seed=1, modalities=(modality,))
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    code, out, err = invoke("data", "check", "--data", table, "--json")
    assert code == 0, err and json.loads(out)["modalities"] == [modality]
    encoder, other = ("efficientnet_lite0", "minilm_l6") if modality == "image" else ("minilm_l6", "efficientnet_lite0")
    code, out, err = invoke("extract", "--encoder", other, "--random-init", "--data", table, "--cache", cache)
    assert code == 2 and f"has no {'text' if modality == 'image' else 'image'} column" in err, err
    extra = ["--image-size", 32] if modality == "image" else []
    code, out, err = invoke("extract", "--encoder", encoder, "--random-init", *extra, "--data", table, "--cache", cache,
                            "--threads", 1, "--num-workers", 0, "--backend", "torch", "--precision", "fp32")
    assert code == 0, err
    code, out, err = invoke("ablate", "--data", table, "--cache", cache, "--runs", runs, "--seeds", 1, "--json")
    assert code == 0, err
    assert [r["encoders"] for r in json.loads(out)["table"]] == [encoder]
    code, out, err = invoke("fit-head", "--encoders", encoder, "--data", table, "--cache", cache, "--runs", runs,
                            "--epochs", 2, "--json")
    assert code == 0, err
    run = json.loads(out)["run_dir"]
    code, out, err = invoke("predict", "--run", run, "--data", table, "--cache", cache, "--out", tmp_path / "p.csv")
    assert code == 0, err and pl.read_csv(tmp_path / "p.csv").height == 20
    code, out, err = invoke("evaluate", "--run", run, "--data", table, "--json")
    assert code == 0, err and json.loads(out)["rows"] == 120
    from featcache.deploy.predictor import Predictor

    model = Predictor.load(run)
    rows = load_dataset(table).train[:3]
    got = model.predict(images=[table.parent / r.image for r in rows]) if modality == "image" else \
        model.predict(texts=[r.caption for r in rows])
    assert len(got) == 3 and all(len(ls) >= 1 for ls in got)


def test_frames_and_in_memory_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = {"text": ["a red dog", "a cat", "two dogs", "a bird", "dog and cat", "nothing"],
            "tags": ["dog", "cat", "dog", "bird", "dog,cat", None]}
    for frame in (pl.DataFrame(rows), pl.DataFrame(rows).to_pandas()):
        ds = Dataset.from_table(frame, text="text", labels="tags", sep=",")
        assert ds.label_space.ids == ("bird", "cat", "dog") and len(ds.train) == 5 and len(ds.test) == 1
        assert ds.train[4].labels == ("dog", "cat") and ds.modalities == ("text",)
    names = ["bird", "cat", "dog"]
    hf = datasets.Dataset.from_dict({"caption": rows["text"], "labels": [[2], [1], [2], [0], [2, 1], []]},
                                    features=datasets.Features({"caption": datasets.Value("string"),
                                                                "labels": datasets.Sequence(datasets.ClassLabel(names=names))}))
    ds = load_dataset(hf)
    assert ds.label_space.ids == tuple(names) and ds.train[4].labels == ("dog", "cat") and len(ds.test) == 1


def test_integer_labels_and_a_split_column(tmp_path):
    (tmp_path / "t.csv").write_text("id,text,labels,split\na,x y,1 3,train\nb,y,3,val\nc,z,1,train\nd,w,,test\ne,v,2,test\n")
    ds = load_dataset(tmp_path / "t.csv")
    assert ds.label_space.ids == (1, 2, 3) and ds.train[0].labels == (1, 3)
    assert [r.image_id for r in ds.test] == ["d", "e"] and ds.val_keys == frozenset({"b"})
    from featcache.data.split import split_rows

    train, val = split_rows(ds)
    assert [ds.train[i].image_id for i in val] == ["b"] and [ds.train[i].image_id for i in train] == ["a", "c"]


# --- bad tables: one line naming the file, the row and the column, or a counted skip -------------

def _table(tmp_path, text: str, name: str = "t.csv") -> Path:
    (tmp_path / name).write_text(text)
    return tmp_path / name


def _error(data, **spec) -> str:
    with pytest.raises(DataError) as e:
        load_dataset(DataSpec(data, **spec))
    message = str(e.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_named_bad_tables(tmp_path):
    t = _table(tmp_path, "text,tags\na,x\nb,y\n")
    assert "no column 'label'" in _error(t, labels="label") and "columns: text, tags" in _error(t, labels="label")
    (tmp_path / "labels.txt").write_text("x\n")
    assert "t.csv row 2 column 'tags': label 'y' is not in the declared label set" in _error(t, labels_file=tmp_path / "labels.txt")
    t = _table(tmp_path, "image,tags\na.jpg,x\n ,y\n")
    assert "t.csv row 2 column 'image': empty image path" in _error(t)
    t = _table(tmp_path, "id,text,tags\n1,a,x\n,b,y\n")
    assert "t.csv row 2 column 'id': empty id" in _error(t, id="id")
    t = _table(tmp_path, "text,tags\nhello,x\n  ,y\n")
    assert "t.csv row 2 column 'text': empty text (the row's key" in _error(t)
    t = _table(tmp_path, "id,text,tags\n1,a,x\n1,b,y\n")
    assert "row 2 column 'id': duplicate key '1' (first on row 1)" in _error(t, id="id")
    t = _table(tmp_path, "image,tags\n../../etc/passwd,x\nok.jpg,y\n")
    assert "row 1 column 'image': image path '../../etc/passwd' leaves" in _error(t)
    t = _table(tmp_path, "text,tags\na,\nb,\n")
    assert "no labelled rows" in _error(t)
    t = _table(tmp_path, "text,tags,split\na,x,train\nb,y,holdout\n")
    assert "row 2 column 'split': split 'holdout' is not one of train, val, test" in _error(t)
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    assert "bad.parquet: cannot read it as PARQUET" in _error(tmp_path / "bad.parquet")
    t = _table(tmp_path, "number,tags\n1,x\n")
    assert "no image or text column" in _error(t)
    with pytest.raises(ValueError, match="--val-fraction"):
        DataSpec(t, val_fraction=1.5)


def test_the_cli_names_the_row_in_one_line(tmp_path):
    t = _table(tmp_path, "text,tags\na,x\na,y\n")
    code, out, err = invoke("data", "check", "--data", t)
    assert code == 2 and err.count("\n") == 1 and "t.csv row 2 column 'text': duplicate key 'a'" in err
    code, out, err = invoke("data", "check", "--data", t, "--lenient", "--json")
    assert code == 0 and json.loads(out)["skipped_rows"] == 1


FAULTS = ("empty_image", "empty_id", "nul_id", "duplicate", "leaves_root", "bad_split", "unknown_label")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(3, 30), faults=st.dictionaries(st.integers(0, 29), st.sampled_from(FAULTS), max_size=6),
       sep=st.sampled_from(["|", ",", ";"]), fmt=st.sampled_from(["csv", "parquet", "jsonl"]),
       caption=st.text(st.sampled_from(list('ab ,"\'|;\n\té\\')), max_size=20))
def test_every_row_is_kept_or_reported(tmp_path_factory, n, faults, sep, fmt, caption):
    """Generated tables with faults planted in random rows: strict reading names the first bad row;
    lenient reading skips exactly the planted rows and keeps every other row, none merged."""
    tmp = tmp_path_factory.mktemp("t")
    (tmp / "labels.txt").write_text("a\nb\nc\n")
    faults = {r: f for r, f in faults.items() if r < n and (r, f) != (0, "empty_id")}  # row 0's id is the duplicates'
    rows = []
    for i in range(n):
        f = faults.get(i)
        rows.append({"image": "" if f == "empty_image" else "../out.jpg" if f == "leaves_root" else f"p/{i}.jpg",
                     "text": f"{caption} {i}", "id": "0" if f == "duplicate" and i > 0 else " " * (i % 2) if f == "empty_id" else f"{i}\x00" if f == "nul_id" else str(i),
                     "tags": sep.join(["a", "zz"] if f == "unknown_label" else ["a", "b"][: 1 + i % 2]),
                     "split": "later" if f == "bad_split" else "train"})
    frame = pl.DataFrame(rows)
    path = tmp / f"t.{fmt}"
    {"csv": frame.write_csv, "parquet": frame.write_parquet, "jsonl": frame.write_ndjson}[fmt](path)
    spec = dict(id="id", split="split", sep=sep, labels="tags", labels_file=tmp / "labels.txt")
    bad = {r for r, f in faults.items() if not (f == "duplicate" and r == 0)}  # row 0 is the first of its id
    if not bad:
        ds = load_dataset(DataSpec(path, **spec))
        assert len(ds.train) == n
        return
    message = _error(path, **spec)
    assert f"row {min(bad) + 1} column" in message, (message, faults)
    if len(bad) == n:
        return  # every row bad: nothing labelled is left
    ds = load_dataset(DataSpec(path, **spec), lenient=True)
    kept = sorted(int(r.image_id) for r in ds.train)
    assert kept == [i for i in range(n) if i not in bad], (kept, faults)
    assert sorted({s.line for s in ds.skipped}) == sorted(r + 1 for r in bad)
    assert all(r.caption == f"{caption} {r.image_id}" for r in ds.train)  # never merged


def test_a_hf_dataset_without_image_or_text_is_refused(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"n": [1, 2], "labels": ["a", "b"]}).save_to_disk(str(tmp_path / "hf"))
    assert "no image or text column" in _error(tmp_path / "hf")


def test_the_comp5329_folder_refuses_table_options(synth_root):
    assert "fixed columns" in _error(synth_root, labels="tags")
    assert load_dataset(DataSpec(synth_root, val_fraction=0.3)).val_fraction == 0.3


def test_a_symlink_out_of_the_image_folder_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(outside / "x.jpg")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.jpg").symlink_to(outside / "x.jpg")
    t = _table(tmp_path / "d", "image,tags\nx.jpg,a\n")
    ds = load_dataset(t)
    with pytest.raises(DataError, match="leaves the image folder"):
        ds.open_image(ds.train[0])
    t = _table(tmp_path / "d", "image,tags\nd/x.jpg,a\n", "t2.csv")
    ok = load_dataset(DataSpec(t, image_root=tmp_path))  # --image-root names where images live
    assert ok.open_image(ok.train[0]).size == (8, 8)


def test_the_fingerprint_memo_is_reused_only_while_every_file_is_unchanged(tmp_path):
    from PIL import Image

    root = make_dataset(tmp_path / "d", n_train=30, n_test=5, seed=2)
    memo = tmp_path / "home" / "fingerprints.json"
    first = load_dataset(root).fingerprint(memo=memo)
    assert memo.is_file() and load_dataset(root).fingerprint() == first
    doc = json.loads(memo.read_text())
    (stamp,) = doc
    memo.write_text(json.dumps({stamp: "not-the-real-one"}))  # the memo is what a hit returns...
    assert load_dataset(root).fingerprint(memo=memo) == "not-the-real-one"
    Image.new("RGB", (16, 16), (9, 9, 9)).save(root / "data" / "3.jpg")  # ...until a file changes
    changed = load_dataset(root).fingerprint(memo=memo)
    assert changed == load_dataset(root).fingerprint() and changed != first
    memo.write_text("{broken")
    assert load_dataset(root).fingerprint(memo=memo) == changed  # a damaged memo: hashed again


# --- the order-free hash of a table's rows ------------------------------------------------------

def test_the_rows_hash_alike_in_any_order_format_or_label_spelling(tmp_path):
    """The fingerprint is of the rows: a CSV with padded label names, a Parquet list column and the
    rows reversed as JSONL hash alike; a changed caption, label or key does not."""
    rows = {"id": [f"item-{i:03d}" for i in range(40)], "text": [f"caption {i % 7}" for i in range(40)],
            "tags": [["cat", "dog"][: 1 + i % 2] if i % 5 else [] for i in range(40)]}
    pl.DataFrame({**rows, "tags": [" | ".join(t) for t in rows["tags"]]}).write_csv(tmp_path / "t.csv")
    pl.DataFrame(rows).write_parquet(tmp_path / "t.parquet")
    pl.DataFrame(rows).reverse().write_ndjson(tmp_path / "t.jsonl")
    first = load_dataset(tmp_path / "t.csv").fingerprint()
    assert load_dataset(tmp_path / "t.parquet").fingerprint() == load_dataset(tmp_path / "t.jsonl").fingerprint() == first
    for column, value in (("text", "caption 0!"), ("tags", ["dog"]), ("id", "item-999")):
        changed = pl.DataFrame(rows).with_columns(pl.Series(column, [value] + rows[column][1:]))
        changed.write_parquet(tmp_path / "changed.parquet")
        assert load_dataset(tmp_path / "changed.parquet").fingerprint() != first, column


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(max_size=40)), min_size=1, max_size=30))
def test_a_rows_hash_is_xxh3_of_its_bytes_whatever_its_neighbours(strings):
    """Each row's hash is XXH3-64 of its UTF-8 bytes (a published algorithm: fingerprints do not move
    with a library's version), the same alone as among other rows; a null hashes as the empty string."""
    from featcache.data.tabular import _row_hashes

    work = pl.DataFrame({"s": strings}, schema={"s": pl.String})
    together = _row_hashes(work, ["s"])["s"]
    alone = [_row_hashes(pl.DataFrame({"s": [x]}, schema={"s": pl.String}), ["s"])["s"][0] for x in strings]
    assert together.tolist() == alone
    empty = _row_hashes(pl.DataFrame({"s": [""]}), ["s"])["s"][0]
    assert int(empty) == 0x2D06800538D394C2  # XXH3-64 of no bytes, seed 0 (the reference's test vector)


def test_keys_whose_hashes_tie_are_ordered_by_the_keys(tmp_path, monkeypatch):
    """Keys whose hashes tie (made to tie here: every string hashes alike) are ordered, and told apart
    from duplicates, by the keys themselves."""
    from featcache.data import tabular

    keys = ["photos/a" + c + "b" * 31 for c in "QWERTYUIOP"]
    order, duplicated = tabular._key_order(pl.Series(keys), np.zeros(len(keys), np.uint64))
    assert [keys[i] for i in order] == sorted(keys) and not duplicated
    monkeypatch.setattr(tabular, "_row_hashes", lambda work, columns: {c: np.zeros(work.height, np.uint64)
                                                                        for c in columns})
    table = pl.DataFrame({"id": keys, "text": ["t"] * 10, "tags": ["a"] * 10})
    table.write_csv(tmp_path / "t.csv")
    table.reverse().write_csv(tmp_path / "r.csv")
    assert load_dataset(tmp_path / "t.csv").fingerprint() == load_dataset(tmp_path / "r.csv").fingerprint()
    pl.concat([table, table.head(1)]).write_csv(tmp_path / "d.csv")
    assert "row 11 column 'id': duplicate key" in _error(tmp_path / "d.csv")


def test_lenient_skips_every_bad_row_however_many(tmp_path):
    """Thousands of bad rows of one kind: every one is skipped (one skip a row), none kept."""
    n = 3000
    frame = pl.DataFrame({"id": [str(i // 2) if i % 2 and i < 2400 else str(i) for i in range(n)],
                          "text": [f"t{i}" for i in range(n)],
                          "split": ["trian" if i % 3 else "train" for i in range(n)], "tags": ["a"] * n})
    frame.write_parquet(tmp_path / "t.parquet")
    ds = load_dataset(DataSpec(tmp_path / "t.parquet", id="id", split="split"), lenient=True)
    ids = [r.image_id for r in ds.train]
    first = {}
    for i, key in enumerate(frame["id"]):
        first.setdefault(key, i)
    bad = {i for i, key in enumerate(frame["id"]) if i % 3 or first[key] != i}
    assert len(bad) > 2000  # well past any cap on the rows a message lists
    assert len(ids) == len(set(ids)) == n - len(bad)
    assert len(ds.skipped) == len(bad) and len({s.line for s in ds.skipped}) == len(bad)


def test_the_labels_file_is_an_input_no_output_goes_over(tmp_path):
    t = _table(tmp_path, "text,tags\na,x\nb,y\n")
    (tmp_path / "labels.txt").write_text("x\ny\n")
    code, out, err = invoke("data", "check", "--data", t, "--labels-file", tmp_path / "labels.txt",
                            "--plot", tmp_path / "labels.txt")
    assert code == 2 and (tmp_path / "labels.txt").read_text() == "x\ny\n"


def test_a_labels_file_may_not_declare_an_integer_id_twice(tmp_path):
    t = _table(tmp_path, "text,tags\na,1\n")
    (tmp_path / "labels.json").write_text('{"1": "cat", "01": "dog"}')
    assert "declared twice" in _error(t, labels_file=tmp_path / "labels.json")


def test_the_split_column_is_part_of_the_fingerprint(tmp_path):
    rows = {"id": ["a", "b", "c", "d"], "text": ["1", "2", "3", "4"], "tags": ["x", "y", "x", "y"]}
    pl.DataFrame({**rows, "split": ["train", "train", "val", "val"]}).write_csv(tmp_path / "one.csv")
    pl.DataFrame({**rows, "split": ["train", "val", "train", "val"]}).write_csv(tmp_path / "two.csv")
    one, two = (load_dataset(DataSpec(tmp_path / f, split="split")) for f in ("one.csv", "two.csv"))
    assert one.fingerprint() != two.fingerprint()
