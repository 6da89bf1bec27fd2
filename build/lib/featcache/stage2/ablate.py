"""The study as one command: every encoder alone, every image+text pair with each fusion, the seed
report's hyper-parameter grids, several seeds each; a table (mean ± std over seeds) and a chart.

    table, raw, out_dir = ablate(data, ["efficientnet_lite0", "minilm_l6"], cache=cache, seeds=3)

is the ablate command; `ablate_features` runs the same plan on features already loaded.

Plan (S seeds each):
  - each encoder alone, the default fusion (with one input every fusion is the same MLP up to
    its own projection, so only the default is run);
  - each image x text pair, each fusion;
  - with grid="seed", the seed report's grids on the best pair (by out-of-fold F1 over the
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
import sys
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

from featcache import tracking
from featcache.options import known
from featcache.stage2.config import AblateConfig
from featcache.data import LabelSpace, load_dataset
from featcache.outputs import check_out_dir, inputs_of, replacing, write_study, write_text
from featcache.tables import render
from featcache.stage2.experiment import Split, fit_eval, load_features, results_row, save_run
from featcache.stage2.pool import check_jobs, fits, planned_head
from heads.fusion import FUSIONS
from heads.config import HeadConfig
from stores.features import FeatureSet, StoreError, open_features
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


def of_dataset(cache: str | Path, dataset) -> list[str]:
    """The complete caches in `cache` extracted from this dataset (others are left out, by name)."""
    names, other = [], []
    for path in sorted(Path(cache).glob("*.h5")):
        try:
            fs = open_features(cache, path.stem)
        except StoreError:
            other.append(path.name)
            continue
        built_from = json.loads(fs.attrs.get("fingerprint_spec", "{}")).get("dataset")
        (names if built_from in (None, dataset.fingerprint()) else other).append(path.stem)
    if other:
        print(f"ablate: left out {', '.join(other)} (incomplete, or extracted from other data)", file=sys.stderr)
    return names


def ablate(data, encoders: list[str] | None = None, *, progress: bool = True,
           **options) -> tuple[pl.DataFrame, pl.DataFrame, Path]:
    """The ablate command: the plan over the named caches (None: every *.h5 in the cache of `data`)
    on the dataset's split; runs under `out` (default <runs>/ablate-<time>), their rows appended to
    <runs>/results.parquet; `jobs` fits at a time (default: one per core). `options`: AblateConfig's.
    Returns (summary, raw rows, out)."""
    cfg = AblateConfig(**known(AblateConfig, options))
    cache, runs, out, jobs = cfg.cache, cfg.runs, cfg.out, cfg.jobs
    dataset = load_dataset(data)
    out = check_out_dir(out, inputs_of(dataset=dataset, caches=[cache], runs=runs) + [Path(cache)]) if out else None  # before any fit
    names = encoders if encoders is not None else of_dataset(cache, dataset)
    if not names:
        raise StoreError(f"{cache}: no feature caches (*.h5) of {dataset.name}; run `python cli.py extract --encoder ...` first")
    features = load_features(cache, names, dataset)
    runs = Path(runs)
    out = Path(out) if out else runs / f"ablate-{datetime.now():%Y%m%d-%H%M%S}"
    table, raw = ablate_features(features, Split.of(dataset).present_in(features), dataset.label_space, out,
                                 fusions=list(cfg.fusions) if cfg.fusions else None, seeds=cfg.seeds, grid=cfg.grid,
                                 metric=cfg.metric, threshold_mode=cfg.threshold_mode, results=runs / "results.parquet",
                                 runs_root=runs, progress=progress, track=tracking.tracking_kind(cfg.track), jobs=jobs)
    return table, raw, out


def ablate_features(features: list[FeatureSet], split: Split, label_space: LabelSpace, out_dir: Path,
                    base: HeadConfig = HeadConfig(), fusions: list[str] | None = None, seeds: int = 3,
                    grid: str | None = None, metric: str = "samples", threshold_mode: str = "auto",
                    results: Path | None = None, progress: bool = True,
                    runs_root: Path | None = None, track: str | None = None,
                    jobs: int | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Run the plan; write runs under out_dir/<id>/, table.{parquet,csv}, raw.parquet and chart.png.
    `track` "tensorboard": each fit's epochs and final metrics under out_dir/tensorboard/<id>/.
    `jobs`: fits at a time, on forked workers sharing the features (featcache.stage2.pool); any
    `jobs` gives the same table. Returns (summary, raw rows)."""
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

    jobs = check_jobs(jobs, len(plan(features, fusions, seeds, base)))
    base = planned_head(base)  # measured once here, not in every worker

    def fit(task):
        fsets, cfg, _ = task
        return fit_eval(fsets, split, cfg, metric, threshold_mode, list(label_space.names))

    def run(tasks):
        bar.total += len(tasks)
        bar.refresh()
        for (fsets, cfg, variant), res in zip(tasks, fits(tasks, fit, jobs, bar)):
            name = f"{'+'.join(res.encoders)}-{cfg.fusion}-{variant}-s{cfg.seed}".replace("=", "")
            run_dir = save_run(res, out_dir / name, label_space)
            with tracking.track(track, out_dir / "tensorboard" / name) as tb:
                if tb is not None:
                    for record in res.head.history:
                        tb.scalars({f"epoch/{k}": v for k, v in record.items() if k != "epoch"}, record["epoch"])
                    tb.hparams({"encoders": "+".join(res.encoders), "variant": variant, **asdict(res.head.cfg)},
                               {k: res.metrics[k] for k in ("sample_f1", "tuned_out_of_fold", "map")})
            run_name = run_dir.relative_to(runs_root).as_posix() if runs_root and run_dir.is_relative_to(runs_root) else str(run_dir)
            oof_rows = None if res.val_out_of_fold is None else res.val_out_of_fold.astype(np.float32).tolist()
            rows.append({**results_row(res, run_name), "variant": variant, "val_out_of_fold": oof_rows})

    run(plan(features, fusions, seeds, base))
    if grid == "seed":
        pairs = pl.DataFrame(rows).filter(pl.col("encoders").list.len() == 2)
        if len(pairs):
            best = pairs.group_by(pl.col("encoders").list.join("+")).agg(pl.col("tuned_out_of_fold").mean()).sort(
                "tuned_out_of_fold", descending=True)["encoders"][0].split("+")
            by_name = {fs.name: fs for fs in features}
            run(grid_plan([by_name[n] for n in best], seeds, base))
    bar.close()
    raw = pl.DataFrame(rows, infer_schema_length=None)
    if results is not None:  # one scalar row per fit; the per-row scores stay in the study's raw.parquet
        append_results(results, [{k: v for k, v in r.items() if k != "val_out_of_fold"} for r in rows])
    table = summarize_ablation(raw)
    write_study(out_dir, raw, table)
    ablation_chart(table, out_dir / "chart.png")
    write_text(out_dir / "plan.json", json.dumps({"base": base.__dict__, "fusions": fusions, "seeds": seeds,
                                                   "grid": grid, "metric": metric, "threshold_mode": threshold_mode,
                                                   "time": datetime.now().isoformat(timespec="seconds")}, indent=1))
    return table, raw


def summarize_ablation(raw: pl.DataFrame, resamples: int = 2000) -> pl.DataFrame:
    """Mean and std over seeds per (encoders, fusion, variant), ranked by the honest score: F1 with
    thresholds tuned on other validation rows (tuned_out_of_fold), never by the in-sample tuned F1
    (on 300 real rows that ranked gated first at 0.855, which scored 0.734 out of fold).

    With each fit's per-row out-of-fold scores (sample-F1), a paired bootstrap over the validation
    rows gives each configuration a 95% interval (oof_low, oof_high) and says whether its gap to
    the first is within the noise (within_noise); without them (micro/macro F1) the seed spread
    decides: a gap under two standard errors of the two means."""
    keys = [pl.col("encoders").list.join("+").alias("encoders"), "fusion", "variant"]
    aggs = [pl.len().alias("seeds"), pl.col("n_val").first()] if "n_val" in raw.columns else [pl.len().alias("seeds")]
    for m in METRICS:
        aggs += [pl.col(m).mean().alias(m), pl.col(m).std(ddof=0).alias(f"{m}_std")]
    if "threshold_mode_chosen" in raw.columns:  # the mode each seed's thresholds came from, e.g. "flat,shrunk,shrunk"
        aggs.append(pl.col("threshold_mode_chosen").sort().str.join(",").alias("thresholds_chosen"))
    table = raw.group_by(keys, maintain_order=True).agg(aggs).sort("tuned_out_of_fold", descending=True, maintain_order=True)
    return table.with_columns(**_noise(raw, table, resamples))


def _noise(raw: pl.DataFrame, table: pl.DataFrame, resamples: int) -> dict[str, pl.Series]:
    """oof_low, oof_high and within_noise for the table's rows (see summarize_ablation)."""
    n = len(table)
    low, high, tie = np.full(n, np.nan), np.full(n, np.nan), np.zeros(n, bool)
    per_row = _per_row_scores(raw, table)
    if per_row is not None and n:
        rng = np.random.default_rng(0)
        pick = rng.integers(0, per_row.shape[1], (resamples, per_row.shape[1]))
        means = np.stack([r[pick].mean(1) for r in per_row])  # [configurations, resamples], paired: same rows
        low, high = np.percentile(means, 2.5, axis=1), np.percentile(means, 97.5, axis=1)
        tie = np.percentile(means[0] - means, 2.5, axis=1) <= 0  # the first's lead is not sure at 95%
    elif n:
        mean, std, k = (table[c].to_numpy().astype(float) for c in ("tuned_out_of_fold", "tuned_out_of_fold_std", "seeds"))
        se = np.sqrt((std[0] ** 2 / k[0]) + std ** 2 / k)
        tie = (mean[0] - mean) <= 2 * np.nan_to_num(se)
    return {"oof_low": pl.Series(low), "oof_high": pl.Series(high), "within_noise": pl.Series(tie)}


def _per_row_scores(raw: pl.DataFrame, table: pl.DataFrame) -> np.ndarray | None:
    """[configurations in table order, validation rows]: each row's out-of-fold F1, averaged over seeds."""
    if "val_out_of_fold" not in raw.columns or raw["val_out_of_fold"].null_count():
        return None
    key = pl.concat_str(pl.col("encoders").list.join("+"), "fusion", "variant", separator="|")
    by = {k: np.mean(np.stack([np.asarray(v) for v in g["val_out_of_fold"]]), axis=0)
          for (k,), g in raw.with_columns(key=key).group_by("key")}
    rows = [by[f"{e}|{f}|{v}"] for e, f, v in zip(table["encoders"], table["fusion"], table["variant"])]
    return np.stack(rows) if len({len(r) for r in rows}) == 1 else None  # other validation rows: no pairing


SMALL_VALIDATION = 500  # rows; below this, tuned thresholds overfit and a ranking moves with the split


def format_ablation(table: pl.DataFrame) -> str:
    """The ranking, best first, and what it can and cannot tell apart."""
    rows = [{**r, "tie": "≈" if r["within_noise"] else "",
             "oof": f"{r['tuned_out_of_fold']:.4f} ± {r['tuned_out_of_fold_std']:.4f}",
             "interval": f"{r['oof_low']:.4f}-{r['oof_high']:.4f}" if r["oof_low"] == r["oof_low"] else None}
            for r in table.iter_rows(named=True)]
    columns = {"tie": "", "encoders": "encoders", "fusion": "fusion", "variant": "variant", "seeds": "n",
               "oof": "F1 out of fold", "interval": "95% interval", "sample_f1": "tuned*", "sample_f1_05_fallback": "@0.5+fb",
               "sample_f1_05": "@0.5", "micro_f1": "micro", "macro_f1": "macro", "map": "mAP", "fit_seconds": "fit s",
               "thresholds_chosen": "thresholds"}
    return "\n".join([render(rows, columns, formats={"fit_seconds": ".2f"}), *ranking_notes(table)])


def ranking_notes(table: pl.DataFrame) -> list[str]:
    """What a reader of the ranking must know: how it was scored, the ties, a small validation part."""
    if not len(table):
        return []
    notes = ["ranked by F1 with thresholds tuned on other validation rows (out of fold; ± the seed spread);"
             " tuned* is scored on the rows it was tuned on (optimistic)"]
    ties = table.filter(pl.col("within_noise"))
    how = ("a paired bootstrap over the validation rows" if table["oof_low"].is_not_nan().any()
           else "two standard errors over seeds")
    if len(ties) > 1:
        notes.append(f"≈ {len(ties)} configurations are within the noise of the first ({how}, 95%): "
                     "the data cannot tell them apart; prefer the smaller or faster")
    in_sample = table.sort("sample_f1", descending=True, maintain_order=True).row(0, named=True)
    first = table.row(0, named=True)
    if (in_sample["encoders"], in_sample["fusion"], in_sample["variant"]) != (first["encoders"], first["fusion"], first["variant"]):
        notes.append(f"in-sample tuning would have picked {in_sample['encoders']} / {in_sample['fusion']}"
                     f"{'' if in_sample['variant'] == 'default' else ' / ' + in_sample['variant']} "
                     f"(tuned {in_sample['sample_f1']:.4f}, out of fold {in_sample['tuned_out_of_fold']:.4f})")
    n_val = table["n_val"][0] if "n_val" in table.columns else None
    if n_val is not None and n_val < SMALL_VALIDATION:
        notes.append(f"warning: only {n_val} validation rows; below {SMALL_VALIDATION} tuned thresholds overfit and the "
                     "ranking is mostly noise: use more labelled rows before choosing")
    return notes


def ablation_chart(table: pl.DataFrame, path: Path) -> Path:
    """Horizontal bars: out-of-fold F1 (the ranking) with its 95% interval, or the seed std without
    one; the in-sample tuned F1 as a hollow marker beside it; best on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = table.reverse()
    labels = [("≈ " if tie else "") + f"{e} / {f}" + ("" if v == "default" else f" / {v}")
              for e, f, v, tie in zip(t["encoders"], t["fusion"], t["variant"], t["within_noise"])]
    oof = t["tuned_out_of_fold"].to_numpy()
    if np.isnan(t["oof_low"].to_numpy()).all():
        err = t["tuned_out_of_fold_std"].fill_null(0).to_numpy()
        what = "± seed std"
    else:
        err = np.stack([oof - t["oof_low"].to_numpy(), t["oof_high"].to_numpy() - oof])
        what = "95% bootstrap interval over validation rows"
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(t) + 1.4))
    colours = ["tab:orange" if "+" in e else "tab:blue" for e in t["encoders"]]
    ax.barh(labels, oof, xerr=err, color=colours, capsize=2, label=f"out of fold ({what})")
    ax.scatter(t["sample_f1"], labels, marker="o", facecolors="none", edgecolors="black", zorder=3,
               label="tuned on the same rows (in-sample)")
    if len(t):  # zoom on the bars: the differences that matter are in the third decimal
        lo = np.nanmin(np.concatenate([oof, t["sample_f1"].to_numpy()]))
        hi = np.nanmax(np.concatenate([oof + np.atleast_2d(err)[-1], t["sample_f1"].to_numpy()]))
        ax.set_xlim(max(0.0, lo - 0.03), min(1.0, hi + 0.01))
    ax.set_xlabel("validation F1, mean over seeds; ranked by the out-of-fold score (≈: within the noise of the first)")
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


def best_run(table: pl.DataFrame, raw: pl.DataFrame) -> str:
    """The run of the ranking's first row, seed 0: the one to predict with or fine-tune from."""
    first = table.row(0, named=True)
    return raw.filter((pl.col("encoders").list.join("+") == first["encoders"]) & (pl.col("fusion") == first["fusion"])
                      & (pl.col("variant") == first["variant"])).sort("seed")["run"][0]
