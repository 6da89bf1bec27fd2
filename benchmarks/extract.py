"""Extraction speed: `extract` vs a plain eager forward loop over the same items, and cache reads.

    .venv/bin/python benchmarks/extract.py [--n 1000] [--batch-size 32] [--data ../shared/data/comp5329]

The plain loop is what one writes first: decode + resize in the main process, torch.no_grad,
NCHW, file order, torch's default threads. `extract` adds a decoding worker, inference_mode,
channels_last, length-sorted caption batches. Both time the loop only (model already built).
Uses the real slice when present, generated data otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from featcache.data import Dataset, load_dataset, load_image  # noqa: E402
from featcache.encoders import create_encoder, preprocess_image  # noqa: E402
from featcache.extract import extract  # noqa: E402
from featcache.synth import make_dataset  # noqa: E402
from stores.features import cache_path, open_features  # noqa: E402


DEFAULT_THREADS = torch.get_num_threads()


def plain_loop(dataset: Dataset, name: str, batch_size: int) -> float:
    torch.set_num_threads(DEFAULT_THREADS)
    encoder = create_encoder(name)
    records = dataset.train + dataset.test
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(records), batch_size):
            batch = records[i:i + batch_size]
            if encoder.cfg.is_text:
                x = encoder.collate([r.caption for r in batch])
            else:
                x = torch.stack([preprocess_image(encoder.cfg, load_image(dataset.image_path(r.image_id))) for r in batch])
            encoder(x)
    return len(records) / (time.perf_counter() - t0)


def read_speed(cache_dir: Path, name: str, repeats: int = 5) -> tuple[float, float, int]:
    """GB/s of float32 delivered by open_features, and of file bytes read; best of a few runs."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fs = open_features(cache_dir, name)
        best = min(best, time.perf_counter() - t0)
    out_bytes = fs.features.nbytes + (fs.views.nbytes if fs.views is not None else 0)
    return out_bytes / best / 1e9, cache_path(cache_dir, name).stat().st_size / best / 1e9, len(fs.ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/comp5329")
    ap.add_argument("--n", type=int, default=1000, help="Items per encoder (a prefix of train.csv).")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--encoders", default="efficientnet_lite0,minilm_l6")
    ap.add_argument("--read-cache", type=Path, default=Path("cache"), help="Also time reads of <dir>/efficientnet_lite0.h5 if present.")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="featcache-bench-"))
    root = args.data if (args.data / "train.csv").exists() else make_dataset(tmp / "data", args.n, 0, image_size=224)
    full = load_dataset(root)
    dataset = Dataset(full.root, full.label_space, full.train[:args.n], [], [])
    rows = []
    for name in args.encoders.split(","):
        plain = plain_loop(dataset, name, args.batch_size)
        result = extract(dataset, name, tmp / "cache", batch_size=args.batch_size, progress=False, log=lambda m: None)
        rows.append((name, len(dataset.train), plain, result.items_per_s))
    print(f"data: {root} ({len(dataset.train)} items), torch {torch.__version__}, batch {args.batch_size}, plain loop "
          f"{DEFAULT_THREADS} threads, extract threads tuned per batch, load average {os.getloadavg()[0]:.1f}")
    print(f"{'encoder':<20} {'items':>6} {'plain items/s':>14} {'extract items/s':>16} {'ratio':>6}")
    for name, n, plain, fast in rows:
        print(f"{name:<20} {n:>6} {plain:>14.1f} {fast:>16.1f} {fast / plain:>5.2f}x")
    reads = [(tmp / "cache", name) for name in args.encoders.split(",")]
    if cache_path(args.read_cache, "efficientnet_lite0").exists():
        reads.append((args.read_cache, "efficientnet_lite0"))
    for cache_dir, name in reads:
        gbs, file_gbs, n = read_speed(cache_dir, name)
        print(f"cache read {cache_path(cache_dir, name)} ({n} rows): {gbs:.2f} GB/s float32 delivered, {file_gbs:.2f} GB/s from file")


if __name__ == "__main__":
    main()
