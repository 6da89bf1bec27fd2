"""An exported model predicts on its own: the OpenVINO runtime (it reads .onnx too), PIL and numpy
for photos, the `tokenizers` library for captions. No torch, no transformers, no feature cache.

    model = ExportedModel.load("exports/lite0-minilm-int8")
    probs = model.predict_proba(images, captions)    # PIL images or paths, strings -> [n, labels]
    labels = model.predict(images, captions)         # label ids per row: tuned thresholds + fallback
    predict_submission("exports/lite0-minilm-int8", data, "submission.csv")

The directory (featcache.deploy.export writes it): the model (model.xml + model.bin, or model.onnx), one
tokenizer directory per text encoder, and export.json: inputs, preprocessing, label ids, tuned
thresholds, format, precision, size, the source run and the split its validation rows come from.
A photo is resized as the encoder was fed in training (featcache.encoders.models.preprocess_image) and
goes in as float RGB 0..255, [B, 3, S, S]; the model normalises it. A caption goes in as
input_ids and attention_mask [B, T], padded to the longest caption of the batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from featcache.data import Dataset, Record, load_dataset, load_image
from featcache.artifacts import ExportMeta
from featcache.artifacts import validate as check_artifact
from featcache.outputs import check_target, inputs_of, write_predictions
from featcache.stage2.thresholds import apply_thresholds  # numpy only: no scikit-learn, no torch

EXPORT_FILE = "export.json"
MB = 1e6  # decimal megabytes, as featcache.study.benchmark counts sizes (a "100 MB" budget)
# The example caption of featcache.encoders.models' example_batch: the same token count as the torch benchmark.
EXAMPLE_CAPTION = "a man riding a horse on top of a green field near a red bus"
# PIL's filters by the names EncoderCfg.interpolation uses (featcache.encoders.models imports torch, so not from there).
_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST,
             "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}


def read_meta(model_dir: str | Path) -> dict:
    """export.json of an export directory; ValueError naming the file when it is missing or unreadable."""
    path = Path(model_dir) / EXPORT_FILE
    if not path.is_file():
        raise ValueError(f"{model_dir}: not an exported model (no {EXPORT_FILE}; featcache export writes one)")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable export description ({type(e).__name__}: {e})") from None
    missing = [k for k in ("format", "precision", "model", "inputs", "encoders", "labels", "thresholds", "split")
               if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise ValueError(f"{path}: not an export description (no {', '.join(missing)}); export the run again")
    check_artifact(path, ExportMeta, meta)  # types, the label count of every list (ArtifactError names the file)
    return meta


def model_mb(model_dir: str | Path) -> float:
    """What the export weighs on disk: every file of the directory but export.json (which records
    this figure, and is a few kB): the model, its weights and the tokenizer files."""
    files = [p for p in Path(model_dir).rglob("*") if p.is_file() and p.name != EXPORT_FILE]
    return sum(p.stat().st_size for p in files) / MB


def list_exports(root: str | Path) -> list[Path]:
    """Every export directory under root (nested too), sorted; a directory being written (a hidden
    temporary one, renamed into place when complete) is not one yet."""
    root = Path(root)
    found = {p.parent for p in root.rglob(EXPORT_FILE)}
    return sorted(d for d in found if not any(part.startswith(".") for part in d.relative_to(root).parts))


def pixels(image: Image.Image, prep: dict) -> np.ndarray:
    """float32 [3, S, S], RGB 0..255: featcache.encoders.models.preprocess_image without torch (the same PIL
    calls, so the same pixels; tests/test_export.py checks it)."""
    image = image if image.mode == "RGB" else image.convert("RGB")
    size, resample = prep["input_size"], _RESAMPLE[prep["interpolation"]]
    if prep.get("crop_pct") is None:
        image = image.resize((size, size), resample)
    else:
        scale = size / prep["crop_pct"] / min(image.size)
        image = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))), resample)
        left, top = (image.width - size) // 2, (image.height - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.float32).transpose(2, 0, 1)


class Preprocessor:
    """Photos and captions -> the model's named inputs, as export.json describes them."""

    def __init__(self, meta: dict, model_dir: str | Path):
        from tokenizers import Tokenizer

        self.meta, self.tokenizers = meta, {}
        for enc in meta["encoders"]:
            if enc["modality"] == "text":
                prep = enc["preprocessing"]
                path = Path(model_dir) / prep["tokenizer"]
                try:
                    tok = Tokenizer.from_file(str(path))
                except Exception as e:  # the Rust library's errors are plain Exceptions
                    raise ValueError(f"{path}: not a readable tokenizer ({e})") from None
                # As the training collate called it: padding=True (to the batch's longest), truncation to max_length.
                tok.enable_truncation(prep["max_length"], direction=prep["truncation_side"])
                tok.enable_padding(pad_id=prep["pad_id"], pad_token=prep["pad_token"], direction=prep["padding_side"])
                self.tokenizers[enc["inputs"][0]] = tok

    @property
    def modalities(self) -> set[str]:
        return {enc["modality"] for enc in self.meta["encoders"]}

    def inputs(self, images=None, captions=None) -> dict[str, np.ndarray]:
        """images: PIL images or paths (read with featcache.data.load_image); captions: strings."""
        for modality, given in (("image", images), ("text", captions)):
            if modality in self.modalities and given is None:
                names = ", ".join(e["name"] for e in self.meta["encoders"] if e["modality"] == modality)
                raise ValueError(f"this model takes {'photos' if modality == 'image' else 'captions'} "
                                 f"(its encoder {names}); pass them")
        if images is not None and captions is not None and len(images) != len(captions):
            raise ValueError(f"{len(images)} photos but {len(captions)} captions: one of each per row")
        photos = None if "image" not in self.modalities else [load_image(x) if isinstance(x, (str, Path)) else x
                                                                for x in images]
        out = {}
        for enc in self.meta["encoders"]:
            if enc["modality"] == "image":
                out[enc["inputs"][0]] = np.stack([pixels(p, enc["preprocessing"]) for p in photos])
            else:
                encoded = self.tokenizers[enc["inputs"][0]].encode_batch([str(c) for c in captions])
                out[enc["inputs"][0]] = np.array([e.ids for e in encoded], dtype=np.int64)
                out[enc["inputs"][1]] = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        return out

    def example(self, batch_size: int) -> dict[str, np.ndarray]:
        """A batch of noise photos and the example caption (size and speed do not depend on content)."""
        rng = np.random.default_rng(0)
        images = None if "image" not in self.modalities else [
            Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)) for _ in range(batch_size)]
        captions = None if "text" not in self.modalities else [EXAMPLE_CAPTION] * batch_size
        return self.inputs(images, captions)


class ExportedModel:
    """A compiled export: `predict_proba` / `predict` from photos and captions."""

    def __init__(self, model_dir: Path, meta: dict, compiled, prep: Preprocessor):
        self.dir, self.meta, self.compiled, self.prep = model_dir, meta, compiled, prep

    @classmethod
    def load(cls, model_dir: str | Path, threads: int | None = None) -> ExportedModel:
        """threads: OpenVINO's inference threads (default: all cores)."""
        from featcache.encoders.backends import _core  # one Core per process: several have crashed test suites

        model_dir = Path(model_dir)
        meta = read_meta(model_dir)
        path = model_dir / meta["model"]
        if not path.is_file():
            raise ValueError(f"{path}: missing; the export is incomplete (export it again)")
        # f32: on a CPU with native bf16 OpenVINO would otherwise run an fp32 export in bf16.
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            compiled = _core().compile_model(str(path), "CPU", config)
        except RuntimeError as e:  # a damaged or truncated model file
            raise ValueError(f"{path}: cannot load the model ({str(e).strip().splitlines()[-1][:200]})") from None
        return cls(model_dir, meta, compiled, Preprocessor(meta, model_dir))

    @property
    def label_ids(self) -> list[int]:
        return list(self.meta["labels"]["ids"])

    def infer(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Probabilities [B, labels] of prepared inputs (Preprocessor.inputs)."""
        return self.compiled(inputs)[0]

    def predict_proba(self, images=None, captions=None, batch_size: int = 32) -> np.ndarray:
        if images is None and captions is None:
            raise ValueError("no photos and no captions: give one of each per row (a one-encoder model takes its own)")
        n = len(images if images is not None else captions)
        parts = [self.infer(self.prep.inputs(None if images is None else images[a:a + batch_size],
                                             None if captions is None else captions[a:a + batch_size]))
                 for a in range(0, n, batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, len(self.label_ids)), np.float32)

    def apply(self, probs: np.ndarray, fallback: bool | None = None) -> np.ndarray:
        """Boolean predictions with the exported thresholds (and their fallback flag unless given)."""
        th = self.meta["thresholds"]
        return apply_thresholds(probs, th["values"], th["fallback"] if fallback is None else fallback)

    def predict(self, images=None, captions=None, batch_size: int = 32) -> list[tuple[int, ...]]:
        """Label ids per row."""
        preds = self.apply(self.predict_proba(images, captions, batch_size))
        ids = np.array(self.label_ids)
        return [tuple(int(i) for i in ids[row]) for row in preds]


def check_labels(model: ExportedModel, dataset: Dataset) -> None:
    if list(dataset.label_space.ids) != model.label_ids:
        raise ValueError(f"{model.dir}: predicts labels {model.label_ids}, dataset {dataset.root} has "
                         f"{list(dataset.label_space.ids)}")


def rows(model: ExportedModel, dataset: Dataset, records: list[Record], batch_size: int = 32) -> np.ndarray:
    """Probabilities [len(records), labels] of dataset rows, in order."""
    check_labels(model, dataset)
    return model.predict_proba(dataset.photos(records) if dataset.has("image") else None,
                               [r.caption for r in records] if dataset.has("text") else None,
                               batch_size)


def predict_submission(model_dir: str | Path, data, out: str | Path, batch_size: int = 32, proba: bool = False) -> Path:
    """The dataset's rows to predict, in order, >= 1 label each (the fallback on, as
    `featcache.runs.catalog.predict`); with `proba`, a probability column per label."""
    model = ExportedModel.load(model_dir)
    dataset = load_dataset(data)
    check_target(out, inputs_of(dataset=dataset, files=[model_dir]) + [model_dir])  # before any work
    probs = rows(model, dataset, dataset.test, batch_size)
    return write_predictions(out, dataset.predictions(model.apply(probs, fallback=True), probs if proba else None))


def validation_records(meta: dict, dataset: Dataset) -> list[Record]:
    """The validation rows of the source run's split (featcache.data.split, its seed and share), on the
    dataset it was trained on (refused otherwise: the same ImageIDs would be other rows)."""
    from featcache.data.split import split_rows

    split = meta["split"]
    want = split.get("dataset_fingerprint")
    if want and dataset.fingerprint() != want:
        raise ValueError(f"{dataset.root}: not the dataset {meta['source']['run']} was trained on (fingerprint "
                         f"{dataset.fingerprint()}, the run's {want}); its validation rows would be other rows")
    _, val_idx = split_rows(dataset, split["val_fraction"], split["seed"])
    return [dataset.train[i] for i in val_idx]


def score_on_validation(model: ExportedModel, dataset: Dataset, batch_size: int = 32) -> tuple[dict, list[Record], np.ndarray]:
    """(metrics, validation rows, probabilities) of the exported model on its run's validation rows:
    sample/micro/macro F1 with the exported thresholds (tuned on these rows, so optimistic, as a
    run's "tuned"), mAP, and tuned_out_of_fold (thresholds re-tuned on held-out halves, as every
    ranking in the study uses)."""
    from featcache.metrics import scores
    from featcache.stage2.thresholds import out_of_fold

    records = validation_records(model.meta, dataset)
    probs = rows(model, dataset, records, batch_size)
    y = dataset.targets(records)
    th = model.meta["thresholds"]
    honest, _ = out_of_fold(y, probs, metric=th["metric"], mode=th["mode"])
    metrics = {"rows": len(records), **scores(y, probs, model.apply(probs)), "tuned_out_of_fold": honest}
    return metrics, records, probs
