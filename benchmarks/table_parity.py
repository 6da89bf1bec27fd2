"""The real slice as a table people keep, against the COMP5329 folder it came from: same F1?

    python benchmarks/table_parity.py --data ../shared/data/comp5329 --work /tmp/parity

Re-shapes the folder into `items.csv` (columns path, caption, tags; nested paths
photos/<n>/IMG_<id>.jpg, hard links to the same photos; labels by name joined by '|'; test rows
without labels), extracts efficientnet_lite0 and minilm_l6 from both (offline weights; the
folder's caches are reused when warm), fits the late-fusion head on each and prints both
out-of-fold sample-F1s and their difference. Issue 26's target: within +-0.002. The table's label
order is its names sorted (no labels file), so the head's outputs and the stratified split see
the labels in another order than the folder's ids: the difference measures that, too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import polars as pl  # noqa: E402

import featcache as fc  # noqa: E402
from featcache.data import COCO_NAMES, load_dataset  # noqa: E402


def reshape(folder: Path, out: Path) -> Path:
    ds = load_dataset(folder)
    rows = []
    for rec in ds.train + ds.test:
        path = f"photos/{int(Path(rec.image_id).stem) % 7}/IMG_{rec.image_id}"
        target = out / path
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(ds.image_path(rec), target)
            except OSError:  # another file system: copy
                shutil.copyfile(ds.image_path(rec), target)
        rows.append({"path": path, "caption": rec.caption,
                     "tags": "|".join(COCO_NAMES[lab] for lab in rec.labels) if rec.labels else None})
    table = out / "items.csv"
    pl.DataFrame(rows).write_csv(table)  # Python-standard quoting: doubled quotes, newlines inside quotes
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "comp5329")
    ap.add_argument("--work", type=Path, default=Path("/tmp/featcache-parity"))
    args = ap.parse_args()
    table = reshape(args.data, args.work / "table")
    scores = {}
    for name, data, cache in (("folder", args.data, args.work / "cache-folder"), ("table", table, args.work / "cache-table")):
        for encoder in ("efficientnet_lite0", "minilm_l6"):
            res = fc.extract(data, encoder, cache=cache)
            print(f"{name}: {res.path} {res.rows} rows ({'warm' if res.warm else f'{res.items_per_s:.0f} items/s'})", flush=True)
        model = fc.fit_head(data, ["efficientnet_lite0", "minilm_l6"], cache=cache, runs=args.work / f"runs-{name}",
                            fusion="late")
        scores[name] = model.metrics["tuned_out_of_fold"]
        print(f"{name}: out-of-fold sample-F1 {scores[name]:.4f} (tuned {model.metrics['tuned']['sample_f1']:.4f})")
    diff = scores["table"] - scores["folder"]
    print(json.dumps({**scores, "difference": round(diff, 4), "target": 0.002}))
    print(f"table - folder = {diff:+.4f} (target: within +-0.002)")


if __name__ == "__main__":
    main()
