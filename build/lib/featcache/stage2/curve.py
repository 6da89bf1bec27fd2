"""Learning curves on cached features: validation sample-F1 against the number of training rows.

Would more labelled rows pay, and how many would a target need? Each point is a head fitted (as
fit-head does) on part of the train rows and scored on the whole validation part, so the points
differ only in the rows trained on. Every point trains the same number of optimizer steps
(the head's max_steps): by its default rule a head on 4,000 rows would stop at half the steps of
one on 8,000 (8 epochs of half as many batches), and the curve would mix rows with training time
(measured on the shared slice: the step from 4,000 to 8,000 rows was twice the step before it).
Each seed draws one order of the train rows and fraction f takes its first f share: the subsets
are nested, and a curve's steps are rows added, not new draws. The head's seed is the same seed,
so the spread over seeds covers both.

A saturating power law, F1(n) = top - scale * n^-rate, fitted to the mean of each point (scipy's
curve_fit), extends the curve past the rows there are, e.g. to the study's 24,000; the same law
fitted to each seed's curve alone gives the spread (±) of that value. It is a guide, not a
measurement: it reads only what the measured points imply, and the further past them, the less
it holds.

    table, fits, raw, out_dir = learning_curve(data, [["efficientnet_lite0"], ["efficientnet_lite0", "minilm_l6"]], cache=cache)

is the learning-curve command; `curve_points` measures the points on features already loaded.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

from featcache.data import load_dataset
from featcache.options import known
from featcache.stage2.config import FRACTIONS, CurveConfig
from featcache.tables import render
from featcache.outputs import check_out_dir, inputs_of, replacing, write_study, write_text
from featcache.stage2.experiment import Split, fit_eval, load_features
from featcache.stage2.pool import check_jobs, planned_head
from featcache.stage2 import pool
from heads.config import HeadConfig
from stores.features import FeatureSet


METRICS = ["sample_f1", "tuned_out_of_fold", "sample_f1_05_fallback", "map"]


def learning_curve(data, encoder_sets: list[list[str]], *, base: HeadConfig | None = None, progress: bool = True,
                   **options) -> tuple[pl.DataFrame, dict, pl.DataFrame, Path]:
    """The learning-curve command: one curve per encoder set (a set of several is fused by the
    fusion option, or `base`'s) on the dataset's split, written under `out` (default
    <runs>/curve-<time>); `jobs` fits at a time (default: one per core). `options`: CurveConfig's.
    Returns (summary, fitted laws, raw points, out)."""
    cfg = CurveConfig(**known(CurveConfig, options))
    base = replace(base or HeadConfig(), **({"fusion": cfg.fusion} if cfg.fusion else {}))
    cache, runs, out, jobs = cfg.cache, cfg.runs, cfg.out, cfg.jobs
    # Before any fit: never into the dataset or the cache, a file, or a folder that cannot be written.
    dataset = load_dataset(data)
    out = check_out_dir(out or Path(runs) / f"curve-{datetime.now():%Y%m%d-%H%M%S}", inputs_of(dataset=dataset, caches=[cache]) + [Path(cache)])
    sets = [load_features(cache, names, dataset) for names in encoder_sets]
    raw = curve_points(sets, Split.of(dataset).present_in([fs for s in sets for fs in s]), base, cfg.fractions, cfg.seeds,
                       cfg.metric, cfg.threshold_mode, progress, jobs)
    table, fits = write_curve(raw, out, list(cfg.extrapolate), cfg.target)
    return table, fits, raw, out


def curve_points(feature_sets: list[list[FeatureSet]], split: Split, base: HeadConfig = HeadConfig(),
                 fractions: tuple[float, ...] = FRACTIONS, seeds: int = 3, metric: str = "samples",
                 threshold_mode: str = "auto", progress: bool = True, jobs: int | None = None) -> pl.DataFrame:
    """One row per (encoder set, fraction, seed): rows trained on and the validation metrics.
    `jobs`: fits at a time on forked workers sharing the features; any `jobs`, the same rows."""
    from tqdm import tqdm

    tasks = [(fsets, f, s) for fsets in feature_sets for s in range(seeds) for f in sorted(fractions)]
    jobs = check_jobs(jobs, len(tasks))
    base = planned_head(base)  # measured once here, not in every worker

    def fit(task):
        fsets, fraction, seed = task
        part = split.share(fraction, seed)
        cfg = replace(base, seed=seed, min_steps=max(base.min_steps, base.step_cap()))
        return len(part.ids_train), fit_eval(fsets, part, cfg, metric, threshold_mode)

    with tqdm(total=len(tasks), disable=not progress, desc="learning curve", unit="fit") as bar:
        done = pool.fits(tasks, fit, jobs, bar)
    rows = []
    for (_, fraction, seed), (n_train, res) in zip(tasks, done):
        m = res.metrics
        rows.append({"encoders": "+".join(res.encoders), "fraction": fraction, "rows": n_train,
                     "seed": seed, "sample_f1": m["sample_f1"], "tuned_out_of_fold": m["tuned_out_of_fold"],
                     "sample_f1_05_fallback": m["at_0.5_fallback"]["sample_f1"], "map": m["map"],
                     "fit_seconds": m["fit_seconds"]})
    return pl.DataFrame(rows)


def summarize_curve(raw: pl.DataFrame) -> pl.DataFrame:
    """Mean and std over seeds per (encoders, rows)."""
    aggs = [pl.len().alias("seeds")]
    for m in METRICS:
        aggs += [pl.col(m).mean().alias(m), pl.col(m).std(ddof=0).alias(f"{m}_std")]
    return raw.group_by("encoders", "fraction", "rows", maintain_order=True).agg(aggs).sort("encoders", "rows")


def power_law(n, top, scale, rate):
    return top - scale * np.power(n, -rate)


def fit_power_law(rows: np.ndarray, f1: np.ndarray) -> dict | None:
    """{top, scale, rate} of F1(n) = top - scale * n^-rate, or None where it cannot be fitted
    (fewer than 4 points: three parameters need one point to spare; or no convergence)."""
    from scipy.optimize import curve_fit

    rows, f1 = np.asarray(rows, float), np.asarray(f1, float)
    if len(rows) < 4:
        return None
    try:
        (top, scale, rate), _ = curve_fit(power_law, rows, f1, p0=(min(1.0, f1.max() + 0.02), 1.0, 0.5),
                                          bounds=([0, 0, 1e-3], [1, np.inf, 3]), maxfev=20_000)
    except (RuntimeError, ValueError):
        return None
    return {"top": float(top), "scale": float(scale), "rate": float(rate)}


def extrapolate(raw: pl.DataFrame, at: list[int]) -> dict[str, dict]:
    """Per encoder set: the law fitted to the seed means, its value at each of `at`, and the spread
    (std) of the values of the laws fitted to each seed's curve alone: how much the extrapolation
    moves with the draw of rows, which is usually more than the points themselves do."""
    out = {}
    for (name,), r in raw.group_by("encoders", maintain_order=True):
        means = r.group_by("rows").agg(pl.col("sample_f1").mean()).sort("rows")
        law = fit_power_law(means["rows"].to_numpy(), means["sample_f1"].to_numpy())
        per_seed = [fit_power_law(t["rows"].to_numpy(), t["sample_f1"].to_numpy())
                    for _, t in r.sort("rows").group_by("seed", maintain_order=True)]
        per_seed = [p for p in per_seed if p]
        out[name] = {"law": law, "measured_rows": int(r["rows"].max()),
                     "at": {int(n): (float(power_law(n, **law)) if law else None) for n in at},
                     "at_std_over_seeds": {int(n): (float(np.std([power_law(n, **p) for p in per_seed]))
                                                    if len(per_seed) > 1 else None) for n in at}}
    return out


def format_curve(table: pl.DataFrame, fits: dict[str, dict]) -> str:
    rows = [{**r, "tuned": f"{r['sample_f1']:.4f} ± {r['sample_f1_std']:.4f}"} for r in table.iter_rows(named=True)]
    lines = [render(rows, {"encoders": "encoders", "rows": "rows", "seeds": "n", "tuned": "sample-F1 tuned",
                           "tuned_out_of_fold": "out of fold", "sample_f1_05_fallback": "@0.5+fb", "map": "mAP"})]
    for name, fit in fits.items():
        law = fit["law"]
        if law is None:
            lines.append(f"{name}: no power law fitted (needs >= 4 row counts)")
            continue
        at = ", ".join(f"{v:.4f}" + (f" ± {sd:.4f}" if sd is not None else "") + f" at {n:,} rows"
                       for (n, v), sd in zip(fit["at"].items(), fit["at_std_over_seeds"].values()))
        lines.append(f"{name}: F1(n) = {law['top']:.4f} - {law['scale']:.3g} n^-{law['rate']:.3f}; extrapolated {at}")
    return "\n".join(lines)


def curve_chart(table: pl.DataFrame, fits: dict[str, dict], path: Path, target: float | None = None) -> Path:
    """Tuned sample-F1 (mean ± std over seeds) against training rows, log x, each fitted law dashed
    out to the largest extrapolation point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (name,), t in table.group_by("encoders", maintain_order=True):
        line = ax.errorbar(t["rows"], t["sample_f1"], yerr=t["sample_f1_std"], marker="o", capsize=3, label=name)
        fit = fits.get(name, {})
        if fit.get("law"):
            far = max([fit["measured_rows"], *fit["at"]])
            n = np.geomspace(t["rows"].min(), far, 100)
            ax.plot(n, power_law(n, **fit["law"]), "--", color=line[0].get_color(), alpha=0.7)
    if target is not None:
        ax.axhline(target, color="grey", lw=0.8, ls=":", label=f"target {target:g}")
    ax.set_xscale("log")
    ax.set_xlabel("training rows (log scale); dashed: fitted power law")
    ax.set_ylabel("validation sample-F1 (tuned thresholds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


def write_curve(raw: pl.DataFrame, out_dir: Path, at: list[int], target: float | None = None) -> tuple[pl.DataFrame, dict]:
    """raw.parquet, table.csv/.parquet, fits.json and curve.png under out_dir; returns (table, fits)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = summarize_curve(raw)
    fits = extrapolate(raw, at)
    write_study(out_dir, raw, table)
    write_text(out_dir / "fits.json", json.dumps(fits, indent=1))
    curve_chart(table, fits, out_dir / "curve.png", target)
    return table, fits
