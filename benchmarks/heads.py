"""How fast are heads? One fit per fusion on 24,000 rows of 1280+384 features, and the whole ablate.

    python benchmarks/heads.py [--rows 24000] [--cache cache] [--data ../shared/data/comp5329] [--seeds 3]

Part 1 times `Head.fit` (default HeadConfig, early stopping on 6,000 validation rows) on planted
random features (heads.planted: real-like widths, signal to learn, so early stopping behaves as
on real data). Target: <= 3 s per fit. Part 2, when caches exist, times the `ablate` study over
every cache found (up to 4) x the 5 fusions x --seeds seeds, thresholds and run saving included.
Target: <= 5 min. The load average is printed: another process on the 2 cores slows every row.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from featcache.metrics import mean_average_precision  # noqa: E402
from featcache.thresholds import fit_thresholds  # noqa: E402
from heads.fusion import FUSIONS  # noqa: E402
from heads.planted import make_planted  # noqa: E402
from heads.train import Head, HeadConfig  # noqa: E402

STUDY = [f for f in FUSIONS if f != "concat_relu"]


def fit_table(rows: int, repeats: int = 1) -> list[dict]:
    n_val = rows // 4
    xs, y = make_planted(rows + n_val, dims=(1280, 384), seed=0)
    tr, va = slice(0, rows), slice(rows, None)
    out = []
    for fusion in STUDY:
        times = []
        for _ in range(repeats):
            head = Head(HeadConfig(fusion=fusion)).fit([x[tr] for x in xs], y[tr], val=([x[va] for x in xs], y[va]),
                                                       scorer=mean_average_precision)  # as stage 2 fits them
            times.append(head.fit_seconds)
        f1 = fit_thresholds(y[va], head.predict_proba([x[va] for x in xs])).score
        out.append({"fusion": fusion, "rows": rows, "epochs": len(head.history), "fit_s": min(times), "cpu_s": head.fit_cpu_seconds, "sample_f1": f1})
    return out


def ablate_time(cache: Path, data: Path, seeds: int) -> tuple[float, int, list[str]] | None:
    from featcache.stage2.ablate import ablate

    names = sorted(p.stem for p in cache.glob("*.h5"))[:4]
    if not names or not data.is_dir():
        return None
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:  # refuses caches built from other data; runs and results go to tmp
        _, raw, _ = ablate(data, cache, names, seeds=seeds, runs=Path(tmp), out=Path(tmp) / "ablate", progress=False)
    return time.perf_counter() - t0, len(raw), names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=24000)
    ap.add_argument("--repeats", type=int, default=1, help="fits per fusion; the fastest is reported")
    ap.add_argument("--cache", type=Path, default=Path("cache"))
    ap.add_argument("--data", type=Path, default=Path("../shared/data/comp5329"))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--no-ablate", action="store_true")
    args = ap.parse_args()
    cfg = HeadConfig()
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; HeadConfig: threads {cfg.threads}, "
          f"bf16 {cfg.bf16}, batch {cfg.batch_size}, lr {cfg.lr}, width {cfg.width}, max epochs {cfg.epochs}, "
          f"patience {cfg.patience}")
    print(f"\n{'fusion':<10} {'train rows':>10} {'features':>9} {'epochs':>6} {'fit s':>6} {'cpu s':>6} {'<=3 s':>5} {'sample-F1':>9}")
    for r in fit_table(args.rows, args.repeats):
        print(f"{r['fusion']:<10} {r['rows']:>10} {'1280+384':>9} {r['epochs']:>6} {r['fit_s']:>6.2f} {r['cpu_s']:>6.2f} "
              f"{'yes' if r['fit_s'] <= 3 else 'NO':>5} {r['sample_f1']:>9.4f}")
    if not args.no_ablate:
        res = ablate_time(args.cache, args.data, args.seeds)
        if res is None:
            print(f"\nablate: no caches in {args.cache} (or no dataset at {args.data}); skipped")
        else:
            seconds, fits, names = res
            print(f"\nablate over {len(names)} caches ({', '.join(names)}) x {len(STUDY)} fusions x {args.seeds} seeds: "
                  f"{fits} fits in {seconds:.1f} s ({seconds / 60:.2f} min; <= 5 min: {'yes' if seconds <= 300 else 'NO'})")


if __name__ == "__main__":
    main()
