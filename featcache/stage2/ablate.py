"""The study as one command: every encoder alone, every image+text pair with each fusion, the seed
report's hyper-parameter grids, several seeds each; a table (mean ± std over seeds) and a chart.

    table, raw, out_dir = ablate(data, cache, ["efficientnet_lite0", "minilm_l6"], seeds=3)

is the ablate command; `ablate_features` runs the same plan on features already loaded.

Plan (S seeds each):
  - each encoder alone, the default fusion (with one input every fusion is the same MLP up to
    its own projection, so only the default is run);
  - each image x text pair, each fusion;
  - with grid="seed", the seed report's grids on the best pair (by tuned sample-F1 over the
    fusions) with the default fusion, one axis at a time around the defaults.

The seed report's grid was for end-to-end fine-tuning; translated into head training so that
the batch and learning-rate grids centre on the head's defaults, and the ratios are kept:
  - batch size 16/32/64 -> 256/512/1024 (x16: the seed filled a GPU with images through two
    backbones; a head on cached vectors takes much larger batches at no memory cost),
  - learning rate 1e-5/1e-4/1e-3 -> 3e-4/3e-3/3e-2 (x30: the seed nudged pretrained weights; a
    head is trained from scratch and needs far larger steps),
  - epochs 2/3/4 -> 4/6/8 (x2, the default 8 at the top; the cosine schedule's length, no step cap: a
    fine-tuning epoch at batch 32 is ~250 steps, a head epoch at batch 512 is ~16, and a head on
    frozen features converges in ~130 steps where a backbone needs thousands).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

from featcache.data import LabelSpace, load_dataset
from featcache.outputs import replacing, write_study, write_text
from featcache.stage2.experiment import Split, fit_eval, load_features, results_row, save_run
from heads.fusion import FUSIONS
from heads.train import HeadConfig
from stores.features import FeatureSet, StoreError
from stores.results import append_results

SEED_GRID = {"batch_size": (256, 512, 1024), "lr": (3e-4, 3e-3, 3e-2), "epochs": (4, 6, 8)}
METRICS = ["sample_f1", "tuned_out_of_fold", "sample_f1_05_fallback", "sample_f1_05", "micro_f1", "macro_f1", "map", "fit_seconds"]


def plan(features: list[FeatureSet], fusions: list[str], seeds: int, base: HeadConfig) -> list[tuple[list[FeatureSet], HeadConfig, str]]:
    """(encoders, config, variant) for the singles and the pairs."""
    jobs = []
    image = [fs for fs in features if fs.modality == "image"]
    text = [fs for fs in features if fs.modality == "text"]
    for seed in range(seeds):
        for fs in features:
            jobs.append(([fs], replace(base, seed=seed), "default"))
        for img, txt in itertools.product(image, text):
            for fusion in fusions:
                jobs.append(([img, txt], replace(base, fusion=fusion, seed=seed), "default"))
    return jobs


def grid_plan(pair: list[FeatureSet], seeds: int, base: HeadConfig) -> list[tuple[list[FeatureSet], HeadConfig, str]]:
    jobs = []
    for seed in range(seeds):
        for key, values in SEED_GRID.items():
            for v in values:
                if getattr(base, key) == v:  # the default itself is already in the main plan
                    continue
                cfg = replace(base, **{key: v}, seed=seed, **({"max_steps": 0} if key == "epochs" else {}))
                jobs.append((pair, cfg, f"{key}={v:g}"))
    return jobs


def ablate(data: str | Path, cache: str | Path, encoders: list[str] | None = None, *, fusions: list[str] | None = None,
           seeds: int = 3, grid: str | None = None, metric: str = "samples", threshold_mode: str = "auto",
           runs: Path = Path("runs"), out: Path | None = None,
           progress: bool = True) -> tuple[pl.DataFrame, pl.DataFrame, Path]:
    """The ablate command: the plan over the named caches (None: every *.h5 in `cache`) on the
    dataset's split; runs under `out` (default runs/ablate-<time>), their rows appended to
    runs/results.parquet. Returns (summary, raw rows, out)."""
    dataset = load_dataset(data)
    names = encoders if encoders is not None else sorted(p.stem for p in Path(cache).glob("*.h5"))
    if not names:
        raise StoreError(f"{cache}: no feature caches (*.h5); run `python cli.py extract --encoder ...` first")
    features = load_features(cache, names, dataset)
    runs = Path(runs)
    out = Path(out) if out else runs / f"ablate-{datetime.now():%Y%m%d-%H%M%S}"
    table, raw = ablate_features(features, Split.of(dataset).present_in(features), dataset.label_space, out, fusions=fusions, seeds=seeds,
                                 grid=grid, metric=metric, threshold_mode=threshold_mode,
                                 results=runs / "results.parquet", runs_root=runs, progress=progress)
    return table, raw, out


def ablate_features(features: list[FeatureSet], split: Split, label_space: LabelSpace, out_dir: Path,
                    base: HeadConfig = HeadConfig(), fusions: list[str] | None = None, seeds: int = 3,
                    grid: str | None = None, metric: str = "samples", threshold_mode: str = "auto",
                    results: Path | None = None, progress: bool = True,
                    runs_root: Path | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Run the plan; write runs under out_dir/<id>/, table.{parquet,csv}, raw.parquet and chart.png.
    Returns (summary, raw rows)."""
    from tqdm import tqdm

    fusions = fusions or [f for f in FUSIONS if f != "concat_relu"]  # the five of the study; concat_relu on request
    unknown = [f for f in fusions if f not in FUSIONS]
    if unknown:
        raise ValueError(f"unknown fusion(s) {', '.join(unknown)}; choose from {', '.join(FUSIONS)}")
    if grid not in (None, "seed"):
        raise ValueError(f"unknown grid {grid!r}; the only grid is 'seed'")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    bar = tqdm(total=0, disable=not progress, desc="ablate", unit="fit")

    def run(jobs):
        bar.total += len(jobs)
        bar.refresh()
        for fsets, cfg, variant in jobs:
            bar.set_postfix_str(f"{'+'.join(f.name for f in fsets)} {cfg.fusion} {variant} s{cfg.seed}")
            res = fit_eval(fsets, split, cfg, metric, threshold_mode, list(label_space.names))
            name = f"{'+'.join(res.encoders)}-{cfg.fusion}-{variant}-s{cfg.seed}".replace("=", "")
            run_dir = save_run(res, out_dir / name, label_space)
            run_name = run_dir.relative_to(runs_root).as_posix() if runs_root and run_dir.is_relative_to(runs_root) else str(run_dir)
            rows.append({**results_row(res, run_name), "variant": variant})
            bar.update()

    run(plan(features, fusions, seeds, base))
    if grid == "seed":
        pairs = pl.DataFrame(rows).filter(pl.col("encoders").list.len() == 2)
        if len(pairs):
            best = pairs.group_by(pl.col("encoders").list.join("+")).agg(pl.col("sample_f1").mean()).sort(
                "sample_f1", descending=True)["encoders"][0].split("+")
            by_name = {fs.name: fs for fs in features}
            run(grid_plan([by_name[n] for n in best], seeds, base))
    bar.close()
    raw = pl.DataFrame(rows, infer_schema_length=None)
    if results is not None:
        append_results(results, rows)
    table = summarize(raw)
    write_study(out_dir, raw, table)
    chart(table, out_dir / "chart.png")
    write_text(out_dir / "plan.json", json.dumps({"base": base.__dict__, "fusions": fusions, "seeds": seeds,
                                                   "grid": grid, "metric": metric, "threshold_mode": threshold_mode,
                                                   "time": datetime.now().isoformat(timespec="seconds")}, indent=1))
    return table, raw


def summarize(raw: pl.DataFrame) -> pl.DataFrame:
    """Mean and std over seeds per (encoders, fusion, variant), best tuned sample-F1 first."""
    keys = [pl.col("encoders").list.join("+").alias("encoders"), "fusion", "variant"]
    aggs = [pl.len().alias("seeds")]
    for m in METRICS:
        aggs += [pl.col(m).mean().alias(m), pl.col(m).std(ddof=0).alias(f"{m}_std")]
    if "threshold_mode_chosen" in raw.columns:  # the mode each seed's thresholds came from, e.g. "flat,shrunk,shrunk"
        aggs.append(pl.col("threshold_mode_chosen").sort().str.join(",").alias("thresholds_chosen"))
    return raw.group_by(keys).agg(aggs).sort("sample_f1", descending=True)


def format_table(table: pl.DataFrame) -> str:
    lines = [f"{'encoders':<34} {'fusion':<9} {'variant':<15} {'n':>2}  {'sample-F1 tuned':>16}  {'tuned oof':>9}  {'@0.5+fb':>7}  "
             f"{'@0.5':>6}  {'micro':>6}  {'macro':>6}  {'mAP':>6}  {'fit s':>5}  thresholds"]
    for r in table.iter_rows(named=True):
        lines.append(f"{r['encoders']:<34} {r['fusion']:<9} {r['variant']:<15} {r['seeds']:>2}  "
                     f"{r['sample_f1']:.4f} ± {r['sample_f1_std']:.4f}  {r['tuned_out_of_fold']:>9.4f}  {r['sample_f1_05_fallback']:>7.4f}  "
                     f"{r['sample_f1_05']:>6.4f}  {r['micro_f1']:>6.4f}  {r['macro_f1']:>6.4f}  {r['map']:>6.4f}  "
                     f"{r['fit_seconds']:>5.2f}  {r.get('thresholds_chosen') or ''}")
    return "\n".join(lines)


def chart(table: pl.DataFrame, path: Path) -> Path:
    """Horizontal bars: tuned sample-F1 mean with the seed std as error bars, best on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = table.sort("sample_f1")
    labels = [f"{e} / {f}" + ("" if v == "default" else f" / {v}") for e, f, v in zip(t["encoders"], t["fusion"], t["variant"])]
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(t) + 1.2))
    colours = ["tab:orange" if "+" in e else "tab:blue" for e in t["encoders"]]
    ax.barh(labels, t["sample_f1"], xerr=t["sample_f1_std"], color=colours, capsize=2)
    f1s = t["sample_f1"].to_numpy()
    if len(t):  # zoom on the bars: the differences that matter are in the third decimal
        ax.set_xlim(max(0.0, np.nanmin(f1s) - 0.03), min(1.0, np.nanmax(f1s + t["sample_f1_std"].fill_null(0).to_numpy()) + 0.01))
    ax.set_xlabel("validation sample-F1 (tuned thresholds), mean ± std over seeds")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path
