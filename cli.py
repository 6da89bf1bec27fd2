"""featcache command line: python cli.py COMMAND --help.

Data flows one way: dataset -> encoder -> store -> head -> thresholds -> predictions.
Each command is a thin wrapper over one room of the package.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import re
import sys
from dataclasses import fields
from pathlib import Path

import typer

from featcache.data import DataError, DataSpec
from featcache.data.spec import flag
from featcache.tables import render

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Multi-label image+caption classification: cache features once, compare heads in seconds.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect a dataset: a COMP5329 folder or any table.")
app.add_typer(data_app, name="data")

# Options that mean the same in every command, with the same default.
DATA_HELP = ("The data: a COMP5329 folder (train.csv, test.csv, data/), a CSV/TSV/Parquet/JSONL table or a folder "
             "holding one, or a saved Hugging Face dataset.")


def data_option(required: bool = True, help: str = DATA_HELP):
    return typer.Option(... if required else None, envvar="FEATCACHE_DATA", show_envvar=True,
                        help=help + " Default: $FEATCACHE_DATA.")


_SPEC_TYPES = {"text": list[str], "image_root": Path, "labels_file": Path, "val_fraction": float, "split_seed": int}


def with_data_spec(command):
    """Adds DataSpec's fields (--image-col, --text-col, --labels-col, --label-sep, --id-col, --split-col,
    --image-root, --labels-file, --val-fraction, --split-seed) to a command with a --data option, and
    hands it `data` as one DataSpec (None without --data): the same checks as the Python API's."""
    spec_fields = [f for f in fields(DataSpec) if f.name != "source"]
    sig = inspect.signature(command)
    extra = [inspect.Parameter(f"spec_{f.name}", inspect.Parameter.KEYWORD_ONLY, annotation=_SPEC_TYPES.get(f.name, str),
                               default=typer.Option(None, flag(f.name), help=f.metadata["help"], rich_help_panel="Data"))
             for f in spec_fields]

    @functools.wraps(command)
    def wrapped(**kwargs):
        options = {f.name: kwargs.pop(f"spec_{f.name}") for f in spec_fields}
        source = kwargs.pop("data")
        try:
            spec = DataSpec.of(source=source, **options) if source is not None else None
        except (TypeError, ValueError) as e:
            fail(str(e))
        if source is None and any(v not in (None, []) for v in options.values()):
            fail("table options need --data (or $FEATCACHE_DATA)")
        return command(data=spec, **kwargs)

    wrapped.__signature__ = sig.replace(parameters=[*sig.parameters.values(), *extra])
    wrapped.__annotations__ = {**command.__annotations__, **{p.name: p.annotation for p in extra}}
    return wrapped


def data_flags(data: DataSpec | None) -> str:
    """`--data X [--labels-col ...]` for a next-step hint."""
    return data.flags() if data is not None else ""


def cache_option():
    return typer.Option(Path("cache"), help="Feature cache directory: <cache>/<name>.h5.")


def runs_option():
    return typer.Option(Path("runs"), help="Runs directory: one directory per run, and results.parquet.")


def json_option():
    return typer.Option(False, "--json", help="Print one JSON object (and nothing else on stdout).")


def device_option():
    return typer.Option("auto", callback=check_device, help="auto (a GPU when this machine has one), cpu, cuda or cuda:N.")


def seed_option():
    return typer.Option(None, min=0, help="The model's seed: initialisation, row order, augmentation, dropout "
                                          "(default 0; the train/validation split is always seed 0).")


def track_option():
    return typer.Option(None, help="tensorboard: losses and metrics under the run's tensorboard/ folder "
                                   "(default: $FEATCACHE_TRACK; none: off).")


def next_step(text: str) -> None:
    typer.echo(f"next: {text}")


def where(cache: Path | None = None, runs: Path | None = None) -> str:
    """The --cache/--runs flags a next step needs when they are not the defaults."""
    return "".join(f" --{name} {value}" for name, value, default in (("cache", cache, "cache"), ("runs", runs, "runs"))
                   if value is not None and Path(value) != Path(default))


def metrics_table(m: dict) -> str:
    """A run's metrics.json (fit-head, runs show): F1s and mAP at 0.5, with the fallback, tuned in-sample,
    and the out-of-fold figure of the metric the thresholds were tuned for."""
    from featcache.metrics import AVERAGES

    th = m.get("thresholds") or {}
    mode, chosen = th.get("mode"), th.get("chosen")
    tuned = f"tuned ({'auto: ' + chosen if mode == 'auto' and chosen else mode}, in-sample)"
    rows = [{"thresholds": name, **{k: m[key][k] for k in ("sample_f1", "micro_f1", "macro_f1", "map")}}
            for name, key in [("at 0.5", "at_0.5"), ("at 0.5 + fallback", "at_0.5_fallback"), (tuned, "tuned")]]
    rows.append({"thresholds": "tuned, out of fold (compare runs by this)",
                 AVERAGES[th.get("metric", "samples")]: m.get("tuned_out_of_fold")})
    return render(rows, {"thresholds": "thresholds", "sample_f1": "sample-F1", "micro_f1": "micro-F1",
                         "macro_f1": "macro-F1", "map": "mAP"})


def emit(doc: dict) -> None:
    typer.echo(json.dumps(doc, default=str))


def fail(message: str) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(2)


def check_device(device: str) -> str:
    """--device: auto, cpu, cuda or cuda:N, and only a GPU this machine has (torch is imported
    only when a GPU is named, so a warm cache stays quick)."""
    if device in ("auto", "cpu"):
        return device
    if not re.fullmatch(r"cuda(:\d+)?", device):
        raise typer.BadParameter(f"{device!r}: expected auto, cpu, cuda or cuda:N")
    import torch

    index = int(device.partition(":")[2] or 0)
    if not torch.cuda.is_available() or index >= torch.cuda.device_count():
        raise typer.BadParameter(f"{device!r}: this machine has {torch.cuda.device_count()} CUDA GPUs; use --device cpu")
    return device


@app.command("make-data")
def make_data(
    out: Path = typer.Argument(..., help="Directory to write the data into."),
    format: str = typer.Option("comp5329", help="comp5329 (train.csv, test.csv, labels.json, data/), or a table of the "
                                                "same rows: csv, tsv, parquet, jsonl or hf (a saved Hugging Face dataset)."),
    n_train: int = typer.Option(1000, min=1, help="Labelled rows."),
    n_test: int = typer.Option(200, min=0, help="Unlabelled rows (their labels go to test_labels.csv)."),
    seed: int = typer.Option(0, min=0, help="Same seed, same bytes."),
    image_size: int = typer.Option(64, min=8, max=4096, help="Side of the square images in pixels."),
    as_json: bool = json_option(),
):
    """Generate a deterministic dataset with learnable signal: the COMP5329 layout (with the real files' CSV faults) or a table."""
    from featcache.data.synth import make_dataset, make_table

    try:
        root = make_dataset(out, n_train=n_train, n_test=n_test, seed=seed, image_size=image_size) if format == "comp5329" \
            else make_table(out, format, n_train=n_train, n_test=n_test, seed=seed, image_size=image_size)
    except ValueError as e:
        fail(str(e))
    if as_json:
        return emit({"data": str(root), "train_rows": n_train, "test_rows": n_test})
    typer.echo(f"wrote {n_train} train + {n_test} test rows to {root}")
    next_step(f"python cli.py data check --data {root}")


@data_app.command("check")
@with_data_spec
def data_check(
    data: Path = data_option(),
    lenient: bool = typer.Option(False, help="Skip, count and report unparseable rows instead of failing."),
    as_json: bool = json_option(),
    plot: Path = typer.Option(None, help="Write a label-distribution chart (PNG) here."),
):
    """Rows read and skipped, label counts, labels per image, image sizes, caption lengths."""
    from featcache.data.check import check

    try:
        summary = check(data, lenient, plot)
    except (DataError, ValueError) as e:  # ValueError: an OutputError (--plot onto the data)
        fail(str(e))
    if as_json:
        typer.echo(json.dumps(summary))
        return
    typer.echo(f"{summary['root']}: {summary['train_rows']} labelled rows, {summary['test_rows']} rows to predict, "
               f"{summary['skipped_rows']} skipped; modalities: {' and '.join(summary['modalities'])}")
    read = summary["read_as"]
    if "table" in read:
        typer.echo(f"read as: id {read['id']}, image {read['image']}, text {read['text']}, labels {read['labels']} "
                   f"(separator {read['label_sep']!r}), split {read['split']}"
                   + (f"; detected: {', '.join(read['detected'])}" if read["detected"] else ""))
    for s in summary["skipped"]:
        typer.echo(f"  skipped {s['file']}:{s['line']}: {s['reason']}")
    typer.echo(render([{"label": lab, "name": summary["label_names"][lab], "count": n,
                        "freq": f"{summary['label_frequency'][lab]:.2%}"} for lab, n in summary["label_counts"].items()]))
    typer.echo(f"labels per image: {summary['labels_per_image']} (mean {summary['mean_labels_per_image']})")
    typer.echo(f"caption words: {summary['caption_words']}, multi-line captions: {summary['multiline_captions']}")
    if "image_size" in summary:
        typer.echo(f"images: {summary['images_found']} found, {len(summary['images_missing'])} missing, "
                   f"{len(summary['images_unreadable'])} unreadable; sizes {summary['image_size']}; modes {summary['image_modes']}")
    if plot:
        typer.echo(f"chart: {summary['plot']}")
    next_step(f"python cli.py extract --encoder efficientnet_lite0 {data_flags(data)}   (then a text encoder, e.g. minilm_l6)")


# --- stage 1: encoder names and feature extraction into the HDF5 cache ------------------------

@app.command("encoders")
def encoders_cmd(
    search: str = typer.Option(None, help="List timm's model names matching this pattern (e.g. 'convnext*'), to use as timm:<name>."),
    pretrained: bool = typer.Option(False, help="With --search: only names that have pretrained weights."),
    as_json: bool = json_option(),
):
    """The aliases (modality, width, input size, parameters, weights available now), and how to name any other model."""
    from featcache.encoders.models import describe_aliases, search_timm
    from featcache.encoders.registry import HOW_TO_NAME

    if search is not None:
        names = [f"timm:{n}" for n in search_timm(search, pretrained)]
        if as_json:
            return emit({"search": search, "names": names})
        typer.echo("\n".join(names) or f"no timm model matches {search!r}")
        return
    rows = describe_aliases()
    if as_json:
        return emit({"aliases": rows, "how_to_name": HOW_TO_NAME})
    typer.echo(render([{**r, "params": f"{r['params'] / 1e6:.1f}M"} for r in rows],
                      {"name": "name", "family": "family", "modality": "modality", "embed_dim": "dim", "input": "input",
                       "params": "params", "weights": "weights"}))
    typer.echo(f"\nAny other model: {HOW_TO_NAME}")


@app.command("extract")
@with_data_spec
def extract_cmd(
    encoder: str = typer.Option(..., help="An alias (see `encoders`), timm:<name>[.<tag>], or hf:<repo id or directory>[#cls]."),
    data: Path = data_option(),
    cache: Path = cache_option(),
    batch_size: int = typer.Option(32, min=1, max=65536, help="Items per forward pass."),
    device: str = device_option(),
    num_workers: int = typer.Option(None, min=0, max=64, help="DataLoader workers (default: 1 for images, 0 for text)."),
    threads: int = typer.Option(None, min=1, max=1024, help="Compute threads (default: all cores; torch's tuned batch by batch)."),
    backend: str = typer.Option("auto", help="auto (OpenVINO on a CPU when installed, else torch), torch or openvino."),
    precision: str = typer.Option("auto", help="auto (bf16 where the CPU or GPU runs it natively, else fp32), fp32, bf16 or fp16 (GPU)."),
    finetune_epochs: int = typer.Option(0, min=0, help="Fine-tune backbone + linear head first (train split only); cache <encoder>_ft."),
    lr: float = typer.Option(None, min=1e-9, max=10.0, help="Fine-tuning peak learning rate (default: FinetuneCfg.default_lr, by modality)."),
    finetune_freeze_bn: bool = typer.Option(None, help="Fine-tuning keeps BatchNorm statistics as loaded (default: FinetuneCfg's)."),
    finetune_augment: bool = typer.Option(None, help="Fine-tuning draws the study's image augmentations (default: FinetuneCfg's)."),
    views: int = typer.Option(0, min=0, max=64, help="Also cache K augmented views of each train image."),
    image_size: int = typer.Option(None, min=8, max=4096, help="Override the encoder's input size (changes the fingerprint)."),
    force: bool = typer.Option(False, help="Rebuild the cache even if one exists (one of another configuration, or damaged, is refused without it)."),
    weights: Path = typer.Option(None, help="Weights file or Hugging Face directory (first in the lookup order)."),
    random_init: bool = typer.Option(False, help="Random weights: tests and speed measurements only."),
    lenient: bool = typer.Option(False, help="Skip, count and report unreadable images instead of failing."),
    shard: int = typer.Option(None, min=0, help="Extract only shard I of --num-shards (default under torchrun: RANK)."),
    num_shards: int = typer.Option(None, min=1, help="Contiguous blocks of rows; the last shard to finish merges them (default under torchrun: WORLD_SIZE)."),
    as_json: bool = json_option(),
):
    """Run the backbone once over every train and test item; a warm cache returns in < 2 s."""
    import os

    from featcache.stage1 import build as stage1
    from featcache.encoders.weights import WeightsNotFound
    from stores.features import StoreError

    # torchrun sets RANK and WORLD_SIZE; a plain run is shard 0 of 1
    shard = int(os.environ.get("RANK", 0)) if shard is None else shard
    num_shards = int(os.environ.get("WORLD_SIZE", 1)) if num_shards is None else num_shards
    finetune = {k: v for k, v in {"epochs": finetune_epochs, "lr": lr, "freeze_bn": finetune_freeze_bn,
                                  "augment": finetune_augment}.items() if v is not None} if finetune_epochs else None
    try:
        result = stage1.run(data, encoder, cache, finetune=finetune, weights=weights, pretrained=not random_init,
                            image_size=image_size, batch_size=batch_size, device=device, num_workers=num_workers,
                            threads=threads, lenient=lenient, views=views, force=force, shard=shard, num_shards=num_shards,
                            backend=backend, precision=precision, log=lambda m: typer.echo(m, err=True))
    except (DataError, StoreError, WeightsNotFound, ValueError) as e:
        fail(str(e).strip("'\""))
    if as_json:
        return emit({"cache": str(result.path), "rows": result.rows, "fingerprint": result.fingerprint, "warm": result.warm,
                     "seconds": result.seconds, "items_per_s": result.items_per_s, "compute": str(result.compute),
                     "skipped": result.skipped})
    state = "warm, not recomputed" if result.warm else f"{result.items_per_s:.1f} items/s on {result.compute}"
    typer.echo(f"{result.path}: {result.rows} rows, fingerprint {result.fingerprint} ({state}, {result.seconds:.2f} s)")
    if result.skipped:
        typer.echo(f"skipped {len(result.skipped)} items: " + ", ".join(s["image_id"] for s in result.skipped[:20]))
    caches = sorted(p.stem for p in Path(cache).glob("*.h5"))
    next_step(f"python cli.py fit-head --encoders {','.join(caches)} {data_flags(data)}{where(cache)}" if len(caches) > 1
              else f"extract an encoder of the other modality too (python cli.py encoders lists them), then "
                   f"python cli.py fit-head --encoders {result.path.stem},<other> {data_flags(data)}{where(cache)}")


@app.command("merge-shards")
def merge_shards_cmd(
    encoder: str = typer.Option(..., help="The encoder name, or a cache name (<encoder>_ft)."),
    cache: Path = cache_option(),
    force: bool = typer.Option(False, help="Replace a complete cache built from a different configuration."),
    as_json: bool = json_option(),
):
    """Merge the shards of a sharded extract into <cache>/<name>.h5 (the last shard to finish does this itself)."""
    from featcache.stage1.shards import merge
    from featcache.encoders.registry import cache_name
    from stores.features import StoreError, cache_path

    path = cache_path(cache, cache_name(encoder))
    try:
        if not merge(path, force=force, say=lambda m: typer.echo(m, err=True)):
            fail(f"{path}: some shards are missing or unfinished (listed above)")
    except StoreError as e:
        fail(str(e))
    if as_json:
        return emit({"cache": str(path), "merged": True})
    typer.echo(f"{path}: merged")


# --- benchmark and report (issue 6): size, speed, and the best model under a size budget -------

def _csv_ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x)
    except ValueError:
        fail(f"expected comma-separated integers, got {text!r}")


@app.command("benchmark")
@with_data_spec
def benchmark_cmd(
    encoders: str = typer.Option("all", help="'all' (the aliases), 'none' or comma-separated encoder names (timm:/hf: too)."),
    heads: str = typer.Option("all", help="'all', 'none' or comma-separated runs: directories or ids under --runs (fitted heads, end-to-end models)."),
    runs: Path = runs_option(),
    device: str = typer.Option("cpu", callback=check_device, help="cpu or cuda[:N] (cpu by default: the study's small devices)."),
    batch_sizes: str = typer.Option("1,32", help="Throughput is measured at each batch size."),
    threads: int = typer.Option(1, min=1, max=1024, help="torch threads. 1 by default: while another process holds a core, two "
                                        "OpenMP threads spin-wait and batch-1 latency swings 10x; on an idle machine try all cores."),
    min_run_time: float = typer.Option(0.5, min=0.001, help="Seconds of timing per cell at least (then until IQR/median < 10%)..."),
    max_run_time: float = typer.Option(2.0, min=0.001, help="...or at most this many (a slower call still runs twice: warm-up + 1)."),
    data: Path = data_option(required=False, help="Dataset root: re-measures exported models' validation F1 (without it: as export recorded it)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (header + rows)."),
    csv: Path = typer.Option(None, help="Also write the table as CSV here."),
    as_markdown: bool = typer.Option(False, "--markdown", help="Print a Markdown table."),
    save: Path = typer.Option(None, help="Also write the JSON here (report --bench reads it)."),
):
    """Parameters, size on disk (fp32/fp16), input size, batch-1 latency, throughput and FLOPs per model."""
    from featcache.study import benchmark as bm
    from featcache.encoders.weights import WeightsNotFound

    from featcache.runs.catalog import find_run
    from featcache.runs.errors import RunError

    cfg = bm.BenchConfig(device=device, threads=threads,
                         batch_sizes=_csv_ints(batch_sizes), min_run_time=min_run_time, max_run_time=max_run_time)
    try:
        if heads not in ("all", "none"):  # ids or directories, as every command takes a run
            found = [find_run(h, runs) for h in heads.split(",") if h]
            heads = ",".join(d.relative_to(runs).as_posix() if d.is_relative_to(runs) else str(d) for d in found)
        df, doc = bm.run(encoders, heads, cfg, runs, save=save, csv=csv, data=data,
                         progress=lambda item: typer.echo(f"benchmark: {item}", err=True))
    except (FileNotFoundError, ValueError, WeightsNotFound, RunError) as e:  # unknown names, no device, a run that cannot be loaded
        fail(str(e))
    if as_json:
        return emit(doc)
    typer.echo(bm.table(df, doc["header"], markdown=as_markdown))
    next_step(f"python cli.py report --runs {runs} --budget-mb 100" + (f" --bench {save}" if save else ""))


@app.command("report")
def report_cmd(
    budget_mb: float = typer.Option(100.0, min=0.001, help="Size budget: the best model at most this large is named."),
    fp16: bool = typer.Option(False, help="Sizes of the weights saved in fp16 (default: fp32)."),
    results: Path = typer.Option(None, help="Results table written by fit-head and ablate (default: <runs>/results.parquet)."),
    runs: Path = runs_option(),
    bench: Path = typer.Option(None, help="Saved benchmark (--save JSON or --csv); missing rows are measured now."),
    out: Path = typer.Option(None, help="Writes table1.md, table1.csv and pareto.png here (default: <runs>/report)."),
    threads: int = typer.Option(1, min=1, max=1024, help="torch threads for rows measured now (see benchmark --help)."),
    as_json: bool = json_option(),
):
    """The study's Table 1 (F1, fit time, prediction time, size) and a Pareto chart; names the best model under the budget."""
    from featcache.study import report as rp

    cfg = rp.ReportConfig(budget_mb=budget_mb, fp16=fp16)
    results, out = results or runs / "results.parquet", out or runs / "report"
    try:
        t1, best = rp.build(results, runs, bench, out, cfg, threads,
                            progress=lambda item: typer.echo(f"benchmark: {item}", err=True))
    except (FileNotFoundError, ValueError) as e:  # no results; a run that is gone or unreadable; a missing row
        fail(str(e))
    if as_json:
        return emit({"table": t1.to_dicts(), "best_under_budget": best, "budget_mb": budget_mb,
                     "files": [str(out / f) for f in ("table1.md", "table1.csv", "pareto.png")]})
    typer.echo(render(t1, {"model": "model", "seeds": "seeds", "f1": "F1 out of fold", "f1_std": "±", "f1_tuned": "tuned*",
                           "fit_seconds": "fit s", "predict_ms_per_item": "ms/item", "size_mb": "MB", "params_m": "params M",
                           "within_budget": "in budget", "pareto_size": "front (size)", "pareto_latency": "front (ms)"},
                      formats={"fit_seconds": ".2f", "predict_ms_per_item": ".2f", "size_mb": ".1f", "params_m": ".1f"}))
    typer.echo(f"\nbest under {budget_mb:g} MB: " + (f"{best['model']} (F1 out of fold {best['f1']:.4f}, {best['size_mb']:.1f} MB, "
               f"{best['predict_ms_per_item']:.1f} ms/item)" if best else "none fits"))
    typer.echo(f"wrote {out / 'table1.md'}, {out / 'table1.csv'}, {out / 'pareto.png'}")
    next_step(f"python cli.py runs --runs {runs} lists the runs; python cli.py finetune --init-head ID trains a chosen "
              f"head end to end; python cli.py predict --run ID --out submission.csv writes its submission")


# --- end-to-end fine-tuning (issue 5): both backbones + the fusion head, on one machine or many --

def _e2e_default(field: str) -> str:
    """The "(default X)" of a finetune help text, read from E2EConfig (its module loads no torch)."""
    from featcache.e2e.config import E2EConfig

    value = getattr(E2EConfig, field)
    return f"(default {', '.join(value) or 'none' if isinstance(value, tuple) else value})"


@app.command("finetune")
@with_data_spec
def finetune_cmd(
    image_encoder: str = typer.Option(None, help=f"Image encoder: an alias (python cli.py encoders) or timm:<name> {_e2e_default('image_encoder')}."),
    text_encoder: str = typer.Option(None, help=f"Text encoder: an alias or hf:<repo id or directory> {_e2e_default('text_encoder')}."),
    fusion: str = typer.Option(None, help=f"Fusion (heads/fusion.py) {_e2e_default('fusion')}; taken from --init-head when given."),
    classifier: str = typer.Option(None, help=f"mlp or linear (the study's) {_e2e_default('classifier')}."),
    dropout: float = typer.Option(None, min=0.0, max=0.99, help=f"Head dropout {_e2e_default('dropout')}."),
    init_head: str = typer.Option(None, help="Start from a fitted stage-2 head (run directory or id): its encoders, fusion "
                                             "and weights; the recipe that gave the best final model."),
    epochs: int = typer.Option(None, min=1, max=100000, help=f"Epochs {_e2e_default('epochs')}; with --resume: the run's, or raise it."),
    batch_size: int = typer.Option(None, min=1, max=65536, help=f"Rows per step per process {_e2e_default('batch_size')}."),
    lr: float = typer.Option(None, min=1e-9, max=10.0, help=f"Adam learning rate {_e2e_default('lr')}."),
    image_lr: float = typer.Option(None, min=1e-9, max=10.0, help="The image backbone's learning rate (default: --lr)."),
    freeze_bn: bool = typer.Option(None, help=f"Keep the backbones' BatchNorm statistics as loaded {_e2e_default('freeze_bn')}."),
    schedule: str = typer.Option(None, help=f"cosine (5% warm-up, cosine decay) or constant (the study's) {_e2e_default('schedule')}."),
    ema: float = typer.Option(None, min=0.0, max=0.99999, help="Validate and save the moving average of the weights with this decay (e.g. 0.999; "
                                         f"0: the last step's) {_e2e_default('ema_decay')}."),
    freeze: list[str] = typer.Option(None, help=f"none | image | text | image-early (repeat or comma-separate) {_e2e_default('freeze')}."),
    early_fraction: float = typer.Option(None, min=0.0, max=1.0, help=f"image-early: share of the image backbone frozen, from the stem {_e2e_default('early_fraction')}."),
    image_size: int = typer.Option(None, min=8, max=4096, help="Image side in pixels (default: the encoder's input size)."),
    data: Path = data_option(required=False, help="Dataset root (train.csv, test.csv, data/); with --resume: the run's."),
    runs: Path = runs_option(),
    run_name: str = typer.Option(None, help="Run directory name (default e2e-<image>-<text>-<time>)."),
    resume: str = typer.Option(None, help="Continue this run (directory or id) after its last checkpoint (config from the run)."),
    config: Path = typer.Option(None, help="Replay a run: train again with the configuration in its config.json "
                                           "(options given here override it)."),
    keep: str = typer.Option("best,last", help="Checkpoints kept: last (resume continues after it), best (by validation "
                                               "mAP), all; comma-separated."),
    track: str = track_option(),
    random_init: bool = typer.Option(False, help="Random weights: tests and speed measurements only."),
    max_steps: int = typer.Option(None, min=0, help="At most this many steps per epoch (tests, timing)."),
    num_workers: int = typer.Option(None, min=0, max=64, help="DataLoader workers (default: 0 on <= 2 cores per process, else 1)."),
    threads: int = typer.Option(None, min=1, max=1024, help="torch threads per process (default: cores / processes, 1 if that is <= 2)."),
    device: str = typer.Option("auto", callback=check_device, help="auto (a GPU when this machine has one), cpu, cuda or "
                                                                "cuda:N (under torchrun: cuda:LOCAL_RANK)."),
    precision: str = typer.Option(None, help=f"auto (bf16/fp16 autocast on CUDA, fp32 on CPU), fp32, bf16, fp16 {_e2e_default('precision')}."),
    channels_last: bool = typer.Option(None, help=f"NHWC images (faster convolutions) {_e2e_default('channels_last')}."),
    metric: str = typer.Option(None, help=f"What the final thresholds maximise: samples, micro, macro {_e2e_default('metric')}."),
    train_fraction: float = typer.Option(None, min=0.001, max=1.0, help="Train on this share of the train rows (as fit-head --train-fraction; "
                                                    f"learning curves) {_e2e_default('train_fraction')}."),
    seed: int = seed_option(),
    log_every: int = typer.Option(20, min=1, help="Without a progress bar (other ranks, or --no-progress), log every N steps."),
    progress: bool = typer.Option(True, help="A progress bar of each epoch's steps (rank 0)."),
    as_json: bool = json_option(),
):
    """Train image + text backbones and the fusion head end to end (also under torchrun --nproc_per_node N)."""
    import os

    from featcache.e2e.config import E2EConfig, head_encoders
    from featcache.e2e.loop import train
    from featcache.e2e.rundir import read_config
    from featcache.runs.catalog import find_run
    from featcache.runs.errors import RunError
    from featcache.tracking import tracking_kind
    from featcache.encoders.weights import WeightsNotFound

    # Only the options given reach E2EConfig: its defaults are the only ones.
    given = {"image_encoder": image_encoder, "text_encoder": text_encoder, "fusion": fusion, "classifier": classifier,
             "dropout": dropout, "init_head": init_head, "epochs": epochs,
             "batch_size": batch_size, "lr": lr, "image_lr": image_lr, "freeze_bn": freeze_bn, "schedule": schedule,
             "ema_decay": ema, "freeze": tuple(f for item in freeze or () for f in item.split(",") if f) or None,
             "early_fraction": early_fraction, "image_size": image_size, "pretrained": False if random_init else None,
             "max_steps": max_steps, "precision": precision, "channels_last": channels_last, "metric": metric,
             "train_fraction": train_fraction, "seed": seed}
    try:
        resume = find_run(resume, runs) if resume else None
        if init_head:  # the head's encoders, unless named here
            given["init_head"] = str(find_run(init_head, runs))
            given = {**given, **{k: v for k, v in head_encoders(given["init_head"]).items() if given[k] is None}}
        if not resume and data is None:
            fail("no dataset: pass --data DIR or set FEATCACHE_DATA")
        replayed = E2EConfig.from_dict(read_config(config.parent if config.name == "config.json" else config)["config"]).__dict__ \
            if config else {}
        cfg = None if resume else E2EConfig(**{**replayed, **{k: v for k, v in given.items() if v is not None}})
        run_dir = train(cfg, data, runs, resume=resume, epochs=epochs, run_name=run_name, device=device,
                        num_workers=num_workers, threads=threads, log_every=log_every, keep=tuple(_names(keep)),
                        track=tracking_kind(track), progress=progress)
    except (DataError, WeightsNotFound, RunError, KeyError, ValueError, FileNotFoundError) as e:
        fail(str(e).strip("'\""))
    if int(os.environ.get("RANK", 0)) != 0:  # under torchrun rank 0 reports
        return
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if as_json:
        return emit({"run": str(run_dir), **metrics})
    typer.echo(f"{run_dir}: validation sample-F1 {metrics['at_0.5']['sample_f1']:.4f} at 0.5, "
               f"{metrics['tuned']['sample_f1']:.4f} tuned, {metrics['tuned_out_of_fold']:.4f} out of fold; "
               f"history.csv, loss.png, val_f1.png")
    next_step(f"python cli.py predict --run {run_dir} {data_flags(data) or '--data <the run data>'} --out submission.csv")


# --- stage 2 (issue 4): fusion heads on cached features, thresholds, ablation, submission -------

def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


@app.command("fit-head")
@with_data_spec
def fit_head_cmd(
    encoders: str = typer.Option(None, help="Comma-separated cache names whose features the head fuses, e.g. "
                                            "efficientnet_lite0,minilm_l6 (one: unimodal)."),
    fusion: str = typer.Option(None, help="late (default: the best measured), concat, gated, bilinear, attention or concat_relu."),
    classifier: str = typer.Option(None, help="mlp (default) or linear."),
    loss: str = typer.Option(None, help="bce (default), asl or focal."),
    lr: float = typer.Option(None, min=1e-9, max=10.0, help="AdamW learning rate (default: HeadConfig's)."),
    epochs: int = typer.Option(None, min=1, max=100000, help="Cosine schedule length in epochs (default 8, capped at 128 steps; given: no cap). Early stopping on validation mAP."),
    batch_size: int = typer.Option(None, min=1, max=65536, help="Rows per step."),
    width: int = typer.Option(None, min=1, max=65536, help="MLP hidden width / common width of the fusions."),
    dropout: float = typer.Option(None, min=0.0, max=0.99, help="Dropout on the fused input and the hidden layer."),
    weight_decay: float = typer.Option(None, min=0.0, max=10.0, help="AdamW weight decay."),
    seed: int = seed_option(),
    train_fraction: float = typer.Option(None, min=0.001, max=1.0, help="Train on this share of the train rows (seeded by the split; learning curves)."),
    metric: str = typer.Option(None, help="Metric the thresholds maximise: samples (default), micro or macro."),
    threshold_mode: str = typer.Option(None, help="auto (default: best out of fold on the validation rows), per-label, shrunk, global or flat (0.5)."),
    config: Path = typer.Option(None, help="Replay a run: fit again with the settings in its config.json (options given here override them)."),
    data: Path = data_option(),
    cache: Path = cache_option(),
    runs: Path = runs_option(),
    as_json: bool = json_option(),
):
    """Train one fusion head on cached features, tune thresholds on the validation part, save a run."""
    from dataclasses import replace

    from featcache.runs.errors import RunError
    from featcache.stage2.experiment import fit_head, replay_options
    from heads.train import HeadConfig
    from stores.features import StoreError

    try:
        saved = replay_options(config if config.name == "config.json" else config / "config.json") if config else \
            {"encoders": None, "cfg": HeadConfig(), "train_fraction": 1.0, "metric": "samples", "threshold_mode": "auto"}
        given = {"fusion": fusion, "classifier": classifier, "loss": loss, "lr": lr, "epochs": epochs,
                 "batch_size": batch_size, "seed": seed, "width": width, "dropout": dropout, "weight_decay": weight_decay}
        if epochs is not None:  # asked for epochs: run them all, without the default step cap
            given["max_steps"] = 0
        cfg = replace(saved["cfg"], **{k: v for k, v in given.items() if v is not None})
        names = _names(encoders) if encoders else saved["encoders"]
        if not names:
            fail("no encoders: pass --encoders a,b (cache names), or --config runs/<id>/config.json")
        run_dir, result = fit_head(data, cache, names, cfg, runs=runs,
                                   train_fraction=train_fraction if train_fraction is not None else saved["train_fraction"],
                                   metric=metric or saved["metric"], threshold_mode=threshold_mode or saved["threshold_mode"])
    except (DataError, StoreError, RunError, KeyError, ValueError) as e:
        fail(str(e).strip("'\""))
    m = result.metrics
    if as_json:
        return emit({"run": run_dir.name, "run_dir": str(run_dir), "encoders": result.encoders, "fusion": cfg.fusion,
                     "classifier": cfg.classifier, "loss": cfg.loss, "seed": cfg.seed, **m})
    typer.echo(f"{run_dir}: {' + '.join(result.encoders)} / {cfg.fusion} / {cfg.classifier} / {cfg.loss}, seed {cfg.seed}, "
               f"{m['n_train']} train / {m['n_val']} validation rows")
    chosen = m["thresholds"]["chosen"]
    typer.echo(metrics_table(m))
    if m["thresholds"]["candidates_out_of_fold"]:
        typer.echo("auto's candidates out of fold: " + ", ".join(
            f"{k} {v:.4f}" for k, v in m["thresholds"]["candidates_out_of_fold"].items()) + f" -> {chosen}")
    typer.echo(f"fit {m['fit_seconds']:.2f} s ({m['epochs_run']} epochs, best {m['best_epoch']}), thresholds {m['tune_seconds']:.2f} s")
    rid = run_dir.relative_to(runs).as_posix() if run_dir.is_relative_to(runs) else str(run_dir)
    next_step(f"python cli.py predict --run {rid} {data_flags(data)}{where(cache, runs)} --out submission.csv   "
              f"(or python cli.py finetune --init-head {rid} {data_flags(data)}{where(None, runs)} for the final model)")


@app.command("ablate")
@with_data_spec
def ablate_cmd(
    candidates: str = typer.Option(None, help="Comma-separated cache names to study: each alone, and every image+text pair "
                                              "with each fusion (default: every complete cache in --cache)."),
    fusions: str = typer.Option(None, help="Comma-separated fusions (default: all)."),
    seeds: int = typer.Option(3, min=1, max=1000, help="Head seeds per configuration (mean ± std)."),
    grid: str = typer.Option(None, help="'seed': add the seed report's batch/lr/epoch grids (see featcache/stage2/ablate.py)."),
    metric: str = typer.Option("samples", help="Metric the thresholds maximise: samples, micro or macro."),
    threshold_mode: str = typer.Option("auto", help="auto, per-label, shrunk, global or flat."),
    data: Path = data_option(),
    cache: Path = cache_option(),
    runs: Path = runs_option(),
    out: Path = typer.Option(None, help="Output directory (default <runs>/ablate-<time>)."),
    track: str = track_option(),
    jobs: int = typer.Option(None, help="Fits at a time, one process each, sharing the features (default: the machine's cores; "
                                        "the table is the same for any value)."),
    as_json: bool = json_option(),
):
    """Every encoder alone, every image+text pair with each fusion, several seeds: ranked by out-of-fold F1; table, Parquet/CSV, chart."""
    import polars as pl

    from featcache.stage2.ablate import ablate, format_table
    from featcache.tracking import tracking_kind
    from stores.features import StoreError

    try:
        table, raw, out = ablate(data, cache, _names(candidates) if candidates else None,
                                 fusions=_names(fusions) if fusions else None, seeds=seeds, grid=grid, metric=metric,
                                 threshold_mode=threshold_mode, runs=runs, out=out, track=tracking_kind(track),
                                 progress=not as_json, jobs=jobs)
    except (DataError, StoreError, KeyError, ValueError) as e:
        fail(str(e).strip("'\""))
    if as_json:
        return emit({"out": str(out), "table": table.to_dicts(), "runs": raw["run"].to_list()})
    typer.echo(format_table(table))
    typer.echo(f"{len(raw)} fits in {raw['fit_seconds'].sum():.1f} s of head training; "
               f"{out}/table.parquet, table.csv, chart.png, raw.parquet")
    first = table.row(0, named=True)
    best = raw.filter((pl.col("encoders").list.join("+") == first["encoders"]) & (pl.col("fusion") == first["fusion"])
                      & (pl.col("variant") == first["variant"])).sort("seed")["run"][0]
    next_step(f"python cli.py predict --run {best} {data_flags(data)}{where(cache, runs)} --out submission.csv   (the first "
              f"of the ranking, seed 0; or python cli.py finetune --init-head {best} {data_flags(data)}{where(None, runs)})")


@app.command("learning-curve")
@with_data_spec
def learning_curve_cmd(
    encoders: list[str] = typer.Option(..., help="Cache names of one curve, comma-separated (fused); repeat for more curves."),
    fusion: str = typer.Option(None, help="Fusion of a multi-encoder curve (as fit-head; default late)."),
    fractions: str = typer.Option(None, help="Shares of the train rows, comma-separated, nested per seed "
                                              "(default 0.0625,0.125,0.25,0.5,1: featcache.stage2.curve.FRACTIONS)."),
    seeds: int = typer.Option(3, min=1, max=1000, help="Row orders (and head seeds) per point: mean ± std."),
    extrapolate: str = typer.Option("24000", help="Row counts to extend the fitted power law to, comma-separated."),
    target: float = typer.Option(None, min=0.0, max=1.0, help="Draw this sample-F1 as a line on the chart."),
    threshold_mode: str = typer.Option("auto", help="auto, per-label, shrunk, global or flat."),
    data: Path = data_option(),
    cache: Path = cache_option(),
    runs: Path = runs_option(),
    out: Path = typer.Option(None, help="Output directory (default <runs>/curve-<time>)."),
    jobs: int = typer.Option(None, help="Fits at a time, one process each, sharing the features (default: the machine's cores; "
                                        "the table is the same for any value)."),
    as_json: bool = json_option(),
):
    """Validation sample-F1 against training rows, per encoder set: would more labelled rows pay?"""
    from featcache.stage2 import curve
    from heads.train import HeadConfig
    from stores.features import StoreError

    try:
        shares = tuple(float(f) for f in _names(fractions)) if fractions else curve.FRACTIONS
        table, fits, raw, out = curve.learning_curve(data, cache, [_names(e) for e in encoders],
                                                     base=HeadConfig(**({"fusion": fusion} if fusion else {})),
                                                     fractions=shares, seeds=seeds,
                                                     extrapolate_to=tuple(int(n) for n in _names(extrapolate)),
                                                     target=target, threshold_mode=threshold_mode, runs=runs, out=out,
                                                     jobs=jobs)
    except (DataError, StoreError, KeyError, ValueError) as e:
        fail(str(e).strip("'\""))
    if as_json:
        return emit({"out": str(out), "table": table.to_dicts(), "fits": fits})
    typer.echo(curve.format_table(table, fits))
    typer.echo(f"{len(raw)} fits in {raw['fit_seconds'].sum():.1f} s of head training; {out}/table.csv, curve.png, fits.json")
    next_step("more labelled rows pay where the extrapolated F1 still climbs; otherwise compare encoders with "
              f"python cli.py ablate {data_flags(data)}")


@app.command("predict")
@with_data_spec
def predict_cmd(
    run: str = typer.Option(None, help="A run, by directory or id (python cli.py runs lists them): a fitted head "
                                       "(fit-head, ablate) or an end-to-end run (finetune)."),
    model: Path = typer.Option(None, help="Or an exported model directory (python cli.py export): predicts with it alone, "
                                          "on the OpenVINO runtime, without the run or the caches."),
    data: Path = data_option(help="The data whose rows to predict (COMP5329: test.csv; a table: rows without labels "
                                  "or with split=test)."),
    cache: Path = cache_option(),
    runs: Path = runs_option(),
    out: Path = typer.Option(Path("submission.csv"), help="CSV (or .parquet): the id column and the labels, as the data "
                                                         "writes them (COMP5329: the Kaggle submission ImageID,Labels)."),
    proba: bool = typer.Option(False, help="Add one probability column per label."),
    as_json: bool = json_option(),
):
    """Predict the rows to predict with a run and its thresholds: one row each, in order, >= 1 label each."""
    from featcache.deploy.exported import predict_submission
    from featcache.runs.catalog import find_run, predict
    from featcache.runs.errors import RunError
    from stores.features import StoreError

    if (run is None) == (model is None):
        fail("give --run RUN or --model DIR (an exported model), one of them")
    try:
        source = model if model else find_run(run, runs)
        path = predict_submission(model, data, out, proba=proba) if model else predict(source, data, cache, out, proba)
    except (DataError, StoreError, RunError, KeyError, ValueError) as e:
        fail(str(e).strip("'\""))
    import polars as pl

    rows = pl.scan_parquet(path).select(pl.len()).collect().item() if path.suffix in (".parquet", ".pq") else \
        pl.scan_csv(path).select(pl.len()).collect().item()
    if as_json:
        return emit({"submission": str(path), "rows": rows, "model" if model else "run": str(source)})
    typer.echo(f"{path}: {rows} rows ({'exported model' if model else 'run'} {source})")
    next_step(f"python cli.py evaluate --run {run or model} --data <a labelled hold-out table> scores the run on rows it never saw")


@app.command("evaluate")
@with_data_spec
def evaluate_cmd(
    run: str = typer.Option(..., help="A run, by directory or id (python cli.py runs lists them)."),
    data: Path = data_option(help="A labelled table (or COMP5329 folder): every labelled row is scored."),
    runs: Path = runs_option(),
    as_json: bool = json_option(),
):
    """Score a run on any labelled data with its own thresholds: sample/micro/macro F1, mAP, and per label."""
    from featcache.study.holdout import evaluate
    from featcache.runs.errors import RunError
    from stores.features import StoreError

    try:
        result = evaluate(run, data, runs)
    except (DataError, StoreError, RunError, KeyError, ValueError) as e:
        fail(str(e).strip("'\""))
    if as_json:
        return emit(result)
    typer.echo(f"{result['run']} on {result['data']}: {result['rows']} labelled rows")
    typer.echo(render([{"thresholds": "the run's (tuned)", **result["tuned"]}, {"thresholds": "at 0.5", **result["at_0.5"]}],
                      {"thresholds": "thresholds", "sample_f1": "sample-F1", "micro_f1": "micro-F1", "macro_f1": "macro-F1",
                       "map": "mAP"}))
    typer.echo(render(result["per_label"], {"label": "label", "precision": "precision", "recall": "recall", "f1": "F1",
                                            "support": "support", "predicted": "predicted", "ap": "AP"}))


@app.command("export")
@with_data_spec
def export_cmd(
    run: str = typer.Option(..., help="A run, by directory or id (python cli.py runs lists them): a fitted head or a finished end-to-end run."),
    out: Path = typer.Option(..., help="Directory for the exported model: new, empty, or a previous export (replaced). Under --runs, report's Table 1 includes it."),
    format: str = typer.Option("openvino", help="openvino (fp32, fp16, int8) or onnx (fp32)."),
    precision: str = typer.Option("auto", help="auto (fp32; with --budget-mb the most precise that fits), fp32, fp16 or int8."),
    budget_mb: float = typer.Option(None, min=0.001, help="Size budget in MB (10^6 bytes): the most precise of fp32 > fp16 > int8 whose files fit."),
    data: Path = data_option(required=False, help="Dataset root: int8 calibrates on train rows of the run's split; the export is scored on its validation rows."),
    calibration_rows: int = typer.Option(300, min=1, max=100000, help="int8: train rows to calibrate on."),
    runs: Path = runs_option(),
    force: bool = typer.Option(False, "--force", help="Over a previous export that holds other files too: replace only the files it lists, keep the rest."),
    as_json: bool = json_option(),
):
    """One model for a small device: photo + caption in, probabilities out; thresholds and preprocessing beside it."""
    from featcache.deploy.export import export
    from featcache.runs.errors import RunError
    from featcache.encoders.weights import WeightsNotFound
    from stores.features import StoreError

    try:
        path, meta = export(run, out, format, precision, budget_mb, data, runs=runs, calibration_rows=calibration_rows,
                            force=force, say=lambda m: typer.echo(m, err=True))
    except (DataError, RunError, StoreError, WeightsNotFound, ValueError) as e:
        fail(str(e))
    if as_json:
        return emit(meta | {"dir": str(path)})
    v = meta.get("validation")
    typer.echo(f"{path}: {meta['format']} {meta['precision']}, {meta['size_mb']:.1f} MB"
               + (f", validation sample-F1 {v['sample_f1']:.4f} ({v['tuned_out_of_fold']:.4f} out of fold)" if v else ""))
    next_step(f"python cli.py predict --model {path}" + (f" {data_flags(data)}" if data else "") + " --out submission.csv   "
              f"(runs with the OpenVINO runtime alone; python cli.py report{where(None, runs)} ranks it)")


# --- demo (issue 7): the whole study on one dataset -------------------------------------------

@app.command("demo")
def demo_cmd(
    data: Path = typer.Option(None, help="Dataset root in the COMP5329 layout (default: generate one under --out/data)."),
    out: Path = typer.Option(Path("demo_out"), help="Everything the demo writes goes here."),
    n_train: int = typer.Option(2000, min=1, help="Generated labelled rows (without --data)."),
    n_test: int = typer.Option(400, min=0, help="Generated test rows (without --data)."),
    image_encoder: str = typer.Option("efficientnet_lite0", help="Image encoder (offline weights by default)."),
    text_encoder: str = typer.Option("minilm_l6", help="Text encoder (offline weights by default)."),
    seeds: int = typer.Option(3, min=1, max=1000, help="Head seeds per configuration."),
    random_init: bool = typer.Option(False, help="Random-init encoders (tests; the numbers mean nothing)."),
    as_json: bool = json_option(),
):
    """Data -> extract -> ablate -> chosen model -> submission -> size/latency -> Table 1 and plots."""
    from featcache.study.demo import DemoConfig, run
    from featcache.encoders.models import WeightsNotFound
    from featcache.runs.errors import RunError
    from stores.features import StoreError

    cfg = DemoConfig(out=out, data=data, n_train=n_train, n_test=n_test, image_encoder=image_encoder,
                     text_encoder=text_encoder, seeds=seeds, pretrained=not random_init)
    try:
        result = run(cfg, echo=(lambda m: typer.echo(m, err=True)) if as_json else typer.echo)
    except (DataError, StoreError, WeightsNotFound, RunError, ValueError) as e:
        fail(str(e))
    if as_json:
        return emit({"seconds": result["seconds"], "test_f1": result["test_f1"], "table": result["table"].to_dicts(),
                     "files": {k: str(v) for k, v in result["files"].items()},
                     **{k: result[k] for k in ("image_f1", "text_f1", "best_fusion", "fusion_f1", "fusion_wins")}})
    next_step("the same on your data: python cli.py demo --data DIR, or step by step: python cli.py data check --data DIR")


# --- runs: what has been trained, and how it scored ---------------------------------------------

runs_app = typer.Typer(help="The runs under --runs with their metrics; `runs show ID` shows one.", invoke_without_command=True)
app.add_typer(runs_app, name="runs")


@runs_app.callback()
def runs_cmd(
    ctx: typer.Context,
    runs: Path = runs_option(),
    as_json: bool = json_option(),
):
    """Every complete run with its metrics, newest first (tuned: in-sample; out of fold: the honest figure)."""
    if ctx.invoked_subcommand is not None:
        return
    from featcache.runs.catalog import run_table
    from featcache.runs.errors import RunError

    try:
        table = run_table(runs, say=lambda m: typer.echo(m, err=True))
    except (RunError, ValueError, OSError) as e:  # a damaged results table or run file: named, one line
        fail(str(e))
    if as_json:
        return emit({"runs": table.to_dicts()})
    if not len(table):
        typer.echo(f"no complete runs under {runs}")
        next_step("python cli.py fit-head --encoders a,b --data DIR   (or ablate)")
        return
    typer.echo(render(table, {"run": "run", "kind": "kind", "time": "time", "encoders": "encoders", "head": "head",
                              "seed": "seed", "sample_f1": "tuned", "tuned_out_of_fold": "out of fold", "map": "mAP",
                              "fit_seconds": "fit s"}, formats={"fit_seconds": ".2f"}))
    next_step("python cli.py runs show ID   (any unique part of a run id works wherever a run is named)")


@runs_app.command("show")
def runs_show_cmd(
    run: str = typer.Argument(..., help="A run: its directory, id, or a part of the id only it has."),
    runs: Path = runs_option(),
    as_json: bool = json_option(),
):
    """One run: its settings, command line, versions, metrics and files."""
    from featcache.runs.catalog import describe
    from featcache.runs.errors import RunError

    try:
        doc = describe(run, runs)
    except RunError as e:
        fail(str(e))
    if as_json:
        return emit(doc)
    config, m = doc["config"], doc["metrics"]
    typer.echo(f"{doc['run']} ({doc['kind']})")
    settings = config.get("head") or config.get("config") or {}
    typer.echo("encoders: " + " + ".join(config.get("encoder_names") or config.get("encoders") or []))
    typer.echo("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    if config.get("command"):
        typer.echo(f"command: {config['command']}  (git {config.get('git') or '-'}; "
                   + ", ".join(f"{k} {v}" for k, v in (config.get("versions") or {}).items()) + ")")
    typer.echo(metrics_table(m))
    typer.echo("files: " + ", ".join(doc["files"]))
    data = os.environ.get("FEATCACHE_DATA")
    next_step(f"python cli.py predict --run {run}{where(None, runs)} --out submission.csv"
              + ("" if data else "   (add --data DIR, or set FEATCACHE_DATA)"))


if __name__ == "__main__":
    sys.exit(app())
