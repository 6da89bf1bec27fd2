"""The study's Table 1 (model, F1, fit time, prediction time, size) and its Pareto chart.

A stage-2 model is encoders + a fitted head: its size is the sum of its encoders' saved weights
plus the head's, its prediction time per item the sum of their batch-1 latencies (an image and its
caption through every encoder, then the head). An end-to-end ("final") model is measured whole,
and so is an exported model under runs/ (featcache export: its files on disk, its OpenVINO
latency; F1 measured from the exported model on its run's validation rows when it was exported).
F1 and fit time come from the results table (fit-head/ablate), e2e runs' metrics.json and exports'
export.json (fit time: the run's); size and latency from `benchmark` rows. A fine-tuned cache
(`<encoder>_ft`) has its base encoder's architecture, so it takes that encoder's size and speed.
Seeds of one configuration are averaged.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import polars as pl

from featcache.outputs import check_out_dir, inputs_of, replacing, write_text
from featcache.study.config import ReportConfig
from featcache.tables import render


def models(results: pl.DataFrame) -> pl.DataFrame:
    """One row per configuration, seeds averaged: model, kind, encoders, runs, seeds, f1, f1_std,
    f1_tuned, fit_seconds. f1, which ranks and chooses, is the sample-F1 with thresholds tuned on
    other validation rows (tuned_out_of_fold; rows written before it was recorded fall back to
    the in-sample tuned figure, which f1_tuned always is).

    A configuration is the encoders, the head and its whole config but the seed (fit-head runs that
    differ only in, say, width are two models; a name shared by two configurations gets " #2")."""
    defaults = {"kind": "head", "variant": "default", "config": "", "seed": 0}
    if "tuned_out_of_fold" not in results.columns:
        results = results.with_columns(tuned_out_of_fold=pl.lit(None, pl.Float64))
    honest = pl.coalesce("tuned_out_of_fold", "sample_f1")
    results = results.with_columns(*[pl.lit(v).alias(k) for k, v in defaults.items() if k not in results.columns])
    # What to benchmark a model's parts as: the registry names its caches were extracted with
    # (rows written before they were recorded: the cache names, less a fine-tune's "_ft").
    base_names = pl.col("encoders").list.eval(pl.element().str.strip_suffix("_ft"))
    results = results.with_columns(encoder_names=pl.coalesce(pl.col("encoder_names"), base_names)
                                   if "encoder_names" in results.columns else base_names)
    name = pl.concat_str(pl.col("encoders").list.join(" + "), pl.lit(" / "), pl.col("head"),
                         pl.when(pl.col("variant") == "default").then(pl.lit("")).otherwise(" / " + pl.col("variant")))
    m = (results.with_columns(pl.col(k).fill_null(v) for k, v in defaults.items())
         .with_columns(model=name, key=pl.col("config").str.replace(r'"seed": *\d+,? *', ""))
         # The table is append-only: a configuration fitted again with the same seed (fit-head, then
         # ablate) is the same experiment, and its latest row stands.
         .unique(["model", "key", "seed"], keep="last", maintain_order=True)
         .group_by("model", "key", maintain_order=True)
         .agg(pl.col("kind").first(), pl.col("encoders").first(), pl.col("encoder_names").first(), pl.col("run").alias("runs"),
              pl.len().alias("seeds"),
              honest.mean().alias("f1"), honest.std(ddof=0).alias("f1_std"), pl.col("sample_f1").mean().alias("f1_tuned"),
              pl.col("fit_seconds").mean()))
    nth = pl.int_range(pl.len()).over("model")
    return m.with_columns(pl.when(nth > 0).then(pl.col("model") + " #" + (nth + 1).cast(pl.String))
                          .otherwise("model").alias("model")).drop("key")


def table1(results: pl.DataFrame, bench: pl.DataFrame, cfg: ReportConfig = ReportConfig()) -> pl.DataFrame:
    """Model, F1, fit seconds, prediction ms/item, size MB, params M; within budget; Pareto flags.

    bench: benchmark rows, `model` an encoder name or a run id as `benchmark` names them. A model's
    parts are its encoders (stage-2 models) and its first run (the head, or the whole final model):
    every seed's head has the same architecture."""
    m = models(results)
    parts = pl.concat([
        m.filter(pl.col("kind") == "head").select("model", part=pl.col("encoder_names")).explode("part"),
        m.select("model", part=pl.col("runs").list.first())])
    size = pl.col("size_mb_fp16" if cfg.fp16 else "size_mb").alias("size_mb")
    joined = parts.join(bench.select("model", size, "latency_ms", "params"), left_on="part", right_on="model",
                        how="left", suffix="_bench")
    missing = joined.filter(pl.col("size_mb").is_null())["part"].unique().sort().to_list()
    if missing:
        raise ValueError(f"no benchmark row for {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    sums = joined.group_by("model").agg(pl.col("latency_ms").sum().alias("predict_ms_per_item"), pl.col("size_mb").sum(),
                                        (pl.col("params").sum() / 1e6).alias("params_m"))
    out = (m.join(sums, on="model").drop("encoders", "encoder_names", "runs")
           .with_columns(within_budget=pl.col("size_mb") <= cfg.budget_mb).sort("f1", descending=True))
    return out.with_columns(pareto_size=pareto(out, "size_mb"), pareto_latency=pareto(out, "predict_ms_per_item"))


def needed(results: pl.DataFrame) -> tuple[list[str], list[str]]:
    """(encoder names, run ids) that table1 needs benchmark rows for."""
    m = models(results)
    encs = m.filter(pl.col("kind") == "head")["encoder_names"].explode()
    return sorted(set(encs)), m["runs"].list.first().to_list()


def export_results(root: Path, say=None) -> pl.DataFrame:
    """Exports under root as rows of the results table: the source run's encoders and head, the
    format and precision as the variant (a model of its own in Table 1), the validation F1 export
    measured from the exported model. An export written without data has none: left out, and
    `say` (default stderr) names it."""
    from featcache.deploy.exported import list_exports, read_meta

    rows, unscored = [], []
    for d in list_exports(root):
        meta = read_meta(d)
        scores, source = meta.get("validation"), meta["source"]
        if not scores:
            unscored.append(d.relative_to(root).as_posix())
            continue
        rows.append({"run": d.relative_to(root).as_posix(), "kind": "export", "encoders": source["encoders"],
                     "head": source["head"], "variant": f"{meta['format']} {meta['precision']}",
                     "sample_f1": scores["sample_f1"], "tuned_out_of_fold": scores["tuned_out_of_fold"],
                     "fit_seconds": source["fit_seconds"],
                     "config": json.dumps({"source": source["run"], "format": meta["format"], "precision": meta["precision"]})})
    if unscored:
        (say or (lambda m: print(m, file=sys.stderr)))(
            f"left out {len(unscored)} exports without validation figures (exported without --data): {', '.join(unscored[:5])}")
    return pl.DataFrame(rows)


def pareto(df: pl.DataFrame, cost: str) -> pl.Series:
    """True where no other model is at least as cheap and better: sorted by cost (F1 best first on
    ties), a model is on the front when its F1 beats every cheaper model's."""
    ranked = df.with_row_index("i").sort([cost, "f1"], descending=[False, True])
    best_before = ranked["f1"].cum_max().shift(1, fill_value=float("-inf"))
    return ranked.select("i", on=ranked["f1"] > best_before).sort("i")["on"]


def best_under_budget(table: pl.DataFrame) -> dict | None:
    fits = table.filter("within_budget").sort(["f1", "size_mb"], descending=[True, False])
    return fits.row(0, named=True) if len(fits) else None


def pareto_chart(table: pl.DataFrame, path: Path, cfg: ReportConfig = ReportConfig()) -> Path:
    """Two panels: F1 against size and against prediction time, Pareto fronts drawn, budget line."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    best = best_under_budget(table)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    for ax, cost, front, label in [(axes[0], "size_mb", "pareto_size", cfg.size_label),
                                   (axes[1], "predict_ms_per_item", "pareto_latency", "prediction time (ms/item, batch 1)")]:
        for fits, colour, what in [(True, "tab:blue", "within budget"), (False, "tab:gray", "over budget")]:
            part = table.filter(pl.col("within_budget") == fits)
            ax.scatter(part[cost], part["f1"], color=colour, s=20, label=what)
        on = table.filter(front).sort(cost)
        ax.step(on[cost], on["f1"], where="post", color="tab:orange", label="Pareto front")
        ax.scatter(on[cost], on["f1"], facecolors="none", edgecolors="tab:orange", s=80)
        # Named: the front within the budget and the best model overall (the rest are in Table 1; a
        # cluster of labels near the budget would be unreadable).
        named = on.filter(pl.col("within_budget") | (pl.col("f1") == table["f1"].max()))
        for k, r in enumerate(named.iter_rows(named=True)):  # labels point inwards: cheap ones right, costly left
            right = k < len(named) / 2
            ax.annotate(r["model"], (r[cost], r["f1"]), fontsize=6.5, xytext=(4 if right else -4, 6),
                        textcoords="offset points", ha="left" if right else "right")
        if best:
            ax.scatter([best[cost]], [best["f1"]], marker="*", s=250, color="tab:red", zorder=3,
                       label=f"best under {cfg.budget_mb:g} MB: {best['model']}")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(ScalarFormatter())  # 20, 50, 100 rather than 2x10^1
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.margins(x=0.15, y=0.1)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].axvline(cfg.budget_mb, color="tab:red", linestyle="--", label=f"budget {cfg.budget_mb:g} MB")
    axes[0].set_ylabel("validation sample-F1, out of fold (mean over seeds)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=len(labels))
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


def markdown(table: pl.DataFrame) -> str:
    shown = table.select("model", "seeds", "f1", "f1_std", "f1_tuned", "fit_seconds", "predict_ms_per_item", "size_mb", "params_m",
                         "within_budget", "pareto_size", "pareto_latency").with_columns(
        pl.selectors.float().round_sig_figs(4))
    with pl.Config(tbl_formatting="MARKDOWN", tbl_hide_column_data_types=True, tbl_hide_dataframe_shape=True,
                   tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=100, tbl_width_chars=1000, fmt_float="full"):
        return str(shown)


def build_report(cfg: ReportConfig = ReportConfig(), results: Path | None = None, bench: Path | None = None,
                 out: Path | None = None, progress=None) -> tuple[pl.DataFrame, dict | None, Path]:
    """Table 1 from the results table (default <runs>/results.parquet), finished e2e runs and exports
    under runs, joined with benchmark rows (loaded from `bench`, the missing ones measured now at
    batch 1); writes table1.md/.csv and pareto.png to `out` (default <runs>/report)."""
    runs, threads = cfg.runs, cfg.threads
    results, out = Path(results or runs / "results.parquet"), Path(out or runs / "report")
    from stores.results import read_results

    from featcache.study import benchmark as bm
    from featcache.runs.catalog import e2e_results

    # Before anything is read or measured: never into the runs it reads, onto a file, or where it cannot write.
    out = check_out_dir(out, inputs_of(runs=runs, files=[results, *([bench] if bench else [])]))
    parts = ([read_results(results)] if results.exists() else []) + \
        ([e2e_results(runs), export_results(runs)] if runs.exists() else [])
    parts = [p for p in parts if len(p)]
    if not parts:
        raise FileNotFoundError(f"no results: {results} does not exist and no finished end-to-end run is under {runs} "
                                "(run fit-head or ablate)")
    table = pl.concat(parts, how="diagonal_relaxed")
    rows = (bm.load_json(bench) if bench.suffix == ".json" else pl.read_csv(bench)) if bench else None
    encoders, run_ids = needed(table)
    have = set() if rows is None else set(rows["model"])
    todo_enc, todo_runs = [e for e in encoders if e not in have], sorted({r for r in run_ids if r not in have})
    if todo_enc or todo_runs:  # only batch-1 latency enters Table 1: one short cell each
        bench_cfg = bm.BenchConfig(threads=threads, batch_sizes=(1,), min_run_time=0.2, max_run_time=1.0)
        new = bm.benchmark(todo_enc, [runs / r for r in todo_runs], bench_cfg, runs, progress=progress)
        rows = new if rows is None else pl.concat([rows, new], how="diagonal_relaxed")
    t1 = table1(table, rows, cfg)
    out.mkdir(parents=True, exist_ok=True)
    with replacing(out / "table1.csv") as tmp:
        t1.write_csv(tmp)
    write_text(out / "table1.md", markdown(t1) + "\n")
    pareto_chart(t1, out / "pareto.png", cfg)
    return t1, best_under_budget(t1), out


def describe_report(t1: pl.DataFrame, best: dict | None, cfg: ReportConfig, out: Path) -> str:
    """Table 1, the best model under the budget, and the files written."""
    table = render(t1, {"model": "model", "seeds": "seeds", "f1": "F1 out of fold", "f1_std": "±", "f1_tuned": "tuned*",
                        "fit_seconds": "fit s", "predict_ms_per_item": "ms/item", "size_mb": "MB", "params_m": "params M",
                        "within_budget": "in budget", "pareto_size": "front (size)", "pareto_latency": "front (ms)"},
                   formats={"fit_seconds": ".2f", "predict_ms_per_item": ".2f", "size_mb": ".1f", "params_m": ".1f"})
    verdict = (f"{best['model']} (F1 out of fold {best['f1']:.4f}, {best['size_mb']:.1f} MB, "
               f"{best['predict_ms_per_item']:.1f} ms/item)" if best else "none fits")
    return (f"{table}\n\nbest under {cfg.budget_mb:g} MB: {verdict}\n"
            f"wrote {out / 'table1.md'}, {out / 'table1.csv'}, {out / 'pareto.png'}")
