"""End-to-end fine-tuning on generated data with tiny random-init encoders (32 px images).

One uninterrupted run (3 epochs x 3 steps) is shared: it shows the loss falling, is what predict
reads, and is the reference an interrupted-then-resumed run must reproduce exactly."""

from __future__ import annotations

import json
import os
from dataclasses import replace
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from cli import app

from featcache.data import load_dataset
from featcache.e2e import loop
from featcache.e2e.checkpoints import latest_checkpoint, load_checkpoint
from featcache.e2e.config import E2EConfig
from featcache.e2e.loop import lr_factor, train
from featcache.e2e.model import build_model, with_init_head
from featcache.e2e.predict import predict_proba
from featcache.data.synth import make_dataset
from heads.config import HeadArch

ROOT = Path(__file__).resolve().parents[1]
# dropout 0: the head's pooled dropout masks are redrawn in a new process, so only without
# dropout can a resumed run be compared bit for bit with an uninterrupted one. The cosine schedule
# makes the resumed run's lr depend on where it resumes.
CFG = E2EConfig(image_size=32, pretrained=False, epochs=3, batch_size=8, lr=1e-3, stats_rows=32, max_steps=3,
                head=HeadArch(dropout=0.0), schedule="cosine")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("e2e-data"), n_train=48, n_test=12, seed=0, image_size=32)


@pytest.fixture(scope="module")
def full_run(data, tmp_path_factory):
    return train(CFG, data, tmp_path_factory.mktemp("runs"), run_name="full", threads=1, log=lambda m: None,
                 track="tensorboard")


def test_training_lowers_the_loss_and_writes_the_run(full_run):
    hist = pl.read_csv(full_run / "history.csv")
    steps = pl.read_csv(full_run / "steps.csv")
    assert hist["epoch"].to_list() == [1, 2, 3] and len(steps) == 9
    assert (hist["train_seconds"] > 0).all() and (hist["seconds_per_step"] > 0).all()
    # From the untrained first step to the last epoch: fitting even the label prior halves BCE.
    assert hist["train_loss"][-1] < 0.8 * steps["loss"][0]
    assert hist["train_loss"][-1] < hist["train_loss"][0]
    for name in ("config.json", "model.safetensors", "thresholds.json", "metrics.json", "loss.png", "val_f1.png"):
        assert (full_run / name).stat().st_size > 0, name
    metrics = json.loads((full_run / "metrics.json").read_text())
    assert set(metrics["tuned"]) >= {"sample_f1", "micro_f1", "macro_f1", "map"} and metrics["epochs"] == 3
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(full_run / "tensorboard"))  # --track tensorboard: every step's loss, every epoch's scores
    events.Reload()
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(steps["loss"].to_list())
    assert len(events.Scalars("epoch/val_map")) == 3
    # The out-of-fold score re-tunes on half the rows: it can't beat tuning on all of them by much.
    assert 0 < metrics["tuned_out_of_fold"] <= metrics["tuned"]["sample_f1"] + 0.05
    assert metrics["thresholds"]["chosen"] in ("flat", "global", "shrunk", "per-label")
    # --keep's default: the best epoch by validation mAP and the last; the others are removed.
    best = max(metrics["history"], key=lambda r: r["val_map"])["epoch"]
    from featcache.outputs import FILE_MODE  # weights (safetensors writes 0600), tables and checkpoints alike
    assert {p.stat().st_mode & 0o777 for p in full_run.rglob("*") if p.is_file()} == {FILE_MODE}
    assert sorted(p.name for p in (full_run / "checkpoints").iterdir()) == sorted({f"epoch-{best}", "epoch-3"})


def cut_after_epoch_1(cfg, data, runs: Path, name: str, monkeypatch) -> Path:
    """A run stopped as if killed right after its epoch-1 checkpoint was written."""
    write_tables = loop.write_tables

    def stop_after_epoch_1(run_dir, state):
        if state["epoch"] == 1:
            raise KeyboardInterrupt
        write_tables(run_dir, state)

    monkeypatch.setattr(loop, "write_tables", stop_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, data, runs, run_name=name, threads=1, log=lambda m: None)
    monkeypatch.undo()
    return runs / name


def test_interrupted_run_resumes_after_its_checkpoint_and_matches(full_run, data, tmp_path, monkeypatch):
    run = cut_after_epoch_1(CFG, data, tmp_path, "cut", monkeypatch)
    assert not (run / "model.safetensors").exists()
    saved = load_file(str(latest_checkpoint(run) / "model.safetensors"))
    model = build_model(CFG, 18, [CFG.image_encoder, CFG.text_encoder])
    assert load_checkpoint(run, model)["epoch"] == 1
    assert all(np.array_equal(v.numpy(), saved[k].numpy()) for k, v in model.state_dict().items())

    logs = []
    train(None, None, resume=run, threads=1, log=logs.append)
    assert any("resuming after epoch 1 of 3" in m for m in logs)
    assert not any("epoch 1/3" in m for m in logs)  # epoch 1 is not trained again
    steps = pl.read_csv(run / "steps.csv")
    assert steps["epoch"].to_list() == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    # Same order, views, optimizer state and weights: the resumed run ends where the uninterrupted one did.
    a, b = load_file(str(full_run / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert a.keys() == b.keys()
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
    assert worst < 1e-5, worst


def test_resume_refuses_other_data_than_the_run_trained_on(data, tmp_path, monkeypatch):
    run = cut_after_epoch_1(CFG, data, tmp_path, "cut", monkeypatch)
    other = make_dataset(tmp_path / "other", n_train=48, n_test=12, seed=1, image_size=32)
    with pytest.raises(ValueError, match=r"trained on other data than .*other.*could put rows it trained on into validation"):
        train(None, other, resume=run, threads=1, log=lambda m: None)
    assert not (run / "model.safetensors").exists()


def test_predict_reads_the_run_and_keeps_every_test_row(full_run, data, tmp_path):
    dataset = load_dataset(data)
    probs = predict_proba(full_run, dataset)
    assert probs.shape == (len(dataset.test), 18) and np.isfinite(probs).all()
    out = tmp_path / "submission.csv"
    result = CliRunner().invoke(app, ["predict", "--run", str(full_run), "--data", str(data), "--out", str(out)])
    assert result.exit_code == 0, result.output
    sub = pl.read_csv(out, schema_overrides={"Labels": pl.Utf8})
    assert sub["ImageID"].to_list() == [r.image_id for r in dataset.test]
    assert sub["Labels"].str.len_chars().min() > 0  # at least one label each (top-label fallback)


def test_torchrun_two_processes_both_step_and_one_run_dir(data, tmp_path):
    runs = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2", "cli.py", "finetune",
           "--data", str(data), "--runs", str(runs), "--random-init", "--image-size", "32", "--batch-size", "4",
           "--epochs", "1", "--max-steps", "2", "--log-every", "1", "--threads", "1", "--keep", "last"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        for step in (1, 2):  # rank 0 draws the progress bar instead of step lines
            assert (f"rank {rank} epoch 1 step {step}/2 " in proc.stderr) == (rank == 1), proc.stderr[-3000:]
    assert "epoch 1/1: 100%" in proc.stderr and "step/s" in proc.stderr  # rank 0's bar
    (run,) = list(runs.iterdir())  # exactly one run directory: rank 0 names it, only rank 0 writes
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    assert (run / "model.safetensors").exists() and len(pl.read_csv(run / "history.csv")) == 1


def test_init_head_from_a_stage2_run_and_freezing(data, tmp_path):
    """A stage-2 head fitted on (text, image) features starts the model as is: its input order,
    weights and standardisation; frozen parts get no gradient and keep batch-norm in eval mode."""
    import torch

    from heads.train import Head
    from heads.config import HeadConfig

    rng = np.random.default_rng(0)
    xs, y = [rng.normal(size=(40, 384)).astype(np.float32), rng.normal(2, 3, size=(40, 1280)).astype(np.float32)], \
        (rng.random((40, 18)) < 0.2).astype(np.float32)
    head = Head(HeadConfig(fusion="concat", classifier="mlp", width=32, epochs=1, bf16=False)).fit(xs, y)
    head.save(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"encoders": ["minilm_l6", "efficientnet_lite0"]}))
    cfg = replace(CFG, init_head=str(tmp_path), freeze=("text", "image-early"))
    cfg, order, net, weights = with_init_head(cfg, 18)
    assert order == ["minilm_l6", "efficientnet_lite0"] and (cfg.head.classifier, cfg.head.width) == ("mlp", 32) and not weights
    with pytest.raises(ValueError, match="split seed 0"):  # another split would validate on the head's train rows
        with_init_head(replace(CFG, init_head=str(tmp_path), split_seed=1), 18)
    with_init_head(replace(CFG, init_head=str(tmp_path), seed=1), 18)  # another model seed: the same split
    with pytest.raises(ValueError, match="fit-head --train-fraction 0.5"):  # the head saw all the train rows
        with_init_head(replace(CFG, init_head=str(tmp_path), train_fraction=0.5), 18)
    model = build_model(cfg, 18, order, net)
    assert torch.equal(model.head.mean1, head.net.mean1) and torch.equal(model.head.fusion.cls[0].weight,
                                                                          head.net.fusion.cls[0].weight)
    dataset = load_dataset(data)
    text, image = model.encoders
    batch = [text.collate([r.caption for r in dataset.train[:4]]), torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8)]
    model.train()
    model(batch).sum().backward()
    assert all(p.grad is None for p in text.parameters()) and not text.training
    params = list(image.parameters())
    assert params[0].grad is None and params[-1].grad is not None  # stem frozen, last stage trains
    frozen_bn = [m for m in image.modules() if isinstance(m, torch.nn.BatchNorm2d) and not m.weight.requires_grad]
    assert frozen_bn and not any(m.training for m in frozen_bn)


def test_a_head_fitted_on_a_finetuned_cache_starts_from_that_backbone(data, tmp_path):
    """--init-head from a head fitted on `<encoder>_ft`: the backbone starts as the fine-tuned one
    whose features the head was fitted on, not the base weights; a cache rebuilt since or a
    replaced weights file is refused by name."""
    import torch
    from safetensors.torch import save_file

    from featcache.stage1.build import extract_features
    from featcache.encoders.models import create_encoder
    from featcache.encoders.registry import get_cfg
    from featcache.stage2.experiment import Split, fit_eval, load_features, save_run
    from heads.config import HeadConfig

    dataset, cache = load_dataset(data), tmp_path / "cache"
    fast = dict(pretrained=False, image_size=32, batch_size=8, threads=1, num_workers=0, progress=False,
                log=lambda m: None)
    extract_features(dataset, "efficientnet_lite0", cache=cache, adapt_epochs=1, adapt_lr=1e-3, **fast)
    extract_features(dataset, "minilm_l6", cache=cache, **fast)
    features = load_features(cache, ["efficientnet_lite0_ft", "minilm_l6"], dataset)
    result = fit_eval(features, Split.of(dataset), HeadConfig(fusion="late", width=32, epochs=1, bf16=False))
    run = save_run(result, tmp_path / "head", dataset.label_space)
    cfg, order, net, weights = with_init_head(replace(CFG, init_head=str(run)), 18)
    tuned_file = cache / "efficientnet_lite0_ft.safetensors"
    assert order == ["efficientnet_lite0", "minilm_l6"] and weights == {"efficientnet_lite0": tuned_file}
    image = build_model(cfg, 18, order, net, weights).encoders[0]
    tuned = load_file(str(tuned_file))
    assert tuned and all(torch.equal(v, tuned[k]) for k, v in image.state_dict().items() if k in tuned)

    other = create_encoder(replace(get_cfg("efficientnet_lite0"), input_size=32), pretrained=False)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(tuned_file))
    with pytest.raises(ValueError, match="efficientnet_lite0_ft.safetensors: not the file"):
        with_init_head(replace(CFG, init_head=str(run)), 18)
    saved = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**saved, "fingerprints": {**saved["fingerprints"],
                                                                            "efficientnet_lite0_ft": "0" * 16}}))
    with pytest.raises(ValueError, match=r"efficientnet_lite0_ft.h5 holds fingerprint .*\(fit-head\)"):
        with_init_head(replace(CFG, init_head=str(run)), 18)


def test_freeze_bn_keeps_statistics_while_weights_train_and_image_lr_is_its_own(data, tmp_path):
    import torch

    cfg = replace(CFG, freeze_bn=True, image_lr=1e-5, epochs=1, max_steps=2)
    run = train(cfg, data, tmp_path, run_name="bn", threads=1, log=lambda m: None)
    model = build_model(cfg, 18, [cfg.image_encoder, cfg.text_encoder])
    before = model.state_dict()
    after = load_file(str(next(run.glob("**/model.safetensors"))))
    image = [k for k in before if k.startswith("encoders.0.")]
    stats = [k for k in image if k.endswith(("running_mean", "running_var"))]
    moved = [k for k in image if k.endswith("weight") and not torch.equal(before[k], after[k])]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats) and moved
    # the optimizer's groups: the image backbone at image_lr, the rest at lr
    saved = torch.load(next(run.glob("**/optimizer.pt")), weights_only=True)["optimizer"]["param_groups"]
    assert sorted(g["lr"] for g in saved) == [1e-5, cfg.lr]


def test_an_unreadable_photo_is_named_with_its_csv_row(data, tmp_path):
    import shutil

    from featcache.data import DataError

    root = Path(shutil.copytree(data, tmp_path / "data"))
    victim = load_dataset(root).train[5]
    (root / "data" / victim.image_id).write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=rf"{victim.image_id}.*\(train.csv line {victim.line}, ImageID {victim.image_id}\)"):
        train(replace(CFG, epochs=1), root, tmp_path / "runs", run_name="bad", threads=1, num_workers=0,
                  log=lambda m: None)


def test_cosine_schedule_warms_up_peaks_and_decays_to_zero():
    f = [lr_factor("cosine", s, 200) for s in range(200)]
    assert f[0] == 0.1 and f[9] == 1.0  # 5% warm-up: 10 steps
    assert all(a >= b for a, b in zip(f[9:], f[10:])) and f[-1] < 1e-3
    assert {lr_factor("constant", s, 200) for s in range(200)} == {1.0}
    with pytest.raises(ValueError, match="schedule"):
        replace(CFG, schedule="step")


def test_ema_run_saves_the_average_and_resumes_it(data, tmp_path, monkeypatch):
    cfg = replace(CFG, ema_decay=0.999)
    ema = train(cfg, data, tmp_path, run_name="ema", threads=1, log=lambda m: None)
    start = build_model(cfg, 18, [cfg.image_encoder, cfg.text_encoder]).state_dict()
    last = load_file(str(latest_checkpoint(ema) / "model.safetensors"))  # the last step's weights
    saved = load_file(str(ema / "model.safetensors"))

    def moved(w):  # trained tensors only: the head's standardisation buffers are set from data, not trained
        return sum(float((w[k] - start[k]).norm()) for k in start if k.endswith(("weight", "bias")))

    # 9 steps at decay 0.999 keep ~99% of the start; the run validates and saves that average
    assert 0 < moved(saved) < 0.05 * moved(last)
    assert json.loads((ema / "config.json").read_text())["config"]["ema_decay"] == 0.999
    cut = cut_after_epoch_1(cfg, data, tmp_path, "ema-cut", monkeypatch)
    train(None, None, resume=cut, threads=1, log=lambda m: None)
    resumed = load_file(str(cut / "model.safetensors"))  # the average, carried through the checkpoint
    assert max(float((saved[k].double() - resumed[k].double()).abs().max()) for k in saved) < 1e-5
    with pytest.raises(ValueError, match="ema_decay"):
        replace(CFG, ema_decay=1.0)


def test_train_fraction_trains_on_the_share_fit_head_uses(data, tmp_path):
    from featcache.stage2.experiment import Split

    run = train(replace(CFG, epochs=1, max_steps=1, train_fraction=0.5), data, tmp_path, run_name="half", threads=1,
                    log=lambda m: None)
    saved = json.loads((run / "config.json").read_text())
    share = Split.of(load_dataset(data)).share(0.5)
    assert saved["train_rows"] == len(share.ids_train) < len(Split.of(load_dataset(data)).ids_train)
    assert saved["validation_rows"] == len(share.ids_val) and saved["config"]["train_fraction"] == 0.5
    for bad in (0.0, 1.2):
        with pytest.raises(ValueError, match=r"train_fraction=.*: must be in \[0.001, 1.0\] \(E2EConfig\)"):
            replace(CFG, train_fraction=bad)


@pytest.mark.parametrize("keep, kept", [(("last",), [3]), (("best",), [2]), (("best", "last"), [2, 3]),
                                        (("all",), [1, 2, 3])])
def test_keep_chooses_the_checkpoints_left_when_a_run_finishes(tmp_path, keep, kept):
    from featcache.e2e.checkpoints import prune

    history = [{"epoch": 1, "val_map": 0.5}, {"epoch": 2, "val_map": 0.7}, {"epoch": 3, "val_map": 0.6}]
    for epoch in (1, 2, 3):  # each epoch writes its checkpoint, then prunes
        (tmp_path / "checkpoints" / f"epoch-{epoch}").mkdir(parents=True)
        prune(tmp_path, {"epoch": epoch, "history": history[:epoch]}, keep, finished=False)
        assert (tmp_path / "checkpoints" / f"epoch-{epoch}").exists()  # the latest stays while training: resume needs it
    prune(tmp_path, {"epoch": 3, "history": history}, keep, finished=True)
    assert sorted(int(p.name.split("-")[1]) for p in (tmp_path / "checkpoints").iterdir()) == kept

