"""Size, speed and compute of every encoder, fitted head and exported model: the numbers behind a
size-budget choice.

One row per model: parameters, size of the saved weights (safetensors, fp32 and fp16), input size,
batch-1 latency (median and IQR), throughput at each batch size and FLOPs per item. Timing is
torch.utils.benchmark's adaptive_autorange (its block-size estimate doubles as warm-up), FLOPs are
torch.utils.flop_counter (matmuls and convolutions, 2 FLOPs per multiply-add), tables are polars.
Size and speed do not depend on the weights' values, so an encoder whose weights are not on this
machine is measured with random init and marked so. Weights are fp32; a head runs as it predicts
(with bf16 autocast when its config says so). An exported model (featcache export) runs as it
will on the device: OpenVINO on the CPU, with as many threads as torch gets here, fed what its own
predictor prepares; its size is its directory on disk, and its validation F1 is measured from it.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import polars as pl
import torch
from safetensors.torch import save_model
from torch import nn

# torch.utils.benchmark imports the C++ extension builder, which warns "No CUDA runtime is found"
# on any CPU machine with a CUDA_HOME; nothing here builds extensions, so the warning is only noise.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
from torch.utils.benchmark import Timer  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count  # noqa: E402

from featcache.outputs import replacing, write_text
from featcache.study.config import BenchConfig
from featcache.tables import render

MB = 1e6  # decimal megabytes, as a file manager and a "100 MB" limit count them


# --- measurements ---------------------------------------------------------------------------------

def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def saved_mb(module: nn.Module, dtype: torch.dtype = torch.float32) -> float:
    """Size of the module's weights saved with safetensors in `dtype` (save_model drops tied copies)."""
    module = copy.deepcopy(module).to(dtype)  # a copy: casting in place and back would round fp32 weights
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "weights.safetensors")
        save_model(module, path)
        return os.path.getsize(path) / MB


def _to(batch, device: str):
    """Image encoders take a tensor, text encoders a dict of tensors, heads a list of tensors and
    end-to-end models a list of both."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    return {k: _to(v, device) for k, v in batch.items()} if isinstance(batch, dict) else [_to(x, device) for x in batch]


def time_call(fn, cfg: BenchConfig):
    """A torch.utils.benchmark Measurement of fn() (.median, .iqr in seconds) under cfg.threads."""
    with torch.inference_mode():
        timer = Timer("fn()", globals={"fn": fn}, num_threads=cfg.threads)
        return timer.adaptive_autorange(threshold=0.1, min_run_time=cfg.min_run_time, max_run_time=cfg.max_run_time)


# torch's FLOP table knows the CUDA attention kernels but not the CPU one that BERT's SDPA uses here.
_CPU_SDPA = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *a, **kw: sdpa_flop_count(q, k, v)}


def flops(fn) -> int:
    with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=_CPU_SDPA) as counter:
        fn()
    return counter.get_total_flops()


def measure(module: nn.Module, make_batch, cfg: BenchConfig) -> dict:
    """Everything but the name: make_batch(batch_size) gives forward's input."""
    row = {"params": param_count(module), "size_mb": saved_mb(module), "size_mb_fp16": saved_mb(module, torch.float16)}
    module = module.to(cfg.device).eval()
    one = _to(make_batch(1), cfg.device)
    row["gflops"] = flops(lambda: module(one)) / 1e9
    m1 = time_call(lambda: module(one), cfg)
    row["latency_ms"], row["latency_iqr_ms"], row["latency_samples"] = m1.median * 1e3, m1.iqr * 1e3, len(m1.times)
    for n in cfg.batch_sizes:
        batch = _to(make_batch(n), cfg.device)
        row[f"throughput_b{n}"] = 1 / m1.median if n == 1 else n / time_call(lambda: module(batch), cfg).median
    return row


# --- what gets measured ---------------------------------------------------------------------------

def encoder_row(name: str, cfg: BenchConfig) -> dict:
    from featcache.encoders.models import create_encoder
    from featcache.encoders.registry import get_cfg
    from featcache.encoders.weights import weights_available

    real = weights_available(get_cfg(name)) != "-"
    enc = create_encoder(name, pretrained=real)
    return {"model": name, "kind": "encoder", "weights": "real" if real else "random-init", "input_size": enc.describe_input(),
            **measure(enc, enc.example_batch, cfg)}


def run_row(run_dir: Path, cfg: BenchConfig, runs: Path = Path("runs")) -> dict:
    """A run's model as it predicts (featcache.runs.kinds): a fitted head takes cached features, an
    end-to-end model an image and a caption through its encoders, then its head."""
    from featcache.runs.errors import RunError
    from featcache.runs.kinds import open_run

    name = run_dir.relative_to(runs).as_posix() if run_dir.is_relative_to(runs) else run_dir.name
    try:
        run = open_run(run_dir)
        model = run.model()
    except RunError as e:  # as an unloadable head: a ValueError naming the run, which the commands report
        raise ValueError(str(e)) from None
    return {"model": name, "kind": run.label, "weights": run.weights, "input_size": run.input_size(model),
            **measure(model, lambda n: run.example(model, n), cfg)}


def export_row(export_dir: Path, cfg: BenchConfig, runs: Path = Path("runs"), data: Path | None = None) -> dict:
    """An exported model: size of its files, OpenVINO latency and throughput with cfg.threads
    threads, and its validation F1: measured now from the exported model on its run's validation
    rows with `data`, else as export measured it the same way when it wrote the model. Its size is
    what it is whatever the precision, so size_mb_fp16 repeats it."""
    from featcache.data import load_dataset
    from featcache.deploy.exported import ExportedModel, model_mb, score_on_validation

    if cfg.device != "cpu":
        raise ValueError(f"{export_dir}: an exported model runs on the CPU (OpenVINO); benchmark it with --device cpu")
    name = export_dir.relative_to(runs).as_posix() if export_dir.is_relative_to(runs) else export_dir.name
    model = ExportedModel.load(export_dir, threads=cfg.threads)
    meta, one = model.meta, model.prep.example(1)
    sizes = [f"3x{v.shape[2]}x{v.shape[3]}" if v.ndim == 4 else f"{v.shape[1]} tokens"
             for k, v in one.items() if not k.startswith("attention_mask")]
    m1, mb = time_call(lambda: model.infer(one), cfg), model_mb(export_dir)
    row = {"model": name, "kind": "export", "weights": f"{meta['format']} {meta['precision']}", "input_size": " + ".join(sizes),
           "params": meta["params"], "size_mb": mb, "size_mb_fp16": mb, "gflops": None,
           "latency_ms": m1.median * 1e3, "latency_iqr_ms": m1.iqr * 1e3, "latency_samples": len(m1.times)}
    for n in cfg.batch_sizes:
        batch = model.prep.example(n)
        row[f"throughput_b{n}"] = 1 / m1.median if n == 1 else n / time_call(lambda: model.infer(batch), cfg).median
    scores = score_on_validation(model, load_dataset(data))[0] if data is not None else meta.get("validation") or {}
    return row | {"sample_f1": scores.get("sample_f1"), "tuned_out_of_fold": scores.get("tuned_out_of_fold")}


def find_runs(runs: Path, which: str) -> list[Path]:
    """The runs `--heads` selects: 'all', 'none' or comma-separated run ids (paths under runs/,
    nested ones too) of runs with a model (featcache.runs.catalog.list_runs: fitted heads, finished
    end-to-end runs) and of exported models under runs/ (featcache export)."""
    if which == "none":
        return []
    from featcache.deploy.exported import list_exports
    from featcache.runs.catalog import list_runs

    found = list_runs(runs, say=lambda m: print(m, file=sys.stderr)) + list_exports(runs)
    if which == "all":
        return found
    wanted = [Path(runs) / w for w in which.split(",")]
    missing = [str(w) for w in wanted if w not in found]
    if missing:
        raise FileNotFoundError(f"no fitted head, end-to-end model or export in {', '.join(missing)}")
    return wanted


def benchmark(encoders: list[str], run_dirs: list[Path], cfg: BenchConfig, runs: Path = Path("runs"),
              progress=None, data: Path | None = None) -> pl.DataFrame:
    """One row per encoder name and run directory (an export directory too: `data` re-measures its F1)."""
    from featcache.deploy.exported import EXPORT_FILE

    if not encoders and not run_dirs:
        raise ValueError("nothing to benchmark: no encoders and no fitted heads")
    before, rows = torch.get_num_threads(), []
    torch.set_num_threads(cfg.threads)  # the Timer sets it for timed code; this covers warm-up and FLOPs too
    try:
        for item in [*encoders, *run_dirs]:
            if progress:
                progress(str(item))
            if isinstance(item, str):
                rows.append(encoder_row(item, cfg))
            else:
                exported = (item / EXPORT_FILE).is_file()
                rows.append(export_row(item, cfg, runs, data) if exported else run_row(item, cfg, runs))
    finally:
        torch.set_num_threads(before)
    return pl.DataFrame(rows).with_columns(params_m=pl.col("params") / 1e6)


def run_benchmark(cfg: BenchConfig, save: Path | None = None, csv: Path | None = None, progress=None,
                  data: Path | None = None) -> tuple[pl.DataFrame, dict]:
    """`benchmark`: cfg.encoders 'all' (the aliases), 'none' or comma-separated names (any registry
    name: timm:/hf: too); cfg.heads 'all', 'none' or runs by directory or id. Writes the JSON to
    `save` and the table to `csv` when given; `data` re-measures the exports' validation F1 on it."""
    from featcache.encoders.registry import get_cfg, list_aliases
    from featcache.runs.catalog import find_run

    encoders, heads, runs = cfg.encoders, cfg.heads, cfg.runs
    if heads not in ("all", "none"):  # ids or directories, as every command takes a run
        found = [find_run(h, runs) for h in heads.split(",") if h]
        heads = ",".join(d.relative_to(runs).as_posix() if d.is_relative_to(runs) else str(d) for d in found)
    names = list_aliases() if encoders == "all" else [] if encoders == "none" else [n for n in encoders.split(",") if n]
    for name in names:
        get_cfg(name)  # an unknown name: UnknownEncoder, before anything is measured
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {cfg.device} but torch sees no CUDA device")
    run_dirs = find_runs(runs, heads)
    if not names and not run_dirs:
        raise ValueError(f"nothing to benchmark: no encoders selected and no fitted heads under {runs}")
    header = cfg.header()  # before measuring: the machine's load as the run starts
    df = benchmark(names, run_dirs, cfg, runs, progress=progress, data=data)
    doc = to_json(df, header)
    if save:
        save.parent.mkdir(parents=True, exist_ok=True)
        write_text(save, json.dumps(doc, indent=1))
    if csv:
        with replacing(csv) as tmp:
            df.write_csv(tmp)
    return df, doc


# --- output ---------------------------------------------------------------------------------------

COLUMNS = ["model", "kind", "weights", "params_m", "size_mb", "size_mb_fp16", "input_size", "gflops", "latency_ms",
           "latency_iqr_ms", "latency_samples", "sample_f1", "tuned_out_of_fold"]


def to_json(df: pl.DataFrame, header: dict) -> dict:
    """{"header": ..., "rows": [...]}: throughput as {batch size: items/s} per row."""
    rows = []
    for r in df.to_dicts():
        rows.append({k: v for k, v in r.items() if not k.startswith("throughput_b")}
                    | {"throughput": {k.removeprefix("throughput_b"): v for k, v in r.items() if k.startswith("throughput_b")}})
    return {"header": header, "rows": rows}


def load_json(path: Path) -> pl.DataFrame:
    """A saved benchmark JSON back into the flat table (the report's input)."""
    rows = json.loads(Path(path).read_text())["rows"]
    return pl.DataFrame([{k: v for k, v in r.items() if k != "throughput"}
                         | {f"throughput_b{n}": t for n, t in r["throughput"].items()} for r in rows])


def table(df: pl.DataFrame, header: dict | None = None, markdown: bool = True) -> str:
    """The table as text (Markdown for docs, else the commands' one table style), preceded by the header."""
    cols = [c for c in COLUMNS if c in df.columns] + [c for c in df.columns if c.startswith("throughput_b")]
    shown = df.select(cols).with_columns(pl.selectors.float().round_sig_figs(3))
    if markdown:
        with pl.Config(tbl_formatting="MARKDOWN", tbl_hide_column_data_types=True, tbl_hide_dataframe_shape=True,
                       tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=80, tbl_width_chars=1000, fmt_float="full"):
            text = str(shown)
    else:
        text = render(shown, formats={c: "g" for c in shown.columns if shown[c].dtype.is_float()})
    if header is None:
        return text
    units = "; ".join(f"{k}: {v}" for k, v in header["units"].items())
    return (f"device {header['device']}, dtype {header['dtype']}, torch {header['torch']}, threads {header['threads']}, "
            f"load average {header['load_avg_1m']:.1f} at start\n"
            f"units: {units}\n\n{text}")

