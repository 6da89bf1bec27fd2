"""A warm cache's answer time: `cli.py extract` on a complete cache, against its floor, in one run.

    .venv/bin/python benchmarks/warm.py [--data ../shared/data/comp5329] [--cache cache] [--encoder efficientnet_lite0] [--n 5]

Times --n fresh processes of `cli.py extract --encoder E` on a cache that is already complete
(median), `cli.py data check`, and the floor: `python -c 'import h5py, typer'` (what any such
process loads). Target: the warm extract under 1 s on an idle 2-core machine. Without the cache
it says how to build it; generated data and a random-init cache stand in when the slice is absent.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def median_wall(cmd: list[str], n: int) -> float:
    walls = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/comp5329")
    ap.add_argument("--cache", type=Path, default=ROOT / "cache")
    ap.add_argument("--encoder", default="efficientnet_lite0")
    ap.add_argument("--n", type=int, default=5)
    args = ap.parse_args()
    py, cli = sys.executable, str(ROOT / "cli.py")
    extra: list[str] = []
    if not (args.data / "train.csv").exists():  # generated data and a random-init cache stand in
        sys.path.insert(0, str(ROOT))
        from featcache.data.synth import make_dataset

        tmp = Path(tempfile.mkdtemp(prefix="featcache-warm-"))
        args.data, args.cache, extra = make_dataset(tmp / "data", 200, 20, seed=0), tmp / "cache", ["--random-init"]
        subprocess.run([py, cli, "extract", "--encoder", args.encoder, *extra, "--data", str(args.data),
                        "--cache", str(args.cache)], check=True, capture_output=True)
    elif not (args.cache / f"{args.encoder}.h5").exists():
        sys.exit(f"no cache {args.cache}/{args.encoder}.h5: python cli.py extract --encoder {args.encoder} "
                 f"--data {args.data} --cache {args.cache}")
    floor = median_wall([py, "-c", "import h5py, typer"], args.n)
    warm = median_wall([py, cli, "extract", "--encoder", args.encoder, *extra, "--data", str(args.data),
                        "--cache", str(args.cache)], args.n)
    check = median_wall([py, cli, "data", "check", "--data", str(args.data)], args.n)
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; median of {args.n} fresh processes each")
    floor_name = "python -c 'import h5py, typer' (floor)"
    print(f"{floor_name:<44} {floor:>6.2f} s")
    print(f"{'cli.py extract --encoder ' + args.encoder + ' (warm)':<44} {warm:>6.2f} s  ({warm / floor:.1f}x the floor; "
          f"target < 1 s: {'yes' if warm < 1 else 'NO'})")
    print(f"{'cli.py data check':<44} {check:>6.2f} s  ({check / floor:.1f}x the floor)")


if __name__ == "__main__":
    main()
