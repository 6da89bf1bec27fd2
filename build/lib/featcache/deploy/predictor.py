"""Any saved run as a model that takes new photos and captions.

    model = Predictor.load("runs/<id>")        # a fit-head/ablate run, or a finetune run
    model.predict(["photo.jpg"], ["a dog lying on a couch"])     # -> [("dog",)]: label names
    model.predict(images=["photo.jpg"])                          # a run on images alone takes only them
    model.predict_proba([PIL.Image...], ["..."])                 # -> float [n, labels], columns .label_names

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

from featcache.data import load_image
from featcache.e2e.model import E2EModel
from featcache.runs.catalog import find_run
from featcache.runs.kinds import open_run
from featcache.stage2.thresholds import Thresholds


@dataclass
class Predictor:
    run_dir: Path
    model: E2EModel  # encoders (in the head's input order) + head
    thresholds: Thresholds
    label_ids: list  # the labels as the training data writes them (COMP5329's ids, or names)
    label_names: list[str]
    metrics: dict
    dtypes: list[torch.dtype | None]  # per encoder: the cache's storage dtype its features are rounded to

    @classmethod
    def load(cls, run: str | Path, runs: str | Path = "runs") -> Predictor:
        """A run by directory or by id under `runs` (RunError naming it when it cannot be used)."""
        run_dir = find_run(run, runs)
        found = open_run(run_dir)
        saved, metrics = found.finished()
        names = saved.get("label_names") or [str(i) for i in saved["label_ids"]]
        model, dtypes = found.photo_model(saved)
        return cls(run_dir, model, found.thresholds(), saved["label_ids"], names, metrics, dtypes)

    @property
    def modalities(self) -> tuple[str, ...]:
        """What the model reads: ("image",), ("text",) or both."""
        return tuple(m for m in ("image", "text") if any(enc.cfg.modality == m for enc in self.model.encoders))

    def predict_proba(self, images=None, texts=None, batch_size: int = 32) -> np.ndarray:
        """Probabilities [n, labels] (columns: `label_names`): images are file paths or PIL images
        (any sequence that slices), texts strings; a run on one modality takes only that one."""
        images, texts = images if images is not None else [], texts if texts is not None else []
        n = max(len(images), len(texts))
        for what, items in (("image", images), ("text", texts)):
            if what in self.modalities and len(items) != n:
                raise ValueError(f"{len(images)} images and {len(texts)} texts: the model reads "
                                 f"{' and '.join(self.modalities)}, one of each per row")
        out = []
        with torch.no_grad():
            for start in range(0, n, batch_size):
                inputs = [enc.collate(self._items(enc, images, texts, start, batch_size)) for enc in self.model.encoders]
                xs = [x if dtype is None else x.to(dtype).float() for x, dtype in zip(self.model.features(inputs), self.dtypes)]
                out.append(torch.sigmoid(self.model.head(xs)).numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.label_ids)), np.float32)

    def predict(self, images=None, texts=None, batch_size: int = 32) -> list[tuple[str, ...]]:
        """Label names per row, with the run's thresholds; at least one label each."""
        preds = self.thresholds.apply(self.predict_proba(images, texts, batch_size))
        return [tuple(self.label_names[j] for j in np.flatnonzero(row)) for row in preds]

    @staticmethod
    def _items(enc: nn.Module, images, texts, start: int, size: int) -> list:
        if enc.cfg.is_text:
            return [str(c) for c in texts[start:start + size]]
        return [im.convert("RGB") if isinstance(im, Image.Image) else load_image(Path(im)) for im in images[start:start + size]]
