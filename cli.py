"""featcache command line: python cli.py COMMAND --help.

Data flows one way: dataset -> encoder -> store -> head -> thresholds -> predictions.
Each command is a thin wrapper over one room of the package.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from featcache.data import DataError, load_dataset

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Multi-label image+caption classification: cache features once, compare heads in seconds.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect a dataset in the COMP5329 layout.")
app.add_typer(data_app, name="data")

DEFAULT_DATA = Path("../shared/data/comp5329")


def fail(message: str) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(2)


@app.command("make-data")
def make_data(
    out: Path = typer.Argument(..., help="Directory to write train.csv, test.csv, labels.json and data/ into."),
    n_train: int = typer.Option(1000, help="Labelled rows."),
    n_test: int = typer.Option(200, help="Unlabelled rows (their labels go to test_labels.csv)."),
    seed: int = typer.Option(0, help="Same seed, same bytes."),
    image_size: int = typer.Option(64, help="Side of the square images in pixels."),
):
    """Generate a deterministic dataset in the COMP5329 layout, with learnable signal and the real files' CSV faults."""
    from featcache.synth import make_dataset

    root = make_dataset(out, n_train=n_train, n_test=n_test, seed=seed, image_size=image_size)
    typer.echo(f"wrote {n_train} train + {n_test} test rows to {root}")


@data_app.command("check")
def data_check(
    data: Path = typer.Option(DEFAULT_DATA, help="Dataset root (train.csv, test.csv, data/)."),
    lenient: bool = typer.Option(False, help="Skip, count and report unparseable rows instead of failing."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    plot: Path = typer.Option(None, help="Write a label-distribution chart (PNG) here."),
):
    """Rows read and skipped, label counts, labels per image, image sizes, caption lengths."""
    from featcache.datacheck import plot_label_distribution, summarize

    try:
        summary = summarize(load_dataset(data, lenient=lenient))
    except DataError as e:
        fail(str(e))
    if plot:
        summary["plot"] = str(plot_label_distribution(summary, plot))
    if as_json:
        typer.echo(json.dumps(summary))
        return
    typer.echo(f"{summary['root']}: {summary['train_rows']} train rows, {summary['test_rows']} test rows, "
               f"{summary['skipped_rows']} skipped")
    for s in summary["skipped"]:
        typer.echo(f"  skipped {s['file']}:{s['line']}: {s['reason']}")
    typer.echo(f"{'label':>5}  {'name':<14} {'count':>6} {'freq':>7}")
    for lab, n in summary["label_counts"].items():
        typer.echo(f"{lab:>5}  {summary['label_names'][lab]:<14} {n:>6} {summary['label_frequency'][lab]:>7.2%}")
    typer.echo(f"labels per image: {summary['labels_per_image']} (mean {summary['mean_labels_per_image']})")
    typer.echo(f"caption words: {summary['caption_words']}, multi-line captions: {summary['multiline_captions']}")
    if "image_size" in summary:
        typer.echo(f"images: {summary['images_found']} found, {len(summary['images_missing'])} missing, "
                   f"{len(summary['images_unreadable'])} unreadable; sizes {summary['image_size']}; modes {summary['image_modes']}")
    if plot:
        typer.echo(f"chart: {summary['plot']}")


if __name__ == "__main__":
    sys.exit(app())
