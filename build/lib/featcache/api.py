"""The Python API: the functions the command line calls, by the same names, with a model to predict
with at the end.

    import featcache as fc
    fc.extract(data, "efficientnet_lite0")                        # stage 1: the HDF5 cache
    fc.extract(data, "minilm_l6")
    model = fc.fit_head(data, ["efficientnet_lite0", "minilm_l6"])  # stage 2: a head, saved as a run
    model.metrics["tuned_out_of_fold"]                             # the honest validation F1
    model.predict(["photo.jpg"], ["a dog lying on a couch"])       # -> [(label names,)]
    table, raw, out = fc.ablate(data, ["efficientnet_lite0", "minilm_l6"])  # every encoder and fusion, ranked
    final = fc.finetune(data, init_head=model.run_dir)             # end to end from the chosen head
    fc.predict(final.run_dir, data, out="submission.csv")           # the Kaggle submission
    fc.export(final.run_dir, "model-int8", data, precision="int8")  # one model for a small device
    model = fc.load("runs/<id>")                                   # any saved run, by path or id

Each function's options are the fields of its config (featcache.*.config: ExtractConfig,
FitConfig, AblateConfig, CurveConfig, E2EConfig and TrainOptions, ExportConfig, PredictConfig,
BenchConfig, ReportConfig, DemoConfig, SynthConfig), checked when the config is made: a bad value
gets the same one-line ConfigError here as on the command line. `data` is anything
`fc.load_dataset` takes: a COMP5329 folder, a table file (CSV, TSV, Parquet, JSONL) or a folder
holding one, a saved Hugging Face dataset, a DataFrame or `datasets.Dataset`, a `fc.DataSpec`
naming its columns, or a loaded `fc.Dataset`. Errors name the file and row (DataError), the cache
(StoreError), the run (RunError) or the option (ConfigError).

Renamed in this release (the old names stay one release): extract_features -> extract,
fine_tune -> finetune, export_model -> export, study -> ablate (returns (table, raw, out) as the
command writes them).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from featcache.options import ConfigError, known
from featcache.workspace import RUNS

# The API's names defined elsewhere: each is imported when first used, so `from featcache.api import
# extract` loads stage 1 alone (a warm cache answers without torch). featcache/__init__.py's __all__
# names what `import featcache as fc` offers.
ELSEWHERE = {
    "Dataset": "featcache.data", "DataError": "featcache.data", "DataSpec": "featcache.data",
    "load_dataset": "featcache.data", "check_data": "featcache.data.check", "make_data": "featcache.data.synth",
    "extract": "featcache.stage1.build:extract_features", "ablate": "featcache.stage2.ablate",
    "learning_curve": "featcache.stage2.curve", "export": "featcache.deploy.export",
    "Predictor": "featcache.deploy.predictor", "RunError": "featcache.runs.errors",
    "benchmark": "featcache.study.benchmark:run_benchmark", "report": "featcache.study.report:build_report",
    "evaluate": "featcache.study.holdout", "ConfigError": "featcache.options",
    "extract_features": "featcache.stage1.build",  # the old name of extract, for one release
}


def __getattr__(name: str):
    if name not in ELSEWHERE:
        raise AttributeError(f"module 'featcache.api' has no attribute {name!r}")
    module, _, attr = ELSEWHERE[name].partition(":")
    return getattr(importlib.import_module(module), attr or name)


def fit_head(data, encoders: list[str] | None = None, *, config: str | Path | None = None, **options):
    """Fit one fusion head on the cached `encoders` (their features fused; one: unimodal), tune its
    thresholds on the validation part and save the run; the fitted model. `options`: FitConfig's,
    flat (fusion="late", classifier, loss, lr, epochs, width, dropout, seed, train_fraction, metric,
    threshold_mode, cache, runs); `config`: replay a run's config.json. The command line's fit-head
    is featcache.stage2.experiment.fit_head, which this calls."""
    from featcache.deploy.predictor import Predictor
    from featcache.stage2.experiment import fit_head as fit_and_save

    run_dir, _ = fit_and_save(data, encoders, config=config, **options)
    return Predictor.load(run_dir)


def finetune(data=None, *, resume: str | Path | None = None, config: str | Path | None = None,
             **options) -> Path:
    """Train image + text backbones and the head end to end; the run directory. `options`:
    E2EConfig's fields, flat (image_encoder, text_encoder, fusion, ..., init_head: a stage-2 run to
    start from; its defaults are the best measured recipe) and TrainOptions' (runs, run_name,
    device, keep, track, ...). `resume`: continue a run after its last checkpoint (its config and
    data; `epochs` may raise its epoch count). `config`: train again with a run's config.json, the
    options given overriding it."""
    from featcache.e2e.config import E2EConfig, TrainOptions, head_encoders
    from featcache.e2e.loop import train
    from featcache.e2e.rundir import read_config
    from featcache.options import flat, from_flat
    from featcache.runs.catalog import find_run

    train_keys = set(TrainOptions.__dataclass_fields__)
    how = {k: v for k, v in options.items() if k in train_keys}
    what = {k: v for k, v in options.items() if k not in train_keys}
    runs = TrainOptions(**how).runs  # every option checked before anything is read
    if resume is not None:
        unknown = set(what) - {"epochs"}
        if unknown:
            raise ConfigError(f"{', '.join(sorted(unknown))}: a resumed run trains with its own config (only epochs "
                              f"may be raised)")
        return train(None, data, resume=find_run(resume, runs), epochs=what.get("epochs"), **how)
    replayed = flat(E2EConfig.from_dict(read_config(Path(config).parent if Path(config).name == "config.json"
                                                    else config)["config"])) if config else {}
    cfg = from_flat(E2EConfig, {**replayed, **what})
    if cfg.init_head:  # the head's encoders, unless named here
        init_head = str(find_run(cfg.init_head, runs))
        cfg = from_flat(E2EConfig, {**replayed, **head_encoders(init_head), **what, "init_head": init_head})
    if data is None:
        raise ConfigError("no dataset: pass data (--data DIR, or set FEATCACHE_DATA)")
    return train(cfg, data, **how)


def predict(run: str | Path, data, out: str | Path | None = None, **options) -> Path:
    """The dataset's rows to predict, in order (COMP5329: the Kaggle submission for test.csv): the id
    column and the labels as the data writes them, in `out` (PredictConfig: out, proba). `run`: a
    run directory or id under `runs`; or an exported model directory (its predictor alone)."""
    from featcache.deploy.config import PredictConfig
    from featcache.deploy.exported import EXPORT_FILE, predict_submission
    from featcache.runs.catalog import find_run
    from featcache.runs.catalog import predict as predict_rows
    from featcache.workspace import Workspace

    where = Workspace(**{k: options.pop(k) for k in ("cache", "runs") if k in options})
    cfg = PredictConfig(**known(PredictConfig, {**options, **({"out": Path(out)} if out is not None else {})}))
    if (Path(run) / EXPORT_FILE).is_file():
        return predict_submission(run, data, cfg.out, proba=cfg.proba)
    return predict_rows(find_run(run, where.runs), data, where.cache, cfg.out, cfg.proba)


def load(run: str | Path, runs: str | Path = RUNS):
    """A saved run (fit-head, ablate, finetune) by directory or id, as a model that takes photos and captions."""
    from featcache.deploy.predictor import Predictor

    return Predictor.load(run, runs)


def demo(**options) -> dict:
    """The whole study on one dataset (DemoConfig's options): data -> extract -> ablate -> chosen model
    -> submission -> size and latency -> Table 1 and plots."""
    from featcache.study.config import DemoConfig
    from featcache.study.demo import run_demo

    echo = options.pop("echo", print)
    return run_demo(DemoConfig(**known(DemoConfig, options)), echo=echo)


def merge_shards(encoder: str, **options) -> Path:
    """Merge the shards of a sharded extract into <cache>/<name>.h5 (the last shard to finish does
    this itself). `options`: cache, force. StoreError when some shard is missing or unfinished."""
    from featcache.encoders.registry import cache_name
    from featcache.stage1.shards import merge
    from featcache.workspace import Workspace
    from stores.features import StoreError, cache_path

    force = options.pop("force", False)
    path = cache_path(Workspace(**known(Workspace, options)).cache, cache_name(encoder))
    if not merge(path, force=force):
        raise StoreError(f"{path}: some shards are missing or unfinished (listed above)")
    return path


# One release of the old names (README: "Renamed in this release"); extract_features is above.
def fine_tune(data=None, **options):
    """The old name of `finetune` (one release): the trained model rather than its directory."""
    return load(finetune(data, **options), options.get("runs", RUNS))


def export_model(run: str | Path, out: str | Path, data=None, **options) -> Path:
    """The old name of `export` (one release): the export's directory alone."""
    from featcache.deploy.export import export

    return export(run, out, data, **options)[0]
