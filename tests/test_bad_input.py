"""Every command, given a user's mistake, exits with code 2 and a one-line reason: never a Python
traceback. Options are checked when parsed, before any work (a wrong --epochs never trains)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cli import app
from featcache.data.synth import make_dataset


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("bad")
    good = make_dataset(base / "good", 16, 4, seed=0, image_size=16)
    listed = make_dataset(base / "listed", 16, 4, seed=0, image_size=16)
    (listed / "labels.json").write_text("[1, 2, 3]")
    folder = make_dataset(base / "folder", 16, 4, seed=0, image_size=16)
    (folder / "train.csv").unlink()
    (folder / "train.csv").mkdir()
    import torch

    torch.save({"embeddings.word_embeddings.weight": torch.zeros(10, 7)}, base / "wrong.pt")  # another model's tensor
    return {"good": good, "listed": listed, "folder": folder, "base": base}


EXTRACT = ["extract", "--encoder", "minilm_l6", "--random-init", "--cache", "{base}/cache"]
CASES = [
    (["fit-head", "--data", "{good}", "--encoders", "a", "--epochs", "-1"], "epochs=-1: must be in [1, 100000]"),
    (["fit-head", "--data", "{good}", "--encoders", "a", "--epochs", "0"], "epochs=0"),
    (["fit-head", "--data", "{good}", "--encoders", "a", "--batch-size", "0"], "batch_size=0"),
    (["fit-head", "--data", "{good}", "--encoders", "a", "--dropout", "1.5"], "dropout=1.5: must be in [0.0, 0.99]"),
    (["fit-head", "--data", "{good}", "--encoders", "a", "--train-fraction", "0"], "train_fraction=0.0"),
    (["ablate", "--data", "{good}", "--candidates", "a", "--seeds", "0"], "seeds=0"),
    (["learning-curve", "--data", "{good}", "--encoders", "a", "--seeds", "0"], "seeds=0"),
    (["finetune", "--epochs", "0"], "epochs=0"),
    (["finetune", "--device", "gpu"], "device='gpu': expected auto, cpu, cuda or cuda:N"),
    ([*EXTRACT, "--data", "{good}", "--batch-size", "100000000"], "batch_size=100000000"),
    ([*EXTRACT, "--data", "{good}", "--device", "cuda:99"], "--device cuda:99: this machine has 0 CUDA GPUs"),
    ([*EXTRACT, "--data", "{good}", "--backend", "tensorrt"], "backend='tensorrt': choose from auto, torch, openvino"),
    ([*EXTRACT, "--data", "{good}", "--precision", "fp16"], "fp16 is for GPUs"),
    ([*EXTRACT, "--data", "{listed}"], "labels.json: expected a non-empty JSON object"),
    ([*EXTRACT, "--data", "{folder}"], "train.csv: not a regular file (a directory)"),
    (["extract", "--encoder", "minilm_l6", "--weights", "{base}/wrong.pt", "--data", "{good}", "--cache", "{base}/cache",
      "--backend", "torch"], "wrong.pt does not fit the model"),
    (["fit-head", "--encoders", "nothere", "--data", "{good}", "--cache", "{base}/cache"], "nothere"),
    (["make-data", "{base}/made", "--n-train", "0"], "n_train=0"),
    # an output directory onto an input or a file: refused before any work, nothing written over
    (["learning-curve", "--encoders", "a", "--data", "{good}", "--cache", "{base}/cache", "--out", "{good}"],
     "{good}: is an input of this command"),
    (["learning-curve", "--encoders", "a", "--data", "{good}", "--cache", "{base}/cache", "--out", "{base}/cache"],
     "{base}/cache: is an input of this command"),
    (["learning-curve", "--encoders", "a", "--data", "{good}", "--out", "{good}/train.csv/curve"],
     "{good}/train.csv/curve: {good}/train.csv is a file, not a directory"),
    (["report", "--results", "{base}/results.parquet", "--runs", "{base}", "--out", "{good}/train.csv"],
     "{good}/train.csv: is a file, not a directory"),
    (["report", "--results", "{base}/results.parquet", "--runs", "{base}", "--out", "{base}"],
     "{base}: is an input of this command"),
]


@pytest.mark.parametrize("args, says", CASES, ids=[" ".join(a[:1] + a[-2:]) for a, _ in CASES])
def test_a_mistake_exits_2_with_its_reason_and_no_traceback(roots, args, says):
    result = CliRunner().invoke(app, [a.format(**roots) for a in args])
    text = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert result.exit_code == 2, (result.exit_code, text, result.exception)
    assert says.format(**roots) in text and "error" in text.lower() and "Traceback" not in text, text
