"""benchmark and report: counts and sizes match the model and the file, the JSON has every column,
and the report picks the best model that fits the budget. Timings are short (min-run-time 0.05 s)."""

from __future__ import annotations

import json
import os

import polars as pl
import pytest
import torch
from safetensors.torch import save_model
from torch import nn
from typer.testing import CliRunner

from cli import app
from featcache.study import benchmark as bm
from featcache.study import report as rp
from stores.results import append_results, read_results

FAST = bm.BenchConfig(threads=1, batch_sizes=(1, 4), min_run_time=0.02, max_run_time=0.1)


class Tied(nn.Module):
    """Two references to one Linear: its weights count (and are stored) once."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(100, 50)
        self.b = self.a
        self.register_buffer("scale", torch.ones(7))

    def forward(self, x):
        return self.b(self.a(x)[:, :50].repeat(1, 2)) * 1.0


def test_params_are_the_parameter_count():
    assert bm.param_count(Tied()) == 100 * 50 + 50  # once, not twice; the buffer is no parameter
    assert bm.param_count(nn.Conv2d(3, 8, 3)) == 3 * 8 * 9 + 8


def test_size_is_the_saved_file(tmp_path):
    m = nn.Sequential(nn.Linear(300, 200), nn.BatchNorm1d(200))
    save_model(m, str(tmp_path / "m.safetensors"))
    assert bm.saved_mb(m) * bm.MB == os.path.getsize(tmp_path / "m.safetensors")
    floats = 300 * 200 + 200 + 4 * 200  # linear + batchnorm weight, bias, running mean and var
    assert floats * 4 < bm.saved_mb(m) * bm.MB < floats * 4 + 4096  # fp32 payload plus a small header
    assert floats * 2 < bm.saved_mb(m, torch.float16) * bm.MB < floats * 2 + 4096
    assert m[0].weight.dtype == torch.float32  # measuring fp16 did not cast the model itself


def test_measure_a_tiny_module():
    row = bm.measure(nn.Linear(64, 32), lambda n: torch.randn(n, 64), FAST)
    assert row["params"] == 64 * 32 + 32
    assert row["gflops"] == pytest.approx(2 * 64 * 32 / 1e9)  # one multiply-add = 2 FLOPs
    assert row["latency_ms"] > 0 and row["latency_iqr_ms"] >= 0
    assert row["throughput_b1"] == pytest.approx(1e3 / row["latency_ms"]) and row["throughput_b4"] > 0


def test_cli_json_has_every_column_per_encoder(tmp_path):
    from featcache.encoders.models import create_encoder
    from featcache.encoders.registry import get_cfg
    from featcache.encoders.weights import weights_available

    names = ["efficientnet_lite0", "minilm_l6"]
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(app, ["benchmark", "--encoders", ",".join(names), "--heads", "none", "--batch-sizes", "1,2",
                                   "--threads", "1", "--min-run-time", "0.05", "--max-run-time", "0.2", "--json", "--save", str(out),
                                   "--csv", str(tmp_path / "bench.csv")])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    assert {"device", "dtype", "torch", "threads", "units"} <= set(doc["header"]) and doc["header"]["threads"] == 1
    assert "FLOPs" in doc["header"]["units"]["compute"]
    rows = {r["model"]: r for r in doc["rows"]}
    assert list(rows) == names
    for name in names:
        r = rows[name]
        assert r["weights"] == ("random-init" if weights_available(get_cfg(name)) == "-" else "real")
        enc = create_encoder(name, pretrained=False)  # same architecture: same count and size as any weights
        assert r["params"] == sum(p.numel() for p in enc.parameters())
        save_model(enc, str(tmp_path / "enc.safetensors"))
        assert r["size_mb"] * bm.MB == os.path.getsize(tmp_path / "enc.safetensors")
        assert r["size_mb_fp16"] < 0.51 * r["size_mb"]
        assert r["latency_ms"] > 0 and set(r["throughput"]) == {"1", "2"} and r["gflops"] > 0.1
    assert rows["efficientnet_lite0"]["input_size"] == "3x224x224"
    back = bm.load_json(out)  # the saved JSON reads back into the flat table the report joins
    assert back["model"].to_list() == names and back["throughput_b2"].min() > 0
    assert (tmp_path / "bench.csv").read_text().startswith("model,kind,weights")


def test_heads_are_found_and_measured_and_an_incomplete_run_is_left_out_by_name(tmp_path, capsys):
    from heads.planted import make_planted
    from heads.train import Head
    from heads.config import HeadConfig

    xs, y = make_planted(64, dims=(32, 16))
    head = Head(HeadConfig(width=8, epochs=1)).fit(xs, y)
    for name in ("concat", "killed"):
        head.save(tmp_path / "ablate" / name)
    (tmp_path / "ablate" / "concat" / "metrics.json").write_text("{}")  # written last by save_run: complete
    (tmp_path / "not-a-run").mkdir()
    dirs = bm.find_runs(tmp_path, "all")
    assert dirs == [tmp_path / "ablate" / "concat"]
    err = capsys.readouterr().err
    assert "left out 1 incomplete runs" in err and "ablate/killed" in err
    with pytest.raises(FileNotFoundError, match="not-a-run"):
        bm.find_runs(tmp_path, "not-a-run")
    df = bm.benchmark([], dirs, FAST, runs=tmp_path)
    row = df.row(0, named=True)
    assert row["model"] == "ablate/concat" and row["kind"] == "head" and row["input_size"] == "32+16 features"
    assert row["params"] == sum(p.numel() for p in Head.load(dirs[0]).net.parameters())


# --- report -------------------------------------------------------------------------------------

ENCODERS = {"efficientnet_lite0": 13.7, "minilm_l6": 90.3, "efficientnet_b4": 70.8}  # fp32 MB


def bench_rows(runs: list[str]) -> pl.DataFrame:
    rows = [{"model": m, "kind": "encoder", "size_mb": mb, "size_mb_fp16": mb / 2, "latency_ms": mb, "params": int(mb * 1e6 / 4)}
            for m, mb in ENCODERS.items()]
    rows += [{"model": r, "kind": "head", "size_mb": 1.0, "size_mb_fp16": 0.5, "latency_ms": 0.1, "params": 250_000}
             for r in runs]
    return pl.DataFrame(rows)


def write_results(path, specs) -> list[str]:
    """specs: (encoders, fusion, f1 per seed); rows through the real results writer."""
    rows = []
    for encoders, fusion, f1s in specs:
        for seed, f1 in enumerate(f1s):
            rows.append({"run": f"ablate/{'+'.join(encoders)}-{fusion}-s{seed}", "encoders": encoders,
                         "head": f"{fusion}/mlp/bce", "fusion": fusion, "seed": seed, "variant": "default",
                         "fit_seconds": 2.0 + seed, "sample_f1": f1,
                         "config": json.dumps({"fusion": fusion, "width": 512, "seed": seed, "threads": 1})})
    append_results(path, rows)
    return [r["run"] for r in rows]


SPECS = [(["efficientnet_lite0_ft"], "concat", [0.80]),  # a fine-tuned cache: its base encoder's size
         (["minilm_l6"], "concat", [0.70]),
         (["efficientnet_lite0", "minilm_l6"], "concat", [0.87, 0.89]),
         (["efficientnet_b4", "minilm_l6"], "gated", [0.90])]


@pytest.mark.parametrize("budget, best, fp16", [(100, "efficientnet_lite0_ft / concat/mlp/bce", False),
                                                (110, "efficientnet_lite0 + minilm_l6 / concat/mlp/bce", False),
                                                (170, "efficientnet_b4 + minilm_l6 / gated/mlp/bce", False),
                                                (90, "efficientnet_b4 + minilm_l6 / gated/mlp/bce", True),
                                                (10, None, False)])
def test_report_picks_the_best_model_under_the_budget(tmp_path, budget, best, fp16):
    runs = write_results(tmp_path / "results.parquet", SPECS)
    cfg = rp.ReportConfig(budget_mb=budget, fp16=fp16)
    t = rp.table1(read_results(tmp_path / "results.parquet"), bench_rows(runs), cfg)
    rows = {r["model"]: r for r in t.iter_rows(named=True)}
    pair = rows["efficientnet_lite0 + minilm_l6 / concat/mlp/bce"]
    assert pair["seeds"] == 2 and pair["f1"] == pytest.approx(0.88) and pair["fit_seconds"] == pytest.approx(2.5)
    scale = 0.5 if fp16 else 1.0
    assert pair["size_mb"] == pytest.approx((13.7 + 90.3 + 1.0) * scale)  # encoders + head
    assert pair["predict_ms_per_item"] == pytest.approx(13.7 + 90.3 + 0.1)
    assert not rows["minilm_l6 / concat/mlp/bce"]["pareto_size"]  # larger and worse than the lite0 head
    assert rows["efficientnet_lite0_ft / concat/mlp/bce"]["pareto_size"]
    picked = rp.best_under_budget(t)
    assert (picked and picked["model"]) == best
    assert rp.pareto_chart(t, tmp_path / "pareto.png", cfg).stat().st_size > 10_000


def test_seeds_average_refits_replace_and_other_settings_stay_apart(tmp_path):
    write_results(tmp_path / "results.parquet", SPECS[2:3])
    other = read_results(tmp_path / "results.parquet").head(1).with_columns(
        run=pl.lit("ablate/wide"), sample_f1=pl.lit(0.5), config=pl.col("config").str.replace("512", "1024"))
    again = read_results(tmp_path / "results.parquet").head(1).with_columns(sample_f1=pl.lit(0.91))  # seed 0 refitted
    m = rp.models(pl.concat([read_results(tmp_path / "results.parquet"), other, again]))
    assert m["seeds"].to_list() == [2, 1] and m["f1"].to_list() == pytest.approx([(0.91 + 0.89) / 2, 0.5])
    assert m["model"].to_list() == ["efficientnet_lite0 + minilm_l6 / concat/mlp/bce",
                                    "efficientnet_lite0 + minilm_l6 / concat/mlp/bce #2"]


def test_report_names_what_was_not_benchmarked(tmp_path):
    runs = write_results(tmp_path / "results.parquet", SPECS)
    with pytest.raises(ValueError, match="efficientnet_b4"):
        rp.table1(read_results(tmp_path / "results.parquet"), bench_rows(runs).filter(pl.col("model") != "efficientnet_b4"))


def test_report_cli_measures_the_models_it_lacks(tmp_path):
    from heads.planted import make_planted
    from heads.train import Head
    from heads.config import HeadConfig

    runs_dir = tmp_path / "runs"
    runs = write_results(runs_dir / "results.parquet", SPECS[:3])
    xs, y = make_planted(64, dims=(1280, 384))
    for run in runs:
        Head(HeadConfig(width=8, epochs=1)).fit(xs[:2] if "+" in run else xs[:1] if "lite0" in run else xs[1:], y).save(
            runs_dir / run)
    # A final (end-to-end) model, tiny: it enters Table 1 measured whole, encoders included.
    from featcache.e2e.config import E2EConfig
    from featcache.e2e.loop import train
    from featcache.data.synth import make_dataset

    data = make_dataset(tmp_path / "data", n_train=32, n_test=4, seed=0, image_size=32)
    final = train(E2EConfig(image_size=32, pretrained=False, epochs=1, batch_size=8, stats_rows=8, max_steps=1), data,
                  runs_dir, run_name="final", threads=1, log=lambda m: None)
    doc = {"header": {}, "rows": [{k: v for k, v in r.items()} | {"throughput": {"1": 1.0}}
                                  for r in bench_rows([]).to_dicts()]}
    (tmp_path / "bench.json").write_text(json.dumps(doc))
    res = CliRunner().invoke(app, ["report", "--runs", str(runs_dir), "--results", str(runs_dir / "results.parquet"),
                                   "--bench", str(tmp_path / "bench.json"), "--out", str(tmp_path / "out"),
                                   "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "best under 100 MB: efficientnet_lite0_ft / concat/mlp/bce" in res.stdout
    for name in ["table1.md", "table1.csv", "pareto.png"]:
        assert (tmp_path / "out" / name).stat().st_size > 0
    t = pl.read_csv(tmp_path / "out" / "table1.csv")
    head_mb = t.filter(pl.col("model") == "efficientnet_lite0_ft / concat/mlp/bce")["size_mb"][0] - 13.7
    assert head_mb == pytest.approx(bm.saved_mb(Head.load(runs_dir / runs[0]).net))  # measured now, not assumed
    e2e_row = t.filter(pl.col("model").str.starts_with("efficientnet_lite0 + minilm_l6 / e2e"))
    assert len(e2e_row) == 1 and e2e_row["size_mb"][0] * bm.MB == pytest.approx((final / "model.safetensors").stat().st_size,
                                                                              abs=1024)


def test_importing_the_benchmark_prints_no_stray_warning():
    """torch.utils.benchmark warns "No CUDA runtime is found" on a CPU machine with a CUDA_HOME."""
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.run([sys.executable, "-c", "import featcache.study.benchmark"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
