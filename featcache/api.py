"""The Python API: the functions the command line calls, with a model to predict with at the end.

    import featcache as fc
    fc.extract_features(data, "efficientnet_lite0")               # stage 1: the HDF5 cache
    fc.extract_features(data, "minilm_l6")
    model = fc.fit_head(data, ["efficientnet_lite0", "minilm_l6"])  # stage 2: a head, saved as a run
    model.metrics["tuned_out_of_fold"]                             # the honest validation F1
    model.predict(["photo.jpg"], ["a dog lying on a couch"])       # -> [(label ids,)]
    table = fc.study(data, ["efficientnet_lite0", "minilm_l6"])    # every encoder and fusion, ranked
    final = fc.fine_tune(data, init_head=model.run_dir)            # end to end from the chosen head
    fc.predict(final.run_dir, data, "submission.csv")               # the Kaggle submission
    fc.export_model(final.run_dir, "model-int8", precision="int8", data=data)  # one model for a small device
    model = fc.load("runs/<id>")                                   # any saved run, by path or id

(`extract_features`, `fine_tune` and `export_model`, not `extract`, `finetune` and `export`:
those names are featcache's modules.) `data` is anything `fc.load_dataset` takes: a COMP5329
folder, a table file (CSV, TSV, Parquet, JSONL) or a folder holding one, a saved Hugging Face
dataset, a DataFrame or `datasets.Dataset`, a `fc.DataSpec` naming its columns, or a loaded
`fc.Dataset` (`fc.Dataset.from_table(src, image=..., text=[...], labels=..., sep=...)`).
`fc.evaluate(run, data)` scores a run on any labelled table. Errors name the file and row
(DataError), the cache (StoreError) or the run (RunError).
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import polars as pl

from heads.train import HeadConfig

from featcache.data import Dataset, DataError, DataSpec, load_dataset  # noqa: F401  offered as fc.Dataset, fc.DataSpec, ...
from featcache.study.holdout import evaluate  # noqa: F401  offered as fc.evaluate
from featcache.e2e.config import E2EConfig, head_encoders
from featcache.e2e.loop import train
from featcache.deploy.export import export as export_run
from featcache.stage1.extract import ExtractResult
from featcache.deploy.predictor import Predictor
from featcache.runs.catalog import find_run
from featcache.runs.catalog import predict as predict_submission
from featcache.runs.errors import RunError  # noqa: F401  offered as fc.RunError
from featcache.stage1.build import run as run_stage1
from featcache.stage2.ablate import ablate
from featcache.stage2.experiment import fit_head as fit_stage2

# featcache/__init__.py's __all__ names what `import featcache as fc` offers from here.


def extract_features(data: str | Path | Dataset, encoder: str, cache: str | Path = "cache", **options) -> ExtractResult:
    """Run `encoder` (an alias, timm:<name> or hf:<repo or dir>) once over every train and test
    row into <cache>/<name>.h5; a warm cache returns at once. `options`: those of `extract`
    (batch_size, backend, precision, views, lenient, force, weights, finetune={"epochs": N}, ...)."""
    return run_stage1(data, encoder, cache, **options)


def fit_head(data: str | Path, encoders: list[str], cache: str | Path = "cache", runs: str | Path = "runs", *,
             train_fraction: float = 1.0, metric: str = "samples", threshold_mode: str = "auto",
             **head) -> Predictor:
    """Fit one fusion head on the cached `encoders` (their features fused; one: unimodal), tune its
    thresholds on the validation part and save the run; the fitted model. `head`: HeadConfig's
    fields (fusion="late", classifier, loss, lr, epochs, width, dropout, seed, ...)."""
    unknown = sorted(set(head) - {f.name for f in fields(HeadConfig)})
    if unknown:
        raise TypeError(f"fit_head: unknown option(s) {', '.join(unknown)}; HeadConfig has "
                        f"{', '.join(f.name for f in fields(HeadConfig))}")
    run_dir, _ = fit_stage2(data, cache, list(encoders), HeadConfig(**head), train_fraction=train_fraction,
                            metric=metric, threshold_mode=threshold_mode, runs=Path(runs))
    return Predictor.load(run_dir)


def study(data: str | Path, candidates: list[str] | None = None, cache: str | Path = "cache",
          runs: str | Path = "runs", **options) -> pl.DataFrame:
    """The ablation: each candidate cache alone and every image+text pair with each fusion, several
    seeds; the summary ranked by out-of-fold F1 (`within_noise` marks ties with the first). Runs
    and the table, raw rows and chart go under runs/ablate-<time>/. `options`: fusions, seeds,
    grid, metric, threshold_mode, out, progress, track."""
    table, _, _ = ablate(data, cache, candidates, runs=Path(runs), **options)
    return table


def fine_tune(data: str | Path, runs: str | Path = "runs", *, run_name: str | None = None, device: str = "auto",
             keep: tuple[str, ...] = ("best", "last"), track: str | None = None, **config) -> Predictor:
    """Train image + text backbones and the head end to end (E2EConfig's fields: image_encoder,
    text_encoder, init_head=a stage-2 run to start from, epochs, ...; its defaults are the best
    measured recipe); the trained model."""
    if config.get("init_head"):  # the head's encoders, unless named here
        config = {**head_encoders(config["init_head"]), **config, "init_head": str(find_run(config["init_head"], runs))}
    run_dir = train(E2EConfig(**config), data, runs, run_name=run_name, device=device, keep=tuple(keep), track=track)
    return Predictor.load(run_dir)


def load(run: str | Path, runs: str | Path = "runs") -> Predictor:
    """A saved run (fit-head, ablate, finetune) by directory or id, as a model that takes photos and captions."""
    return Predictor.load(run, runs)


def predict(run: str | Path, data, out: str | Path = "submission.csv", cache: str | Path = "cache",
            runs: str | Path = "runs", proba: bool = False) -> Path:
    """The dataset's rows to predict, in order (COMP5329: the Kaggle submission for test.csv): the id
    column and the labels as the data writes them; `proba`: a probability column per label."""
    return predict_submission(find_run(run, runs), data, cache, out, proba)


def export_model(run: str | Path, out: str | Path, format: str = "openvino", precision: str = "auto",
                 budget_mb: float | None = None, data: str | Path | None = None, runs: str | Path = "runs") -> Path:
    """One self-contained model (photo + caption in, probabilities out) with its thresholds and
    preprocessing in export.json; int8 calibrates on train rows of `data`. featcache.deploy.exported's
    ExportedModel.load(out) predicts with it on the OpenVINO runtime alone."""
    return export_run(run, out, format, precision, budget_mb, data, runs=runs)[0]

