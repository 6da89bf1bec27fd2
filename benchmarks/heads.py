"""Stage 2 against its arithmetic bound: the two-encoder study (21 head fits) on the real slice.

    .venv/bin/python benchmarks/heads.py [--cache cache] [--data ../shared/data/comp5329] [--seeds 3] [--jobs N]

Runs `cli.py ablate --candidates efficientnet_lite0,minilm_l6 --seeds 3` as a user would (a fresh
process, caches already extracted: `cli.py extract --encoder X --cache cache`; --jobs default: the
cores) and prints, in one run:
- its wall time, and its head-training time (the fits' own clocks, from the study's raw.parquet);
- the bound for the whole machine: every fit's matmul FLOPs (torch's FlopCounterMode over one
  training step and one validation pass of the same head, times the steps and epochs that fit
  ran) over the best matmul rate of all cores: the faster of bf16 and fp32, and of one process
  per core (one thread each, as the study's workers run) and one process on all cores;
- the wall's ratio to it (target <= 2x) and the best out-of-fold F1 (target >= 0.8735 on the slice).
The load average is printed: another process on the cores slows every figure.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from heads.losses import LOSSES  # noqa: E402
from heads.train import HeadConfig, HeadNet  # noqa: E402


def matmul_rate(dtype: torch.dtype, threads: int, seconds: float = 1.0) -> float:
    """FLOP/s of a head's first layer: [512, 1664] @ [1664, 512], the shape that dominates a fit."""
    torch.set_num_threads(threads)
    a, b = torch.randn(512, 1664, dtype=dtype), torch.randn(1664, 512, dtype=dtype)
    a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    return n * 2 * 512 * 1664 * 512 / (time.perf_counter() - t0)


def _one_thread(dtype, seconds, _):
    return matmul_rate(dtype, 1, seconds)


def machine_rate(dtype: torch.dtype, cores: int, seconds: float = 1.0) -> dict[str, float]:
    """The whole machine's matmul rate two ways: one single-threaded process per core at once
    (summed), and one process on every core."""
    from functools import partial

    with multiprocessing.get_context("fork").Pool(cores) as pool:
        per_core = sum(pool.map(partial(_one_thread, dtype, seconds), range(cores)))
    return {f"{cores} processes x 1 thread": per_core, f"1 process x {cores} threads": matmul_rate(dtype, cores, seconds)}


def head_flops(cfg: HeadConfig, dims: list[int], num_labels: int) -> tuple[float, float]:
    """(FLOPs of one training step of cfg.batch_size rows, FLOPs per validation row), counted by torch."""
    net = HeadNet(dims, num_labels, cfg)
    x = net.prepare([torch.randn(cfg.batch_size, d) for d in dims])
    y = torch.zeros(cfg.batch_size, num_labels)
    with FlopCounterMode(display=False) as train:
        LOSSES[cfg.loss](net.logits(x), y).backward()
    net.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as infer:
        net.logits(x)
    return train.get_total_flops(), infer.get_total_flops() / cfg.batch_size


def study(cache: Path, data: Path, seeds: int, out: Path, jobs: int) -> tuple[float, pl.DataFrame]:
    cmd = [sys.executable, str(ROOT / "cli.py"), "ablate", "--candidates", "efficientnet_lite0,minilm_l6",
           "--seeds", str(seeds), "--data", str(data), "--cache", str(cache), "--runs", str(out), "--out", str(out / "study"),
           "--jobs", str(jobs)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0, pl.read_parquet(out / "study" / "raw.parquet")


def bound_seconds(raw: pl.DataFrame, dims: dict[str, int], num_labels: int, rate: float) -> float:
    """Seconds the fits' matmuls need at `rate`: each fit's steps and validation passes as it ran them."""
    flops, cache = 0.0, {}
    for r in raw.iter_rows(named=True):
        cfg = HeadConfig(**{k: v for k, v in json.loads(r["config"]).items() if k in HeadConfig.__dataclass_fields__})
        key = (tuple(r["encoders"]), cfg.fusion, cfg.batch_size)
        if key not in cache:
            cache[key] = head_flops(cfg, [dims[e] for e in r["encoders"]], num_labels)
        step, per_row = cache[key]
        flops += r["steps_run"] * step + r["epochs_run"] * r["n_val"] * per_row
    return flops / rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=ROOT / "cache")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/comp5329")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=None, help="The study's --jobs (default: the cores).")
    args = ap.parse_args()
    from featcache.encoders.planner import cpus

    cores = cpus()
    jobs = args.jobs or cores
    print(f"load average {os.getloadavg()[0]:.2f} on {cores} cores; the study runs {jobs} fits at a time, "
          f"each on {HeadConfig().threads} thread")
    rates = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        for how, r in machine_rate(dtype, cores, 0.05 if name == "bf16" and matmul_rate(dtype, 1, 0.05) < 5e9 else 1.0).items():
            rates[f"{name}, {how}"] = r
    best = max(rates, key=rates.get)
    print("matmul rate, 512x1664 @ 1664x512: " + "; ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in rates.items())
          + f" -> the bound uses {best}")
    names = ("efficientnet_lite0", "minilm_l6")
    if not all((args.cache / f"{n}.h5").exists() for n in names) or not (args.data / "train.csv").exists():
        sys.exit(f"needs {args.data} and the caches {', '.join(names)} in {args.cache}: "
                 f"python cli.py extract --encoder NAME --data {args.data} --cache {args.cache}")
    from featcache.data import load_dataset
    from stores.features import open_features

    dims = {n: open_features(args.cache, n).dim for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        wall, raw = study(args.cache, args.data, args.seeds, Path(tmp), jobs)
        table = pl.read_parquet(Path(tmp) / "study" / "table.parquet")
    train = raw["fit_seconds"].sum()
    num_labels = load_dataset(args.data).label_space.num_labels
    bound = bound_seconds(raw, dims, num_labels, rates[best])
    print(f"\nstudy: ablate --candidates {','.join(names)} --seeds {args.seeds} --jobs {jobs}: {len(raw)} fits on "
          f"{raw['n_val'][0]} validation rows")
    print(f"{'':<44} {'seconds':>8}")
    print(f"{'wall (a fresh process, all in)':<44} {wall:>8.1f}")
    print(f"{'head training (the fits clocks, summed)':<44} {train:>8.1f}")
    print(f"{'bound: matmul FLOPs / the machine rate':<44} {bound:>8.1f}")
    first = table.row(0, named=True)
    print(f"\nwall / bound: {wall / bound:.2f}x (target <= 2x); best out-of-fold F1 {first['tuned_out_of_fold']:.4f} "
          f"({first['encoders']} / {first['fusion']}; target >= 0.8735)")


if __name__ == "__main__":
    main()
