"""Extraction into the HDF5 cache: correctness, warm cache, fingerprints, resume, locking, views.

Small random-init models on generated data; threads fixed so runs are bit-for-bit reproducible."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from featcache.encoders import models as encoders

from featcache.stage1.build import extract_features
from featcache.data import DataError, load_dataset
from featcache.encoders.models import create_encoder
from featcache.stage1.extract import extract
from featcache.encoders.registry import get_cfg
from featcache.data.split import train_val_split
from featcache.data.synth import flip_bit, make_dataset
from stores.features import StoreError, cache_path, open_features, partial_path

ROOT = Path(__file__).resolve().parents[1]
# torch fp32, the reference path: these tests are about the cache; backends are tests/test_backends.py
FAST = dict(pretrained=False, image_size=32, batch_size=4, threads=1, num_workers=0, progress=False, log=lambda m: None,
            backend="torch", precision="fp32")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), n_train=24, n_test=8, seed=1, image_size=40)


@pytest.fixture
def dataset(data_root):
    return load_dataset(data_root)


def run(dataset, cache, name="efficientnet_lite0", finetune_epochs=0, lr=None, **kw):
    """Stage 1 as the CLI runs it: fine-tuning first when asked, then extraction."""
    return extract_features(dataset, name, cache=cache, adapt_epochs=finetune_epochs, adapt_lr=lr, **{**FAST, **kw})


def test_features_are_the_model_outputs_for_every_train_and_test_id(dataset, tmp_path):
    result = run(dataset, tmp_path, num_workers=1)
    fs = open_features(tmp_path, "efficientnet_lite0")
    assert not result.warm and result.rows == 32
    assert fs.ids.tolist() == [r.image_id for r in dataset.train + dataset.test]
    assert fs.features.dtype == np.float32 and fs.features.shape == (32, 1280) and fs.dim == 1280
    with h5py.File(cache_path(tmp_path, "efficientnet_lite0")) as f:
        assert f["features"].dtype == np.float16 and f["features"].chunks is not None and f.attrs["complete"]
    enc = create_encoder(replace(get_cfg("efficientnet_lite0"), input_size=32), pretrained=False)
    from featcache.data import load_image

    recs = dataset.test[:3]
    with torch.inference_mode():
        direct = enc(enc.collate([load_image(dataset.image_path(r)) for r in recs])).numpy()
    np.testing.assert_allclose(fs.rows([r.image_id for r in recs]), direct, rtol=2e-3, atol=2e-3)
    with pytest.raises(KeyError, match="nope.jpg"):
        fs.rows(["nope.jpg"])


def test_text_features_with_length_sorted_batches_equal_a_plain_forward(dataset, tmp_path):
    run(dataset, tmp_path, name="minilm_l6", batch_size=8)
    fs = open_features(tmp_path, "minilm_l6")
    enc = create_encoder("minilm_l6", pretrained=False)
    caps = [r.caption for r in dataset.train[:5]]
    with torch.inference_mode():
        direct = enc(enc.collate(caps)).numpy()
    assert fs.modality == "text" and fs.features.shape == (32, 384)
    np.testing.assert_allclose(fs.rows([r.image_id for r in dataset.train[:5]]), direct, rtol=2e-3, atol=2e-3)


def test_warm_cache_returns_fast_without_building_the_model(dataset, tmp_path, monkeypatch):
    first = run(dataset, tmp_path)
    monkeypatch.setattr(encoders, "build_encoder", lambda *a, **k: pytest.fail("warm cache built the model"))
    t0 = time.perf_counter()
    again = run(dataset, tmp_path)
    assert again.warm and again.fingerprint == first.fingerprint and time.perf_counter() - t0 < 2.0


def test_changed_preprocessing_is_refused_and_never_mixed(dataset, tmp_path):
    first = run(dataset, tmp_path)
    path = cache_path(tmp_path, "efficientnet_lite0")
    before = path.read_bytes()
    with pytest.raises(StoreError, match=r"efficientnet_lite0.h5: cache built from a different configuration.*preprocessing.*--force"):
        run(dataset, tmp_path, image_size=48)
    assert path.read_bytes() == before
    rebuilt = run(dataset, tmp_path, image_size=48, force=True)
    assert rebuilt.fingerprint != first.fingerprint and open_features(tmp_path, "efficientnet_lite0").fingerprint == rebuilt.fingerprint


def test_changed_weights_file_changes_the_fingerprint(dataset, tmp_path):
    from safetensors.torch import save_file

    enc = create_encoder(replace(get_cfg("efficientnet_lite0"), input_size=32), pretrained=False)
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(weights))
    first = run(dataset, tmp_path / "c", pretrained=True, weights=weights)
    with torch.no_grad():
        next(enc.parameters()).mul_(1.5)
    save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(weights))
    with pytest.raises(StoreError, match="weights_sha256"):
        run(dataset, tmp_path / "c", pretrained=True, weights=weights)
    second = run(dataset, tmp_path / "c", pretrained=True, weights=weights, force=True)
    assert second.fingerprint != first.fingerprint


def test_views_are_seeded_and_differ_from_the_clean_rows(dataset, tmp_path):
    run(dataset, tmp_path / "a", views=2)
    run(dataset, tmp_path / "b", views=2, batch_size=8)
    a, b = open_features(tmp_path / "a", "efficientnet_lite0"), open_features(tmp_path / "b", "efficientnet_lite0")
    train_ids = [r.image_id for r in dataset.train]
    views = a.view_rows(train_ids)
    assert views.shape == (2, 24, 1280)
    clean = a.rows(train_ids)
    for k in range(2):
        assert (np.abs(views[k] - clean).max(axis=1) > 1e-3).all()  # every row differs from its clean view
    assert (np.abs(views[0] - views[1]).max(axis=1) > 1e-3).all()
    np.testing.assert_allclose(views, b.view_rows(train_ids), atol=2e-3)  # same seed, same views
    assert open_features(tmp_path / "a", "efficientnet_lite0").view_rows(train_ids[:2]).shape == (2, 2, 1280)
    with pytest.raises(KeyError):
        a.view_rows([dataset.test[0].image_id])  # test rows have no views


def test_missing_image_names_file_and_row_or_is_a_reported_skip(data_root, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    (root / "data" / "5.jpg").unlink()
    (root / "data" / "7.jpg").write_bytes(b"not a jpeg")
    dataset = load_dataset(root)
    line = dataset.train[5].line  # 8: a caption above spans two lines
    with pytest.raises(DataError, match=rf"data/5.jpg: image file not found \(train.csv line {line}, ImageID 5.jpg\)"):
        run(dataset, tmp_path / "c")
    result = run(dataset, tmp_path / "c", lenient=True)
    assert sorted(s["image_id"] for s in result.skipped) == ["5.jpg", "7.jpg"] and result.rows == 30
    fs = open_features(tmp_path / "c", "efficientnet_lite0")
    assert "5.jpg" not in fs.ids and "7.jpg" not in fs.ids and len(fs.ids) == 30
    assert "cannot read image" in " ".join(s["reason"] for s in result.skipped)


def test_corrupt_or_truncated_cache_is_a_clear_error(dataset, tmp_path):
    run(dataset, tmp_path)
    path = cache_path(tmp_path, "efficientnet_lite0")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(StoreError, match=r"efficientnet_lite0.h5: corrupt or truncated"):
        open_features(tmp_path, "efficientnet_lite0")
    with pytest.raises(StoreError, match=r"efficientnet_lite0.h5: not a readable feature cache"):
        run(dataset, tmp_path)
    assert run(dataset, tmp_path, force=True).rows == 32
    open_features(tmp_path, "efficientnet_lite0")
    with pytest.raises(StoreError, match="no feature cache"):
        open_features(tmp_path, "minilm_l6")


CHILD = textwrap.dedent("""
    import sys, time
    from stores import features
    from featcache.data import load_dataset
    from featcache.stage1.extract import extract
    write = features.FeatureWriter.write
    def slow_write(self, start, values, skipped=()):
        write(self, start, values, skipped)
        print("wrote", self.rows_done, flush=True)
        time.sleep(float(sys.argv[3]))
    features.FeatureWriter.write = slow_write
    extract(load_dataset(sys.argv[1]), "efficientnet_lite0", sys.argv[2], pretrained=False, image_size=32,
            batch_size=4, threads=1, num_workers=1, chunk_batches=1, progress=False, backend="torch", precision="fp32")
    print("done", flush=True)
""")


def child(data_root, cache, pause="0"):
    return subprocess.Popen([sys.executable, "-c", CHILD, str(data_root), str(cache), pause], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_kill_9_mid_write_then_resume_equals_an_uninterrupted_run(data_root, dataset, tmp_path):
    proc = child(data_root, tmp_path / "killed", pause="0.5")
    lines = [proc.stdout.readline() for _ in range(3)]  # three chunks written and flushed
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert lines[-1].startswith("wrote 12"), lines
    assert partial_path(cache_path(tmp_path / "killed", "efficientnet_lite0")).exists()
    with pytest.raises(StoreError, match="interrupted"):  # a half-written file is never read as complete
        open_features(tmp_path / "killed", "efficientnet_lite0")
    resumed = run(dataset, tmp_path / "killed", chunk_batches=1)
    assert resumed.resumed_from >= 12
    run(dataset, tmp_path / "clean", chunk_batches=1)
    a, b = open_features(tmp_path / "killed", "efficientnet_lite0"), open_features(tmp_path / "clean", "efficientnet_lite0")
    assert a.fingerprint == b.fingerprint and np.array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.features, b.features)


def test_two_concurrent_extractors_make_one_valid_cache(data_root, dataset, tmp_path):
    procs = [child(data_root, tmp_path, pause="0.05") for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-500:] for _, err in outs]
    assert any("another process is extracting it" in err for _, err in outs)
    assert sum(out.count("wrote") for out, _ in outs) == 8  # 32 rows in chunks of 4: written once
    fs = open_features(tmp_path, "efficientnet_lite0")
    alone = run(dataset, tmp_path / "alone", chunk_batches=1)
    np.testing.assert_array_equal(fs.features, open_features(tmp_path / "alone", "efficientnet_lite0").features)
    assert fs.fingerprint == alone.fingerprint


def test_finetune_trains_on_the_train_split_only_and_caches_under_ft(dataset, tmp_path, monkeypatch):
    from featcache.encoders import loader

    seen, scored = [], []
    load = loader.encoder_input

    def spy(ds, cfg, rec, *a, **kw):  # training reads under autograd; the validation watch under inference_mode
        (seen if torch.is_grad_enabled() else scored).append(rec.image_id)
        return load(ds, cfg, rec, *a, **kw)

    monkeypatch.setattr(loader, "encoder_input", spy)
    result = run(dataset, tmp_path, finetune_epochs=1, lr=1e-3)
    train_idx, val_idx = train_val_split(dataset.targets(), seed=0)
    train_ids = {dataset.train[i].image_id for i in train_idx}
    assert set(seen) <= train_ids and len(set(seen)) >= len(train_ids) - 3  # drop_last: batches of 4
    assert not set(seen) & ({dataset.train[i].image_id for i in val_idx} | {r.image_id for r in dataset.test})
    # The validation watch reads each validation row once (extraction then reads every row).
    assert sorted(scored[:len(val_idx)]) == sorted(dataset.train[i].image_id for i in val_idx)
    history = __import__("json").loads((tmp_path / "efficientnet_lite0_ft.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1] and 0 <= history[0]["val_map"] <= 1
    assert result.name == "efficientnet_lite0_ft" and (tmp_path / "efficientnet_lite0_ft.safetensors").exists()
    ft = open_features(tmp_path, "efficientnet_lite0_ft")
    spec = __import__("json").loads(ft.attrs["fingerprint_spec"])
    assert spec["finetune"]["train_rows"] == len(train_idx) and len(spec["finetune"]["weights_sha256"]) == 64
    base = run(dataset, tmp_path)
    assert not np.allclose(ft.features, open_features(tmp_path, "efficientnet_lite0").features)
    seen.clear()
    assert run(dataset, tmp_path, finetune_epochs=1, lr=1e-3).warm and not seen  # reused, not retrained
    assert base.fingerprint != ft.fingerprint


def test_finetune_names_an_unreadable_train_image_or_counts_it_with_lenient(data_root, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    dataset = load_dataset(root)
    train_idx, _ = train_val_split(dataset.targets(), seed=0)
    victim = dataset.train[train_idx[0]]  # a row fine-tuning trains on
    (root / "data" / victim.image_id).unlink()
    with pytest.raises(DataError, match=rf"{victim.image_id}: image file not found \(train.csv line {victim.line}, ImageID"):
        run(dataset, tmp_path / "strict", finetune_epochs=1, lr=1e-3, num_workers=1)
    said = []
    result = run(dataset, tmp_path / "lenient", finetune_epochs=1, lr=1e-3, lenient=True, log=said.append)
    assert any("fine-tuning skipped 1 unreadable training images" in m for m in said), said
    assert [s["image_id"] for s in result.skipped] == [victim.image_id]  # and extraction reports it too
    assert victim.image_id not in open_features(tmp_path / "lenient", "efficientnet_lite0_ft").ids


def test_two_concurrent_adaptations_train_once(dataset, tmp_path, monkeypatch):
    import threading

    from featcache.stage1 import adapt
    from featcache.stage1.config import AdaptConfig
    from featcache.encoders.weights import resolve_weights

    calls = []

    def fake_train(dataset, cfg, source, ft, out, *args):
        calls.append(out)
        time.sleep(0.5)  # long enough for the other caller to arrive while this one trains
        out.write_bytes(b"weights")
        return []

    monkeypatch.setattr(adapt, "train_backbone", fake_train)
    cfg = get_cfg("efficientnet_lite0")
    source = resolve_weights(cfg, None, False)
    ft = AdaptConfig(epochs=1, lr=1e-3)
    said = []
    threads = [threading.Thread(target=adapt.ensure_adapted, args=(dataset, cfg, source, ft, tmp_path),
                                kwargs={"say": said.append}) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and any("reusing fine-tuned weights" in m for m in said)


def test_cli_encoders_and_extract(data_root, tmp_path):
    from typer.testing import CliRunner

    sys.path.insert(0, str(ROOT))
    from cli import app

    out = CliRunner().invoke(app, ["encoders"])
    assert out.exit_code == 0, out.output
    for name in ("efficientnet_lite0", "minilm_l6", "bert_base", "resnet50"):
        assert name in out.output
    args = ["extract", "--encoder", "efficientnet_lite0", "--data", str(data_root), "--cache", str(tmp_path),
            "--random-init", "--image-size", "32", "--batch-size", "8", "--threads", "1", "--num-workers", "0"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0 and "32 rows" in first.output, first.output
    assert "warm" in CliRunner().invoke(app, args).output
    refused = CliRunner().invoke(app, args[:-6] + ["--image-size", "40"])
    assert refused.exit_code == 2 and "different configuration" in refused.output


@pytest.mark.parametrize("freeze_bn", [True, False])
def test_finetune_keeps_batchnorm_statistics_unless_told_otherwise(dataset, tmp_path, freeze_bn):
    from featcache.stage1 import adapt
    from featcache.stage1.config import AdaptConfig
    from featcache.encoders.models import build_encoder, load_state_dict
    from featcache.encoders.weights import resolve_weights

    cfg = replace(get_cfg("efficientnet_lite0"), input_size=32)
    source = resolve_weights(cfg, None, False)
    ft = AdaptConfig(epochs=1, lr=1e-2, batch_size=4, freeze_bn=freeze_bn)
    tuned, _ = adapt.ensure_adapted(dataset, cfg, source, ft, tmp_path, threads=1, num_workers=0, say=lambda m: None)
    before, after = build_encoder(cfg, source).state_dict(), load_state_dict(tuned.path)
    stats = [k for k in before if k.endswith("running_mean")]
    weights = [k for k in before if k.endswith("conv_stem.weight")]
    assert stats and weights and not torch.equal(before[weights[0]], after[weights[0]])  # it trained
    assert all(torch.equal(before[k], after[k]) for k in stats) == freeze_bn


def test_a_plain_cache_copied_under_the_fine_tuned_name_is_refused(data_root, tmp_path):
    import shutil

    extract(load_dataset(data_root), "efficientnet_lite0", tmp_path, **FAST)
    shutil.copy(cache_path(tmp_path, "efficientnet_lite0"), cache_path(tmp_path, "efficientnet_lite0_ft"))
    with pytest.raises(StoreError, match=r"efficientnet_lite0_ft.h5: holds features of encoder 'efficientnet_lite0' "
                                         r"\(cache name 'efficientnet_lite0'\), not 'efficientnet_lite0_ft'"):
        open_features(tmp_path, "efficientnet_lite0_ft")
    assert open_features(tmp_path, "efficientnet_lite0").features.shape[1] == 1280


def test_one_flipped_bit_in_the_features_is_detected_and_named(data_root, tmp_path):
    """fletcher32 checksums per chunk: corruption is a StoreError naming the file, not a feature."""
    extract(load_dataset(data_root), "efficientnet_lite0", tmp_path, **FAST)
    flip_bit(cache_path(tmp_path, "efficientnet_lite0"), offset=100, bit=2)
    with pytest.raises(StoreError, match=r"efficientnet_lite0.h5: corrupt or truncated feature cache"):
        open_features(tmp_path, "efficientnet_lite0")
    extract(load_dataset(data_root), "efficientnet_lite0", tmp_path / "clean", **FAST)
    rebuilt = extract(load_dataset(data_root), "efficientnet_lite0", tmp_path, force=True, **FAST)  # same configuration
    assert not rebuilt.warm
    np.testing.assert_array_equal(open_features(tmp_path, "efficientnet_lite0").features,
                                  open_features(tmp_path / "clean", "efficientnet_lite0").features)


def test_a_cache_built_with_lenient_is_usable_later_and_its_skipped_rows_are_reported(data_root, tmp_path, capsys):
    import shutil

    from featcache.stage2.experiment import fit_head
    from heads.config import HeadConfig

    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    (root / "data" / "5.jpg").write_bytes(b"not a jpeg")
    dataset = load_dataset(root)
    run(dataset, tmp_path / "c", lenient=True)
    run(dataset, tmp_path / "c", name="minilm_l6")
    _, result = fit_head(root, ["efficientnet_lite0", "minilm_l6"], cache=tmp_path / "c", head=HeadConfig(width=8, epochs=1),
                         runs=tmp_path / "runs")
    assert result.metrics["n_train"] + result.metrics["n_val"] == len(dataset.train) - 1
    assert "skipped 1 train.csv rows absent from the caches efficientnet_lite0, minilm_l6" in capsys.readouterr().err
