"""featcache command line: python cli.py COMMAND --help.

Data flows one way: dataset -> encoder -> store -> head -> thresholds -> predictions. Each command
parses its options and calls one function of the Python API (featcache.api), by the same name. The
options are generated from the fields of that function's config (featcache.options), so their
defaults, ranges, choices and help live there, and a bad value gets the same one-line error here
as in Python. tests/test_cli_options.py keeps default, range and choice literals out of this file; the machinery that
makes options from configs is featcache/commandline.py.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from featcache.commandline import configured, data_flags, emit, json_flag, next_step, say, where
from featcache.deploy.config import ExportConfig, PredictConfig
from featcache.e2e.config import E2EConfig, TrainOptions
from featcache.stage1.config import ExtractConfig
from featcache.stage2.config import AblateConfig, CurveConfig, FitConfig
from featcache.study.config import BenchConfig, DemoConfig, ReportConfig
from featcache.data.synth import SynthConfig
from featcache.workspace import Workspace

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Multi-label image+caption classification: cache features once, compare heads in seconds.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect a dataset: a COMP5329 folder or any table.")
runs_app = typer.Typer(help="The runs under --runs with their metrics; `runs show ID` shows one.", invoke_without_command=True)
app.add_typer(data_app, name="data")
app.add_typer(runs_app, name="runs")
# --- data -------------------------------------------------------------------------------------

@app.command("make-data")
@configured(SynthConfig)
def make_data_cmd(out: Path = typer.Argument(..., help="Directory to write the data into."), *, options,
                  as_json: bool = json_flag()):
    """Generate a deterministic dataset with learnable signal: the COMP5329 layout (with the real files' CSV faults) or a table."""
    from featcache.api import make_data

    root = make_data(out, **options)
    if as_json:
        return emit({"data": str(root), **options})
    typer.echo(f"wrote {root}")
    next_step(f"python cli.py data check --data {root}")


@data_app.command("check")
@configured(data=True)
def data_check(*, options, data, lenient: bool = typer.Option(False, help="Skip, count and report unparseable rows."),
               plot: Path = typer.Option(None, help="Write a label-distribution chart (PNG) here."),
               as_json: bool = json_flag()):
    """Rows read and skipped, label counts, labels per image, image sizes, caption lengths."""
    from featcache.api import check_data
    from featcache.data.check import format_summary

    summary = check_data(data, lenient, plot)
    if as_json:
        return emit(summary)
    typer.echo(format_summary(summary))
    next_step(f"python cli.py extract --encoder efficientnet_lite0 {data_flags(data)}   (then a text encoder, e.g. minilm_l6)")


@app.command("encoders")
def encoders_cmd(search: str = typer.Option(None, help="List timm's model names matching this pattern (e.g. 'convnext*'), "
                                                       "to use as timm:<name>."),
                 pretrained: bool = typer.Option(False, help="With --search: only names that have pretrained weights."),
                 as_json: bool = json_flag()):
    """The aliases (modality, width, input size, parameters, weights available now), and how to name any other model."""
    from featcache.encoders.models import describe_aliases, format_aliases, search_timm
    from featcache.encoders.registry import HOW_TO_NAME

    if search is not None:
        names = [f"timm:{n}" for n in search_timm(search, pretrained)]
        return emit({"search": search, "names": names}) if as_json else typer.echo("\n".join(names) or f"no timm model matches {search!r}")
    rows = describe_aliases()
    if as_json:
        return emit({"aliases": rows, "how_to_name": HOW_TO_NAME})
    typer.echo(format_aliases(rows) + f"\n\nAny other model: {HOW_TO_NAME}")


# --- stage 1 ----------------------------------------------------------------------------------

@app.command("extract")
@configured(ExtractConfig, data=True)
def extract_cmd(encoder: str = typer.Option(..., help="An alias (see `encoders`), timm:<name>[.<tag>], or hf:<repo id or "
                                                      "directory>[#cls]."), *, options, data, as_json: bool = json_flag()):
    """Run the backbone once over every train and test item; a warm cache answers at once."""
    from featcache.api import extract

    result = extract(data, encoder, log=say, **options)
    if as_json:
        return emit({k: getattr(result, k) for k in ("path", "rows", "fingerprint", "warm", "seconds", "items_per_s",
                                                     "compute", "skipped")})
    typer.echo(result.summary())
    caches = sorted(p.stem for p in result.path.parent.glob("*.h5"))
    next_step(f"python cli.py fit-head --encoders {','.join(caches)} {data_flags(data)}{where(options)}" if len(caches) > 1
              else "extract an encoder of the other modality too (python cli.py encoders lists them), then python cli.py "
                   f"fit-head --encoders {result.path.stem},<other> {data_flags(data)}{where(options)}")


@app.command("merge-shards")
@configured(Workspace)
def merge_shards_cmd(encoder: str = typer.Option(..., help="The encoder name, or a cache name (<encoder>_ft)."), *, options,
                     force: bool = typer.Option(False, help="Replace a complete cache of another configuration."),
                     as_json: bool = json_flag()):
    """Merge the shards of a sharded extract into <cache>/<name>.h5 (the last shard to finish does this itself)."""
    from featcache.api import merge_shards

    options.pop("runs", None)
    path = merge_shards(encoder, force=force, **options)
    return emit({"cache": str(path), "merged": True}) if as_json else typer.echo(f"{path}: merged")


# --- stage 2 ----------------------------------------------------------------------------------

@app.command("fit-head")
@configured(FitConfig, data=True)
def fit_head_cmd(*, options, data, encoders: list[str] = typer.Option(None, help="Cache names whose features the head fuses "
                                                                                 "(comma-separated or repeated; one: unimodal)."),
                 config: Path = typer.Option(None, help="Replay a run: its config.json (or directory); options given here "
                                                        "override it."), as_json: bool = json_flag()):
    """Train one fusion head on cached features, tune thresholds on the validation part, save a run."""
    from featcache.stage2.experiment import describe_fit, fit_head

    run_dir, result = fit_head(data, _names(encoders), config=config, **options)
    if as_json:
        return emit({"run": run_dir.name, "run_dir": str(run_dir), "encoders": result.encoders, **result.metrics})
    typer.echo(describe_fit(run_dir, result))
    next_step(f"python cli.py predict --run {run_dir.name} {data_flags(data)}{where(options)} --out submission.csv   "
              f"(or python cli.py finetune --init-head {run_dir.name} {data_flags(data)} for the final model)")


def _names(items: list[str] | None) -> list[str] | None:
    return [n for item in items or () for n in item.split(",") if n] or None


@app.command("ablate")
@configured(AblateConfig, data=True)
def ablate_cmd(*, options, data, candidates: list[str] = typer.Option(None, help="Cache names to study: each alone, and "
               "every image+text pair with each fusion (default: every cache of this data in --cache)."),
               as_json: bool = json_flag()):
    """Every encoder alone, every image+text pair with each fusion, several seeds: ranked by out-of-fold F1."""
    from featcache.api import ablate
    from featcache.stage2.ablate import best_run, format_ablation

    table, raw, out = ablate(data, _names(candidates), progress=not as_json, **options)
    if as_json:
        return emit({"out": str(out), "table": table.to_dicts(), "runs": raw["run"].to_list()})
    typer.echo(format_ablation(table) + f"\n{len(raw)} fits in {raw['fit_seconds'].sum():.1f} s of head training; "
               f"{out}/table.parquet, table.csv, chart.png, raw.parquet")
    best = best_run(table, raw)
    next_step(f"python cli.py predict --run {best} {data_flags(data)}{where(options)} --out submission.csv   (the first "
              f"of the ranking, seed 0; or python cli.py finetune --init-head {best} {data_flags(data)})")


@app.command("learning-curve")
@configured(CurveConfig, data=True)
def learning_curve_cmd(*, options, data, encoders: list[str] = typer.Option(..., help="Cache names of one curve, "
                       "comma-separated (fused); repeat for more curves."), as_json: bool = json_flag()):
    """Validation sample-F1 against training rows, per encoder set: would more labelled rows pay?"""
    from featcache.api import learning_curve
    from featcache.stage2.curve import format_curve

    table, fits, raw, out = learning_curve(data, [_names([e]) for e in encoders], **options)
    if as_json:
        return emit({"out": str(out), "table": table.to_dicts(), "fits": fits})
    typer.echo(format_curve(table, fits) + f"\n{len(raw)} fits in {raw['fit_seconds'].sum():.1f} s of head training; "
               f"{out}/table.csv, curve.png, fits.json")
    next_step("more labelled rows pay where the extrapolated F1 still climbs; otherwise compare encoders with "
              f"python cli.py ablate {data_flags(data)}")


# --- end to end, prediction, export -----------------------------------------------------------

@app.command("finetune")
@configured(E2EConfig, TrainOptions, data=True, data_required=False)
def finetune_cmd(*, options, data, resume: str = typer.Option(None, help="Continue this run (directory or id) after its last "
                                                                         "checkpoint (its config and data)."),
                 config: Path = typer.Option(None, help="Train again with a run's config.json (options here override it)."),
                 as_json: bool = json_flag()):
    """Train image + text backbones and the fusion head end to end (also under torchrun --nproc_per_node N)."""
    from featcache.api import finetune
    from featcache.e2e.rundir import describe_finished

    run_dir = finetune(data, resume=resume, config=config, **options)
    if int(os.environ.get("RANK", 0)) != 0:  # under torchrun rank 0 reports
        return
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if as_json:
        return emit({"run": str(run_dir), **metrics})
    typer.echo(describe_finished(run_dir, metrics))
    next_step(f"python cli.py predict --run {run_dir} {data_flags(data) or '--data <the run data>'} --out submission.csv")


@app.command("predict")
@configured(PredictConfig, Workspace, data=True)
def predict_cmd(*, options, data, run: str = typer.Option(..., "--run", "--model", help="A run, by directory or id "
                "(python cli.py runs lists them), or an exported model directory (python cli.py export)."),
                as_json: bool = json_flag()):
    """Predict the rows to predict with a run and its thresholds: one row each, in order, >= 1 label each."""
    from featcache.api import predict
    from featcache.outputs import count_rows

    path = predict(run, data, **options)
    rows = count_rows(path)
    if as_json:
        return emit({"submission": str(path), "rows": rows, "run": run})
    typer.echo(f"{path}: {rows} rows ({run})")
    next_step(f"python cli.py evaluate --run {run} --data <a labelled hold-out table> scores the run on rows it never saw")


@app.command("evaluate")
@configured(Workspace, data=True)
def evaluate_cmd(*, options, data, run: str = typer.Option(..., help="A run, by directory or id (python cli.py runs lists "
                                                                     "them)."), as_json: bool = json_flag()):
    """Score a run on any labelled data with its own thresholds: sample/micro/macro F1, mAP, and per label."""
    from featcache.api import evaluate
    from featcache.study.holdout import format_evaluation

    result = evaluate(run, data, options.get("runs", Workspace().runs))
    return emit(result) if as_json else typer.echo(format_evaluation(result))


@app.command("export")
@configured(ExportConfig, data=True, data_required=False)
def export_cmd(*, options, data, run: str = typer.Option(..., help="A run, by directory or id: a fitted head or a finished "
               "end-to-end run."), out: Path = typer.Option(..., help="Directory for the exported model: new, empty, or a "
               "previous export (replaced)."), as_json: bool = json_flag()):
    """One model for a small device: photo + caption in, probabilities out; thresholds and preprocessing beside it."""
    from featcache.api import export
    from featcache.deploy.export import describe_export

    path, meta = export(run, out, data, say=say, **options)
    if as_json:
        return emit(meta | {"dir": str(path)})
    typer.echo(describe_export(path, meta))
    next_step(f"python cli.py predict --model {path} {data_flags(data)} --out submission.csv   (runs with the OpenVINO "
              "runtime alone; python cli.py report ranks it)")


# --- the study --------------------------------------------------------------------------------

@app.command("benchmark")
@configured(BenchConfig, data=True, data_required=False)
def benchmark_cmd(*, options, data, csv: Path = typer.Option(None, help="Also write the table as CSV here."),
                  save: Path = typer.Option(None, help="Also write the JSON here (report --bench reads it)."),
                  as_markdown: bool = typer.Option(False, "--markdown", help="Print a Markdown table."),
                  as_json: bool = json_flag()):
    """Parameters, size on disk (fp32/fp16), input size, batch-1 latency, throughput and FLOPs per model."""
    from featcache.api import benchmark
    from featcache.study.benchmark import table

    df, doc = benchmark(BenchConfig(**options), save=save, csv=csv, data=data,
                        progress=lambda item: say(f"benchmark: {item}"))
    if as_json:
        return emit(doc)
    typer.echo(table(df, doc["header"], markdown=as_markdown))
    next_step(f"python cli.py report{where(options)}" + (f" --bench {save}" if save else ""))


@app.command("report")
@configured(ReportConfig)
def report_cmd(*, options, results: Path = typer.Option(None, help="Results table (default: <runs>/results.parquet)."),
               bench: Path = typer.Option(None, help="Saved benchmark (--save JSON or --csv); missing rows are measured now."),
               out: Path = typer.Option(None, help="Writes table1.md, table1.csv and pareto.png here (default: <runs>/report)."),
               as_json: bool = json_flag()):
    """The study's Table 1 (F1, fit time, prediction time, size) and a Pareto chart; names the best model under the budget."""
    from featcache.api import report
    from featcache.study.report import describe_report

    cfg = ReportConfig(**options)
    t1, best, out = report(cfg, results, bench, out, progress=lambda item: say(f"benchmark: {item}"))
    if as_json:
        return emit({"table": t1.to_dicts(), "best_under_budget": best, "budget_mb": cfg.budget_mb,
                     "files": [str(out / f) for f in ("table1.md", "table1.csv", "pareto.png")]})
    typer.echo(describe_report(t1, best, cfg, out))
    next_step("python cli.py runs lists the runs; python cli.py finetune --init-head ID trains a chosen head end to end")


@app.command("demo")
@configured(DemoConfig)
def demo_cmd(*, options, as_json: bool = json_flag()):
    """Data -> extract -> ablate -> chosen model -> submission -> size/latency -> Table 1 and plots."""
    from featcache.api import demo

    result = demo(**options, echo=say if as_json else typer.echo)
    if as_json:
        return emit({"seconds": result["seconds"], "test_f1": result["test_f1"], "table": result["table"].to_dicts(),
                     "files": {k: str(v) for k, v in result["files"].items()},
                     **{k: result[k] for k in ("image_f1", "text_f1", "best_fusion", "fusion_f1", "fusion_wins")}})
    next_step("the same on your data: python cli.py demo --data DIR, or step by step: python cli.py data check --data DIR")


# --- runs -------------------------------------------------------------------------------------

@runs_app.callback()
@configured(Workspace)
def runs_cmd(ctx: typer.Context, *, options, as_json: bool = json_flag()):
    """Every complete run with its metrics, newest first (tuned: in-sample; out of fold: the honest figure)."""
    if ctx.invoked_subcommand is not None:
        return
    from featcache.runs.catalog import run_table
    from featcache.runs.show import format_runs

    table = run_table(Workspace(**options).runs, say=say)
    return emit({"runs": table.to_dicts()}) if as_json else typer.echo(format_runs(table))


@runs_app.command("show")
@configured(Workspace)
def runs_show_cmd(run: str = typer.Argument(..., help="A run: its directory, id, or a part of the id only it has."), *,
                  options, as_json: bool = json_flag()):
    """One run: its settings, command line, versions, metrics and files."""
    from featcache.runs.catalog import describe
    from featcache.runs.show import format_run

    doc = describe(run, Workspace(**options).runs)
    return emit(doc) if as_json else typer.echo(format_run(doc))


if __name__ == "__main__":
    sys.exit(app())
