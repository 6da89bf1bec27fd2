"""The demo runs the whole chain and writes every file it names."""

from __future__ import annotations

import polars as pl

from featcache.data import load_dataset
from featcache.study.config import DemoConfig
from featcache.study.demo import run_demo


def test_demo_runs_every_step_and_writes_every_file(tmp_path):
    lines = []
    result = run_demo(DemoConfig(out=tmp_path / "demo", n_train=160, n_test=24, seeds=1, pretrained=False,
                            batch_sizes=(1,)), echo=lines.append)
    files = result["files"]
    for what, path in files.items():
        assert path.exists(), what
    ds = load_dataset(tmp_path / "demo" / "data")
    submission = pl.read_csv(files["submission"], schema_overrides={"Labels": pl.String})
    assert submission["ImageID"].to_list() == [r.image_id for r in ds.test]
    assert submission["Labels"].str.len_chars().min() > 0
    table = result["table"]
    assert set(zip(table["encoders"], table["fusion"])) == {
        ("efficientnet_lite0", "late"), ("minilm_l6", "late"),
        *{("efficientnet_lite0+minilm_l6", f) for f in ("concat", "late", "gated", "bilinear", "attention")}}
    assert 0.0 <= result["test_f1"] <= 1.0
    # The chosen model is the first by the out-of-fold score, not by the in-sample tuned one.
    assert table["tuned_out_of_fold"].is_sorted(descending=True)
    assert files["chosen run"].name.startswith(f"{table['encoders'][0]}-{table['fusion'][0]}-")
    assert any("fusion concat" in line for line in lines) and any("best under" in line for line in lines)
    # A second run finds the caches warm.
    again = []
    run_demo(DemoConfig(out=tmp_path / "demo", n_train=160, n_test=24, seeds=1, pretrained=False, batch_sizes=(1,)),
        echo=again.append)
    assert sum(line.endswith("warm cache, model not loaded") for line in again) == 2, [line for line in again if "cache" in line]
