"""A 1,000,000-row table read, validated and hashed by featcache, against polars reading it alone.

    python benchmarks/data.py                 # 1M rows, CSV and Parquet, 3 runs each
    python benchmarks/data.py --rows 100000

The table is generated (nested image paths, captions, label names joined by '|'); its images do
not exist, so this measures the table alone: `load_dataset` parses it (polars), checks every
column (paths, duplicates, labels), builds the label space and the order-free hash of the rows
that the fingerprint starts from. Target (issue 26): at most 3x polars' own read, in bounded
memory. Each measurement runs in a fresh process, so its peak memory is its own. Besides the
wall-clock seconds (the target's), the CPU seconds (user + system, all threads) are reported: on a
shared machine the wall clock swings with other jobs, the CPU seconds less.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NAMES = ["person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
         "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse"]


def make(path: Path, rows: int) -> None:
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(0)
    idx = np.arange(rows)
    words = np.array(["a", "dog", "on", "the", "street", "man", "riding", "red", "bus", "near", "park", "two"])
    captions = [" ".join(words[rng.integers(0, len(words), 10)]) for _ in range(rows)]
    k = rng.integers(1, 4, rows)
    labels = ["|".join(np.array(NAMES)[rng.choice(len(NAMES), n, replace=False)]) for n in k]
    frame = pl.DataFrame({"path": [f"photos/{i % 997}/{i // 997}/IMG_{i}.jpg" for i in idx],
                          "caption": captions, "tags": labels})
    frame.write_csv(path) if path.suffix == ".csv" else frame.write_parquet(path)


def measure(what: str, path: Path) -> dict:
    """One fresh process: seconds and peak RSS of `what` on `path`."""
    code = f"""
import resource, sys, time
sys.path.insert(0, {str(ROOT)!r})
import polars as pl
from featcache.data import load_dataset
path = {str(path)!r}
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
t0, c0 = time.perf_counter(), cpu()
if {what!r} == "polars":
    frame = pl.read_csv(path) if path.endswith(".csv") else pl.read_parquet(path)
    n = frame.height
else:
    ds = load_dataset(path)
    n = ds.label_space.num_labels
print(time.perf_counter() - t0, cpu() - c0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, n)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return {"seconds": float(out[0]), "cpu_seconds": float(out[1]), "peak_mb": float(out[2])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for suffix in (".csv", ".parquet"):
            path = Path(tmp) / f"items{suffix}"
            make(path, args.rows)
            size_mb = path.stat().st_size / 1e6
            runs = {"polars": [], "featcache": []}
            for _ in range(args.runs):  # interleaved, so a drift of the machine hits both
                for what in runs:
                    runs[what].append(measure(what, path))
            med = {w: statistics.median(r["seconds"] for r in rs) for w, rs in runs.items()}
            cpu = {w: statistics.median(r["cpu_seconds"] for r in rs) for w, rs in runs.items()}
            peak = {w: max(r["peak_mb"] for r in rs) for w, rs in runs.items()}
            results[suffix[1:]] = {"rows": args.rows, "file_mb": round(size_mb, 1),
                                   "polars_s": round(med["polars"], 3), "featcache_s": round(med["featcache"], 3),
                                   "ratio": round(med["featcache"] / med["polars"], 2), "target": 3.0,
                                   "polars_cpu_s": round(cpu["polars"], 3), "featcache_cpu_s": round(cpu["featcache"], 3),
                                   "cpu_ratio": round(cpu["featcache"] / cpu["polars"], 2),
                                   "polars_peak_mb": round(peak["polars"]), "featcache_peak_mb": round(peak["featcache"])}
            r = results[suffix[1:]]
            print(f"{suffix[1:]:8s} {args.rows:,} rows ({r['file_mb']} MB): polars {r['polars_s']:.2f} s, featcache "
                  f"load_dataset {r['featcache_s']:.2f} s -> {r['ratio']:.2f}x (target <= 3x); CPU "
                  f"{r['polars_cpu_s']:.2f} s vs {r['featcache_cpu_s']:.2f} s -> {r['cpu_ratio']:.2f}x; peak memory "
                  f"{r['polars_peak_mb']} MB vs {r['featcache_peak_mb']} MB", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"({time.perf_counter() - t0:.0f} s; peak of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")
