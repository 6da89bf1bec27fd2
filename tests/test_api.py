"""The Python API and the commands around runs: a saved run predicts new photos and captions as
`predict` does, `runs` lists what was made, a run's config replays it, tracking writes events, and
every command has --help and (where it produces a result) a --json that parses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

import featcache as fc
from cli import app
from featcache.data import load_dataset
from featcache.stage1.extract import extract

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"width": 32, "epochs": 2, "batch_size": 128}


def invoke(*args) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def caches(synth_root, tmp_path_factory) -> Path:
    """Random-init lite0 (32 px) and MiniLM caches of the generated data, on torch fp32 (the path
    the predictor recomputes features on)."""
    cache = tmp_path_factory.mktemp("api_cache")
    dataset = load_dataset(synth_root)
    fast = dict(pretrained=False, batch_size=64, threads=1, num_workers=0, progress=False, log=lambda m: None,
                backend="torch", precision="fp32")
    extract(dataset, "efficientnet_lite0", cache, image_size=32, **fast)
    extract(dataset, "minilm_l6", cache, **fast)
    return cache


@pytest.fixture(scope="module")
def fitted(synth_root, caches, tmp_path_factory):
    runs = tmp_path_factory.mktemp("api_runs")
    model = fc.fit_head(synth_root, ["efficientnet_lite0", "minilm_l6"], cache=caches, runs=runs, **SMALL)
    return model, runs


def test_the_api_predicts_a_new_photo_and_caption_as_predict_does(synth_root, caches, fitted, tmp_path):
    model, runs = fitted
    dataset = load_dataset(synth_root)
    submission = fc.predict(model.run_dir.name, synth_root, tmp_path / "sub.csv", cache=caches, runs=runs)
    expected = pl.read_csv(submission, schema_overrides={"Labels": pl.String})
    rows = dataset.test[:5]
    labels = model.predict([dataset.image_path(r) for r in rows], [r.caption for r in rows])
    # The predictor speaks names; the submission writes them as the data does (COMP5329: ids).
    ids = {name: str(i) for i, name in zip(model.label_ids, model.label_names)}
    assert [" ".join(ids[n] for n in ls) for ls in labels] == expected["Labels"].to_list()[:5]
    assert all(n in dataset.label_space.names for ls in labels for n in ls)
    # The probabilities are the head's on the cached rows: the encoders were rebuilt as extracted.
    from featcache.stage2.experiment import load_features, load_head_run

    head, _, config = load_head_run(model.run_dir)
    features = load_features(caches, config["encoders"], dataset)
    cached = head.predict_proba([fs.rows([r.image_id for r in rows]) for fs in features])
    from PIL import Image

    photos = [Image.open(dataset.image_path(r)) for r in rows]  # PIL images work as well as paths
    assert np.abs(model.predict_proba(photos, [r.caption for r in rows]) - cached).max() < 1e-4
    assert 0 < model.metrics["tuned_out_of_fold"] <= 1 and fc.load(model.run_dir).label_ids == model.label_ids


def test_every_file_of_a_run_gets_the_same_mode(fitted):
    from featcache.outputs import FILE_MODE

    model, _ = fitted
    assert {p.stat().st_mode & 0o777 for p in model.run_dir.iterdir()} == {FILE_MODE}


def test_the_api_refuses_rows_of_unequal_length_and_unknown_options(synth_root, caches, fitted):
    model, _ = fitted
    with pytest.raises(ValueError, match="2 images and 1 texts"):
        model.predict(["a.jpg", "b.jpg"], ["one caption"])
    with pytest.raises(ValueError, match="unknown option"):
        fc.fit_head(synth_root, ["minilm_l6"], cache=caches, fusoin="late")


def test_importing_featcache_loads_no_torch_until_the_api_is_used():
    code = ("import sys, featcache; print('torch' in sys.modules); featcache.load; featcache.extract; "
            "print('torch' in sys.modules); featcache.Predictor; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120).stdout.split()
    assert out == ["False", "False", "True"]  # the API's names load their modules when first used


def test_runs_lists_the_runs_a_study_made_and_shows_one(synth_root, caches, tmp_path):
    runs = tmp_path / "runs"
    code, out, err = invoke("ablate", "--candidates", "efficientnet_lite0,minilm_l6", "--fusions", "late", "--seeds", 1,
                            "--data", synth_root, "--cache", caches, "--runs", runs, "--json")
    assert code == 0, err
    made = json.loads(out)["runs"]
    code, out, err = invoke("runs", "--runs", runs, "--json")  # as `runs show` and `report` name kinds
    assert code == 0, err
    listed = json.loads(out)["runs"]
    assert sorted(r["run"] for r in listed) == sorted(made) and len(made) == 3  # lite0, MiniLM, the pair
    assert all(0 <= r["tuned_out_of_fold"] <= 1 for r in listed)
    pair = next(r for r in made if "+" in r)
    code, out, err = invoke("runs", "show", pair.split("/")[-1], "--runs", runs, "--json")  # a part of the id
    shown = json.loads(out)
    assert code == 0 and shown["kind"] == "head" and shown["config"]["command"] and shown["config"]["versions"]["torch"]
    assert "metrics.json" in shown["files"]
    code, out, err = invoke("runs", "show", "efficientnet_lite0", "--runs", runs)  # two runs have it
    assert code == 2 and "2 runs under" in err and "Traceback" not in err


def test_replaying_a_runs_config_gives_the_same_metrics(synth_root, caches, fitted):
    model, runs = fitted
    code, out, err = invoke("fit-head", "--config", model.run_dir / "config.json", "--data", synth_root,
                            "--cache", caches, "--runs", runs, "--json")
    assert code == 0, err
    again = json.loads(out)
    assert again["run"] != model.run_dir.name
    for key in ("sample_f1", "tuned_out_of_fold", "map", "best_epoch"):
        assert again[key] == model.metrics[key], key
    replayed = json.loads((Path(again["run_dir"]) / "config.json").read_text())
    assert replayed["head"] == json.loads((model.run_dir / "config.json").read_text())["head"]


def test_ablate_tracks_each_fit_in_tensorboard(synth_root, caches, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("FEATCACHE_TRACK", "tensorboard")  # the environment switches it on, as --track does
    code, out, err = invoke("ablate", "--candidates", "minilm_l6", "--seeds", 1, "--data", synth_root,
                            "--cache", caches, "--runs", tmp_path, "--out", tmp_path / "study", "--json")
    assert code == 0, err
    [logdir] = [p for p in (tmp_path / "study" / "tensorboard").iterdir() if p.is_dir()]
    events = EventAccumulator(str(logdir))
    events.Reload()
    assert "epoch/train_loss" in events.Tags()["scalars"] and len(events.Scalars("epoch/train_loss")) >= 1
    code, _, err = invoke("ablate", "--candidates", "minilm_l6", "--data", synth_root, "--cache", caches,
                          "--runs", tmp_path, "--track", "mlflow")
    assert code == 2 and "--track 'mlflow'" in err


def test_data_comes_from_the_option_or_the_environment(synth_root, monkeypatch):
    monkeypatch.delenv("FEATCACHE_DATA", raising=False)
    code, _, err = invoke("data", "check")
    assert code == 2 and "--data" in err and "FEATCACHE_DATA" in err
    monkeypatch.setenv("FEATCACHE_DATA", str(synth_root))
    code, out, err = invoke("data", "check", "--json")
    assert code == 0 and json.loads(out)["train_rows"] == 400


COMMANDS = ["make-data", "data check", "encoders", "extract", "merge-shards", "benchmark", "report", "finetune",
            "fit-head", "ablate", "learning-curve", "predict", "export", "demo", "runs", "runs show"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_and_json(command):
    code, out, _ = invoke(*command.split(), "--help")
    assert code == 0 and "--json" in out


def test_result_commands_print_json_that_parses(synth_root, caches, fitted, tmp_path):
    model, runs = fitted
    cases = [
        ("make-data", tmp_path / "gen", "--n-train", 20, "--n-test", 4),
        ("encoders",),
        ("encoders", "--search", "resnet18*"),
        ("extract", "--encoder", "minilm_l6", "--random-init", "--data", synth_root, "--cache", caches,
         "--backend", "torch", "--precision", "fp32"),  # warm: the fixture built it
        ("predict", "--run", model.run_dir.name, "--runs", runs, "--data", synth_root, "--cache", caches,
         "--out", tmp_path / "s.csv"),
        ("learning-curve", "--encoders", "minilm_l6", "--fractions", "0.5,1", "--seeds", 1, "--data", synth_root,
         "--cache", caches, "--runs", tmp_path, "--out", tmp_path / "curve"),
        ("benchmark", "--encoders", "none", "--heads", model.run_dir.name, "--runs", runs, "--batch-sizes", "1",
         "--min-run-time", 0.01, "--max-run-time", 0.05),
        ("report", "--runs", runs, "--out", tmp_path / "report"),
    ]
    for case in cases:
        code, out, err = invoke(*case, "--json")
        assert code == 0, (case, err)
        assert isinstance(json.loads(out), dict), case


def test_every_api_name_is_the_api_function_even_beside_featcache_modules():
    import featcache.deploy.export  # noqa: F401
    import featcache.stage1.extract  # noqa: F401  a module of the same package, imported first
    import featcache.stage1.adapt  # noqa: F401
    from featcache import api

    for name in fc.__all__:
        assert getattr(fc, name) is getattr(api, name), name


@pytest.mark.parametrize("example, says, writes", [
    ("quickstart", ["labels (", "ready to submit"], "featcache-quickstart-*/submission.csv"),
    ("table", ["read as", "with label names", "hold-out (50 rows)"], "featcache-table-*/predictions.csv")])
def test_the_examples_run_as_the_readme_says(example, says, writes, tmp_path, monkeypatch):
    monkeypatch.delenv("FEATCACHE_DATA", raising=False)  # generated data, in a folder of this test
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, f"examples/{example}.py"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert all(s in done.stdout for s in says), done.stdout
    assert any(tmp_path.glob(writes))


def test_export_then_predict_with_the_model_alone(synth_root, caches, fitted, tmp_path):
    """The CLI's export writes one model whose submission equals the run's; a budget no precision
    fits is one error line with the sizes."""
    model, runs = fitted
    code, out, err = invoke("export", "--run", model.run_dir.name, "--runs", runs, "--out", tmp_path / "exp",
                            "--precision", "fp32", "--json")
    assert code == 0, err
    meta = json.loads(out)
    assert meta["precision"] == "fp32" and meta["size_mb"] > 0
    code, out, err = invoke("predict", "--model", meta["dir"], "--data", synth_root, "--out", tmp_path / "m.csv", "--json")
    assert code == 0 and json.loads(out)["rows"] == 80, err
    code, out, err = invoke("predict", "--run", model.run_dir.name, "--runs", runs, "--data", synth_root,
                            "--cache", caches, "--out", tmp_path / "r.csv")
    assert (tmp_path / "m.csv").read_text() == (tmp_path / "r.csv").read_text()
    code, _, err = invoke("export", "--run", model.run_dir.name, "--runs", runs, "--out", tmp_path / "tiny",
                          "--budget-mb", 0.01, "--data", synth_root)
    assert code == 2 and "no precision fits the 0.01 MB budget" in err and "Traceback" not in err
    code, _, err = invoke("predict", "--data", synth_root)
    assert code == 2 and "Missing option '--run'" in err

