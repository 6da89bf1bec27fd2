"""Export a run for a small device: its encoders and head as ONE model (photo + caption in,
probabilities out) in OpenVINO IR (fp32, fp16, int8) or ONNX (fp32), with what a predictor needs
beside it; featcache.deploy.exported predicts from the directory without torch.

    out, meta = export("runs/<id>", "runs/exports/lite0-minilm-int8", precision="int8", data=data)
    out, meta = export("runs/<id>", "runs/exports/small", budget_mb=100, data=data)  # fp32, else fp16, else int8

A stage-2 run's encoders are rebuilt from what its caches record (registry name, weights file,
input size; a fine-tuned `_ft` cache's backbone) and checked against the caches' weight hashes;
an end-to-end run holds its own. fp16 stores OpenVINO's weights in half precision (a CPU computes
in fp32); int8 is NNCF post-training quantisation calibrated on train rows of the run's split,
never validation or test rows. With `data` the exported model is scored on the run's validation
rows and the figures go into export.json, where the report's Table 1 finds them. Everything is
written into a hidden directory beside `out` and renamed into place once complete.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
import warnings
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

from featcache import __version__
from featcache.data import Dataset, load_dataset
from featcache.deploy.exported import EXAMPLE_CAPTION, EXPORT_FILE, ExportedModel, Preprocessor, model_mb
from featcache.deploy.exported import score_on_validation
from featcache.deploy.config import ExportConfig
from featcache.options import known
from featcache.outputs import OutputError, check_out_dir, inputs_of, os_errors, sweep_stale, write_text
from featcache.runs.catalog import find_run
from featcache.runs.kinds import open_run
from featcache.data.split import split_rows

MODEL_FILE = {"openvino": "model.xml", "onnx": "model.onnx"}


class Composed(nn.Module):
    """Encoders -> head -> sigmoid: the graph that is exported. Inputs, in order: per image
    encoder its pixels [B, 3, S, S] (float RGB 0..255; the encoder normalises), per text encoder
    input_ids and attention_mask [B, T]."""

    def __init__(self, encoders: list[nn.Module], head: nn.Module, dtypes: list[torch.dtype | None] | None = None):
        super().__init__()
        self.encoders, self.head = nn.ModuleList(encoders), head
        self.head.bf16 = False  # fp32 throughout: the export's precision is chosen when it is saved
        # A stage-2 head was fitted on features stored as float16: rounded the same way here, a row
        # scores as `predict` scores it from the cache (as featcache.deploy.predictor does).
        self.dtypes = [None if d in (None, torch.float32) else d for d in (dtypes or [None] * len(encoders))]

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        xs, k = [], 0
        for enc, dtype in zip(self.encoders, self.dtypes):
            if enc.cfg.is_text:
                x = enc({"input_ids": inputs[k], "attention_mask": inputs[k + 1]}).float()
                k += 2
            else:
                x = enc(inputs[k]).float()
                k += 1
            xs.append(x if dtype is None else x.to(dtype).float())
        return torch.sigmoid(self.head(xs))

    def example(self, batch_size: int = 2) -> tuple[torch.Tensor, ...]:
        """Inputs to trace with; captions of two lengths, so the attention mask is traced with zeros."""
        out = []
        for enc in self.encoders:
            if enc.cfg.is_text:
                batch = enc.collate((["a dog", EXAMPLE_CAPTION] * batch_size)[:batch_size])
                out += [batch["input_ids"], batch["attention_mask"]]
            else:
                out.append(enc.example_batch(batch_size).float())
        return tuple(out)


@dataclass
class Source:
    """A run's model as one module, and what export.json says about it."""

    run: Path
    module: Composed
    meta: dict  # labels, thresholds, source, split

    @property
    def has_text(self) -> bool:
        return any(enc.cfg.is_text for enc in self.module.encoders)


def torch_model(run: str | Path) -> Composed:
    """The run's model in torch fp32, photo + caption in: what an export converts (for comparisons)."""
    return load_source(run).module


def load_source(run: str | Path) -> Source:
    """The model of a finished run of any kind (featcache.runs.kinds); RunError names a run that is
    not one or is incomplete."""
    run = Path(run)
    found = open_run(run)
    config, metrics = found.finished()  # a run killed while saving is never exported
    model, dtypes = found.photo_model(config)
    facts = found.summary(config, metrics)
    scores = {k: metrics.get(k) for k in ("sample_f1", "tuned_out_of_fold", "map")}
    meta = {"labels": {"ids": config["label_ids"], "names": config.get("label_names")},
            "thresholds": asdict(found.thresholds()),
            "source": {"run": str(run.resolve()), "kind": found.kind, "encoders": facts["encoders"],
                       "head": facts["head"], "fit_seconds": facts["fit_seconds"], "metrics": scores},
            "split": {**facts["split"], "dataset_fingerprint": config.get("dataset_fingerprint")}}
    return Source(run, Composed(list(model.encoders), model.head, dtypes).eval(), meta)


# --- the export -----------------------------------------------------------------------------------

def export(run: str | Path, out: str | Path, data=None, *, say=None, **options) -> tuple[Path, dict]:
    """Write the run's model (a directory, or a run id under `runs`: featcache.runs.catalog.find_run) to the
    directory `out` (created, or a previous export replaced): (out, the export.json written).
    ValueError (OutputError, RunError) naming the file or option when the run, the options, the data
    or `out` do not do; under a budget that nothing fits, the sizes of every precision tried. int8
    needs `data` (calibration); so do the validation figures. `out` replaces a previous export
    only when it holds nothing else (export.json lists the files it wrote); with `force` the
    files it lists are replaced and everything else in `out` is kept. `options`: ExportConfig's."""
    cfg = ExportConfig(**known(ExportConfig, options))
    say = say or (lambda m: print(m, file=sys.stderr))  # progress: the slow steps, a precision over the budget
    if cfg.precision == "int8" and data is None:
        raise ValueError("--precision int8 is calibrated on train rows of the run's split: pass the dataset (--data)")
    run, out = find_run(run, cfg.runs), Path(out)
    found = open_run(run)  # not a run: one line, before anything is built
    dataset = load_dataset(data) if data is not None else None
    # Before any work: never into (or over a folder holding) the run, its caches or the dataset,
    # onto a file, where it cannot write, or over files featcache did not write.
    check_out_dir(out, inputs_of(dataset=dataset, caches=found.cache_dirs(), run_dirs=[run]), whole=True)
    keep = _foreign(out, cfg.force)
    source = load_source(run)
    if dataset is not None:
        _check_dataset(source, dataset)
    stage = _stage_dir(out)
    try:
        meta = write_export(source, stage, cfg, dataset, say)
        if dataset is not None and cfg.validate:
            say(f"{out}: scoring the exported model on the run's validation rows")
            model = ExportedModel.load(stage)
            meta["validation"] = score_on_validation(model, dataset)[0]
            del model
            write_text(stage / EXPORT_FILE, json.dumps(meta, indent=1))
        meta["files"] = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file())
        write_text(stage / EXPORT_FILE, json.dumps(meta, indent=1))  # the manifest: what --force may replace
        _put_in_place(stage, out, keep)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out, meta


def write_export(source: Source, stage: Path, cfg: ExportConfig, dataset: Dataset | None, say) -> dict:
    """The model files, tokenizers and export.json in `stage`; the first precision that fits."""
    specs, encoders = _describe(source.module, stage)
    meta = {"format": cfg.format, "model": MODEL_FILE[cfg.format], "inputs": specs,
            "output": {"name": "probs", "shape": [-1, len(source.meta["labels"]["ids"])], "dtype": "float32",
                       "what": "sigmoid probabilities, in the order of labels.ids"},
            "encoders": encoders, **source.meta, "params": sum(p.numel() for p in source.module.parameters())}
    converted, sizes, calibration = None, {}, None
    for precision in cfg.candidates():
        for f in ("model.xml", "model.bin", "model.onnx"):  # the last precision tried, over the budget
            (stage / f).unlink(missing_ok=True)
        if cfg.format == "onnx":
            _save_onnx(source.module, specs, stage / "model.onnx")
        else:
            import openvino as ov

            if converted is None:  # converted once, saved at each precision
                converted = _to_openvino(source.module, specs)
            model = converted
            if precision == "int8":
                if dataset is None:
                    raise ValueError(f"{source.run}: {_over(sizes, cfg.budget_mb)}; int8 is calibrated on train rows "
                                     "of the run's split: pass the dataset (--data)")
                calibration = _calibration_rows(source.meta["split"], dataset, cfg)
                say(f"int8: calibrating on {calibration['rows']} train rows of the run's split")
                items = _calibration_inputs(meta, stage, dataset, calibration["image_ids"])
                model = _quantize(converted, items, source.has_text)
                calibration["model_type"] = "transformer" if source.has_text else "default"
            ov.save_model(model, str(stage / "model.xml"), compress_to_fp16=precision == "fp16")
        sizes[precision] = round(model_mb(stage), 3)
        if cfg.budget_mb is None or sizes[precision] <= cfg.budget_mb:
            break
        say(f"{cfg.format} {precision}: {sizes[precision]:.1f} MB, over the {cfg.budget_mb:g} MB budget")
    else:
        tip = "; --format openvino has fp16 and int8" if cfg.format == "onnx" else ""
        raise ValueError(f"{source.run}: {_over(sizes, cfg.budget_mb)}; raise --budget-mb{tip}")
    from importlib.metadata import version

    meta.update(precision=precision, size_mb=sizes[precision], sizes_mb=sizes, budget_mb=cfg.budget_mb,
                calibration=calibration, validation=None,
                versions={"featcache": __version__, "openvino": version("openvino"), "torch": torch.__version__,
                          **({"nncf": version("nncf")} if calibration else {})},
                created=datetime.now().isoformat(timespec="seconds"))
    write_text(stage / EXPORT_FILE, json.dumps(meta, indent=1))
    return meta


def _over(sizes: dict[str, float], budget: float | None) -> str:
    return f"no precision fits the {budget:g} MB budget: " + ", ".join(f"{p} {mb:.1f} MB" for p, mb in sizes.items())


def _describe(module: Composed, stage: Path) -> tuple[list[dict], list[dict]]:
    """(the model's inputs, each encoder's preprocessing); text encoders' tokenizers saved in stage.
    A second encoder of one modality takes inputs named with a suffix (pixels_1, ...)."""
    specs, encoders, seen = [], [], {"image": 0, "text": 0}
    for enc, dtype in zip(module.encoders, module.dtypes):
        cfg = enc.cfg
        k = seen[cfg.modality]
        seen[cfg.modality] += 1
        suffix = f"_{k}" if k else ""
        if cfg.is_text:
            names = [f"input_ids{suffix}", f"attention_mask{suffix}"]
            specs += [{"name": n, "shape": [-1, -1], "dtype": "int64"} for n in names]
            prep = _save_tokenizer(enc, stage / f"tokenizer{suffix}")
        else:
            names = [f"pixels{suffix}"]
            specs.append({"name": names[0], "shape": [-1, 3, cfg.input_size, cfg.input_size], "dtype": "float32"})
            prep = {"input_size": cfg.input_size, "interpolation": cfg.interpolation, "crop_pct": cfg.crop_pct,
                    "resize": "squash" if cfg.crop_pct is None else "shorter side to input_size / crop_pct, centre crop",
                    "mean": list(cfg.mean), "std": list(cfg.std),
                    "scale": "float RGB 0..255; the model subtracts mean x 255 and divides by std x 255"}
        encoders.append({"name": cfg.name, "modality": cfg.modality, "embed_dim": enc.embed_dim, "inputs": names,
                         "features_rounded_to": str(dtype).removeprefix("torch.") if dtype else None,
                         "preprocessing": prep})
    return specs, encoders


def _save_tokenizer(enc: nn.Module, where: Path) -> dict:
    """The tokenizer's files (tokenizer.json: what `tokenizers` reads without transformers or torch)
    and how the training collate called it."""
    tok = enc.tokenizer
    tok.save_pretrained(str(where))
    if not (where / "tokenizer.json").is_file():
        raise ValueError(f"{enc.cfg.name}: its tokenizer has no fast (tokenizers) version, which the exported "
                         "predictor needs")
    return {"tokenizer": f"{where.name}/tokenizer.json", "max_length": enc.cfg.max_length, "padding": "longest",
            "padding_side": tok.padding_side, "truncation_side": tok.truncation_side, "pad_token": tok.pad_token,
            "pad_id": tok.pad_token_id, "pooling": enc.cfg.pooling, "source": str(tok.name_or_path)}


@contextlib.contextmanager
def _quiet():
    """Tracing warns about shape-dependent branches inside transformers; the exported graph is
    checked against the torch model in tests/test_export.py, so the warnings only add noise."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _to_openvino(module: Composed, specs: list[dict]):
    import openvino as ov

    from featcache.encoders.backends import telemetry_off

    telemetry_off()
    types = {"float32": ov.Type.f32, "int64": ov.Type.i64}
    with _quiet():
        model = ov.convert_model(module, example_input=module.example(),
                                 input=[(ov.PartialShape(s["shape"]), types[s["dtype"]]) for s in specs])
    # forward(*inputs) has no parameter names to give the ports: export.json's, in order.
    for port, spec in zip(model.inputs, specs, strict=True):
        port.get_tensor().set_names({spec["name"]})
    model.outputs[0].get_tensor().set_names({"probs"})
    return model


def _save_onnx(module: Composed, specs: list[dict], path: Path) -> None:
    """torch's TorchScript-based exporter (opset 17), batch and token axes dynamic; checked by onnx."""
    import onnx

    def axes(name: str) -> dict:  # a caption's length varies too; each text encoder's on its own axis
        suffix = name.removeprefix("input_ids").removeprefix("attention_mask")
        return {0: "batch"} if name.startswith("pixels") else {0: "batch", 1: f"tokens{suffix}"}

    with _quiet(), contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(module, module.example(), str(path), dynamo=False, opset_version=17,
                          input_names=[s["name"] for s in specs], output_names=["probs"],
                          dynamic_axes={**{s["name"]: axes(s["name"]) for s in specs}, "probs": {0: "batch"}})
    onnx.checker.check_model(str(path))


def _calibration_rows(split: dict, dataset: Dataset, cfg: ExportConfig) -> dict:
    """`calibration_rows` train rows of the run's split drawn with a seed: never a validation row
    (the export is scored on those) nor a test row."""
    train_idx, _ = split_rows(dataset, split["val_fraction"], split["seed"])
    pick = np.sort(np.random.default_rng(cfg.calibration_seed).permutation(len(train_idx))[:cfg.calibration_rows])
    return {"part": "train", "split_seed": split["seed"], "seed": cfg.calibration_seed, "rows": len(pick),
            "image_ids": [dataset.train[i].image_id for i in train_idx[pick]]}


def _calibration_inputs(meta: dict, stage: Path, dataset: Dataset, ids: list[str]) -> list[dict]:
    """Each calibration row as the exported predictor prepares it (batch 1), so int8 ranges are
    measured on exactly what the model will see."""
    prep, records = Preprocessor(meta, stage), {r.image_id: r for r in dataset.train}
    return [prep.inputs(dataset.photos([records[i]]) if dataset.has("image") else None,
                        [records[i].caption] if dataset.has("text") else None) for i in ids]


def _quantize(model, items: list[dict], has_text: bool):
    """NNCF post-training quantisation. With a text encoder NNCF's transformer mode: it keeps
    attention's softmax and layer norms in float and smooths activation outliers (on random
    inputs it halved the largest probability error against the default mode)."""
    import logging

    # nncf imports torch's extension builder, which warns "No CUDA runtime is found" on a CPU machine
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    import nncf

    nncf.set_log_level(logging.WARNING)  # its INFO tables of bit widths; warnings still show
    with contextlib.redirect_stdout(io.StringIO()):  # its progress bars
        return nncf.quantize(model.clone(), nncf.Dataset(items), subset_size=len(items),
                             model_type=nncf.ModelType.TRANSFORMER if has_text else None)


def _check_dataset(source: Source, dataset: Dataset) -> None:
    ids = source.meta["labels"]["ids"]
    if list(dataset.label_space.ids) != ids:
        raise ValueError(f"{source.run}: trained on labels {ids}, dataset {dataset.root} has {list(dataset.label_space.ids)}")
    want = source.meta["split"]["dataset_fingerprint"]
    if want and dataset.fingerprint() != want:
        raise ValueError(f"{dataset.root}: not the dataset {source.run} was trained on (fingerprint "
                         f"{dataset.fingerprint()}, the run's {want}): its train and validation rows would be other rows")


def _foreign(out: Path, force: bool) -> list[str]:
    """What in `out` featcache did not write (export.json's manifest does not list it): refused, or
    with `force` kept beside the new export. Checked before any work."""
    if not out.is_dir():
        return []
    present = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() or p.is_symlink()}
    try:
        listed = set(json.loads((out / EXPORT_FILE).read_text()).get("files") or []) | {EXPORT_FILE}
    except (OSError, ValueError, AttributeError, TypeError):
        listed = set()
    foreign = sorted(present - listed)
    if foreign and not force:
        raise OutputError(f"{out}: holds files featcache did not write ({', '.join(foreign[:5])}"
                          f"{' ...' if len(foreign) > 5 else ''}); give a new or empty directory, or --force to keep "
                          "them beside the export (only the files a previous export's export.json lists are replaced)")
    return foreign


def _stage_dir(out: Path) -> Path:
    sweep_stale(out)  # what a killed export left beside it
    stage = out.parent / f".{out.name}.{os.getpid()}.tmp"
    with os_errors(out, "nothing was written"):
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
    return stage


def _put_in_place(stage: Path, out: Path, keep: list[str] = ()) -> None:
    """The complete export replaces `out` (an empty directory, or a previous export) by renames;
    the files in `keep` (not the export's: --force) move into the new one."""
    old = out.with_name(f".{out.name}.{os.getpid()}.old")
    try:
        for rel in keep:
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(out / rel, stage / rel)
        if out.exists():
            os.replace(out, old)
        os.replace(stage, out)
    except OSError as e:
        kept = "the previous export is kept" if old.exists() or out.exists() else "nothing was written"
        if old.exists() and not out.exists():
            os.replace(old, out)
        raise OutputError(f"{out}: cannot put the export in place ({e.strerror or e}); {kept}") from None
    shutil.rmtree(old, ignore_errors=True)


def describe_export(path: Path, meta: dict) -> str:
    v = meta.get("validation")
    return (f"{path}: {meta['format']} {meta['precision']}, {meta['size_mb']:.1f} MB"
            + (f", validation sample-F1 {v['sample_f1']:.4f} ({v['tuned_out_of_fold']:.4f} out of fold)" if v else ""))
