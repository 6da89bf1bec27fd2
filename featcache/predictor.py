"""Any saved run as a model that takes new photos and captions.

    model = Predictor.load("runs/<id>")        # a fit-head/ablate run, or a finetune run
    model.predict(["photo.jpg"], ["a dog lying on a couch"])     # -> [(label ids,)]
    model.predict_proba([PIL.Image...], ["..."])                 # -> float [n, labels]

A stage-2 run is a head over cached features: its encoders are rebuilt as its caches were
extracted (the same configuration, the weights checked by their hash, the features rounded to the
cache's dtype), so a row scores as `predict` scores it from the cache. An end-to-end run holds its
own backbones. Thresholds and the top-label fallback are the run's: at least one label each.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from .data import load_image
from .e2e import predict as e2e_predict
from .e2e.model import E2EModel
from .runs import E2E, cached_encoders, find_run, finished, kind_of
from .stage2.experiment import load_run
from .thresholds import Thresholds


@dataclass
class Predictor:
    run_dir: Path
    model: E2EModel  # encoders (in the head's input order) + head
    thresholds: Thresholds
    label_ids: list[int]
    metrics: dict
    dtypes: list[torch.dtype | None]  # per encoder: the cache's storage dtype its features are rounded to

    @classmethod
    def load(cls, run: str | Path, runs: str | Path = "runs") -> Predictor:
        """A run by directory or by id under `runs` (RunError naming it when it cannot be used)."""
        run_dir = find_run(run, runs)
        saved, metrics = finished(run_dir)
        if kind_of(run_dir) == E2E:
            model, _, thresholds = e2e_predict.load_run(run_dir)
            return cls(run_dir, model, thresholds, saved["label_ids"], metrics, [None] * len(model.encoders))
        head, thresholds, config = load_run(run_dir)
        encoders, dtypes = cached_encoders(run_dir, config)
        return cls(run_dir, E2EModel(encoders, head.net).eval(), thresholds, config["label_ids"], metrics, dtypes)

    def predict_proba(self, images: list, captions: list[str], batch_size: int = 32) -> np.ndarray:
        """Probabilities [n, labels]: images are file paths or PIL images, captions strings; a run
        on one modality ignores the other (pass [] for it)."""
        n = max(len(images), len(captions))
        for what, items in (("images", images), ("captions", captions)):
            if self._needs(what) and len(items) != n:
                raise ValueError(f"{len(images)} images and {len(captions)} captions: one of each per row")
        out = []
        with torch.no_grad():
            for start in range(0, n, batch_size):
                inputs = [enc.collate(self._items(enc, images, captions, start, batch_size)) for enc in self.model.encoders]
                xs = [x if dtype is None else x.to(dtype).float() for x, dtype in zip(self.model.features(inputs), self.dtypes)]
                out.append(torch.sigmoid(self.model.head(xs)).numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.label_ids)), np.float32)

    def predict(self, images: list, captions: list[str], batch_size: int = 32) -> list[tuple[int, ...]]:
        """Label ids per row, with the run's thresholds; at least one label each."""
        preds = self.thresholds.apply(self.predict_proba(images, captions, batch_size))
        return [tuple(int(self.label_ids[j]) for j in np.flatnonzero(row)) for row in preds]

    def _needs(self, what: str) -> bool:
        return any(enc.cfg.is_text == (what == "captions") for enc in self.model.encoders)

    @staticmethod
    def _items(enc: nn.Module, images: list, captions: list[str], start: int, size: int) -> list:
        if enc.cfg.is_text:
            return [str(c) for c in captions[start:start + size]]
        return [im.convert("RGB") if isinstance(im, Image.Image) else load_image(Path(im)) for im in images[start:start + size]]
