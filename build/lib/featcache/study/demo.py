"""`demo`: the whole study on one dataset, start to finish, in a few minutes on a CPU.

dataset -> extract (an image and a text encoder, offline weights) -> ablate (each encoder alone,
each fusion) -> the chosen head -> predictions (submission CSV) -> size/latency table -> Table 1
and plots. Every step is the same code the individual commands run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import polars as pl

from featcache.data import Dataset, load_dataset
from featcache.metrics import f1
from featcache.study.config import DemoConfig
from featcache.outputs import write_text


def run_demo(cfg: DemoConfig, echo=print) -> dict:
    from featcache.study import benchmark as bm
    from featcache.study import report as rp
    from featcache.data.check import plot_label_distribution, summarize_data
    from featcache.stage1.extract import extract
    from featcache.stage2.ablate import ablate, format_ablation
    from featcache.runs.catalog import predict

    t0 = time.perf_counter()
    out = Path(cfg.out)
    files: dict[str, Path] = {}

    echo("== 1/6 data")
    ds = _dataset(cfg, out, echo)
    summary = summarize_data(ds)
    files["label chart"] = plot_label_distribution(summary, out / "labels.png")
    echo(f"{ds.root}: {summary['train_rows']} train, {summary['test_rows']} test rows, {summary['skipped_rows']} skipped")

    echo("== 2/6 extract (each encoder runs once; a warm cache returns at once)")
    cache = out / "cache"
    for name in (cfg.image_encoder, cfg.text_encoder):
        res = extract(ds, name, cache, pretrained=cfg.pretrained, log=echo)
        echo(f"{res.path}: {res.rows} rows, fingerprint {res.fingerprint}, "
             + ("warm cache, model not loaded" if res.warm else f"extracted in {res.seconds:.0f} s"))
        files[f"cache {name}"] = res.path

    echo("== 3/6 ablate: each encoder alone, each fusion of both, several head seeds")
    runs = out / "runs"
    table, raw, _ = ablate(ds, [cfg.image_encoder, cfg.text_encoder], cache=cache, seeds=cfg.seeds, runs=runs,
                           out=runs / "ablate")
    files["ablation table"] = runs / "ablate" / "table.csv"
    files["ablation chart"] = runs / "ablate" / "chart.png"
    echo(format_ablation(table))

    echo("== 4/6 the chosen model: the first of the ranking (out-of-fold validation F1, mean over seeds), seed 0")
    best = table.row(0, named=True)
    chosen = raw.filter((pl.col("encoders").list.join("+") == best["encoders"]) & (pl.col("fusion") == best["fusion"])
                        & (pl.col("variant") == best["variant"])).sort("seed")["run"][0]
    chosen_dir = runs / chosen
    submission = predict(chosen_dir, ds, cache, out / "submission.csv")
    files["chosen run"], files["submission"] = chosen_dir, submission
    test_f1 = _score_submission(ds, submission)
    echo(f"chosen: {best['encoders']} / {best['fusion']} (validation sample-F1 out of fold "
         f"{best['tuned_out_of_fold']:.4f} ± {best['tuned_out_of_fold_std']:.4f}, in-sample {best['sample_f1']:.4f}); "
         f"{submission}: {len(ds.test)} rows"
         + (f"; test sample-F1 {test_f1:.4f} (labels from test_labels.csv)" if test_f1 is not None else ""))

    echo("== 5/6 size and latency (1 thread)")
    bench_cfg = bm.BenchConfig(threads=1, batch_sizes=cfg.batch_sizes, min_run_time=0.3, max_run_time=1.0)
    header = bench_cfg.header()
    bench = bm.benchmark([cfg.image_encoder, cfg.text_encoder], [chosen_dir], bench_cfg, runs)
    files["benchmark"] = out / "benchmark.json"
    write_text(files["benchmark"], json.dumps(bm.to_json(bench, header), indent=1))
    echo(bm.table(bench, header, markdown=True))

    echo("== 6/6 Table 1 and Pareto chart")
    t1, best_small, _ = rp.build_report(rp.ReportConfig(budget_mb=cfg.budget_mb, runs=runs), bench=files["benchmark"],
                                        out=out / "report")
    files["table 1"], files["pareto chart"] = out / "report" / "table1.md", out / "report" / "pareto.png"
    echo(rp.markdown(t1.head(8)))
    if best_small:
        echo(f"best under {cfg.budget_mb:g} MB: {best_small['model']} (F1 {best_small['f1']:.4f}, "
             f"{best_small['size_mb']:.1f} MB)")

    verdict = _fusion_verdict(table, cfg)
    echo("\n" + verdict["text"])
    echo(f"\ndemo finished in {time.perf_counter() - t0:.0f} s; files:")
    for what, path in files.items():
        echo(f"  {what:<26} {path}")
    return {"seconds": time.perf_counter() - t0, "table": table, "test_f1": test_f1, "files": files, **verdict}


def _dataset(cfg: DemoConfig, out: Path, echo) -> Dataset:
    if cfg.data is not None:
        return load_dataset(cfg.data)
    from featcache.data.synth import make_dataset

    root = out / "data"
    if not (root / "train.csv").exists():
        echo(f"generating {cfg.n_train} + {cfg.n_test} rows into {root}")
        make_dataset(root, n_train=cfg.n_train, n_test=cfg.n_test, seed=cfg.data_seed)
    return load_dataset(root)


def _score_submission(ds: Dataset, submission: Path) -> float | None:
    """Sample-F1 of a submission where the dataset ships test labels (generated data does)."""
    truth_path = ds.root / "test_labels.csv"
    if not truth_path.exists():
        return None
    truth = pl.read_csv(truth_path, schema_overrides={"Labels": pl.String})
    pred = pl.read_csv(submission, schema_overrides={"Labels": pl.String})
    joined = truth.join(pred, on="ImageID", suffix="_pred", how="left")
    to_y = lambda col: ds.label_space.encode([tuple(int(t) for t in s.split()) for s in joined[col]])  # noqa: E731
    return f1(to_y("Labels"), to_y("Labels_pred"), "samples")


def _fusion_verdict(table: pl.DataFrame, cfg: DemoConfig) -> dict:
    by = {(r["encoders"], r["fusion"]): r["tuned_out_of_fold"] for r in table.iter_rows(named=True) if r["variant"] == "default"}
    image = max(v for (e, _), v in by.items() if e == cfg.image_encoder)
    text = max(v for (e, _), v in by.items() if e == cfg.text_encoder)
    fused = {f: v for (e, f), v in by.items() if "+" in e}
    best_fusion = max(fused, key=fused.get)
    lines = [f"image alone ({cfg.image_encoder}): {image:.4f}", f"text alone ({cfg.text_encoder}):  {text:.4f}"]
    lines += [f"fusion {f:<10}: {v:.4f}  ({v - max(image, text):+.4f} over the better modality)"
              for f, v in sorted(fused.items(), key=lambda kv: -kv[1])]
    return {"text": "validation sample-F1, thresholds tuned out of fold, mean over seeds\n" + "\n".join(lines),
            "image_f1": image, "text_f1": text, "best_fusion": best_fusion, "fusion_f1": fused[best_fusion],
            "fusion_wins": bool(np.greater(fused[best_fusion], max(image, text)))}
