"""Stage 1 as one call: (optionally) fine-tune a backbone on the train rows, then cache its features.

    result = stage1.run("data/", "timm:resnet18", "cache/")                      # cache/timm-resnet18.h5
    result = stage1.run("data/", "minilm_l6", "cache/", finetune={"epochs": 3})  # cache/minilm_l6_ft.h5

Extraction (featcache.stage1.extract) knows nothing of fine-tuning: it is handed the fine-tuned weights
and their spec, which goes into the cache's fingerprint.
"""

from __future__ import annotations

import sys
from pathlib import Path

from featcache.encoders.backends import resolve_device
from featcache.data import Dataset, load_dataset
from featcache.stage1.extract import ExtractResult, extract
from featcache.encoders.resolve import resolve


def run(data: str | Path | Dataset, encoder: str, cache: str | Path, *, finetune: dict | None = None,
        weights: str | Path | None = None, pretrained: bool = True, image_size: int | None = None,
        batch_size: int = 32, device: str = "auto", num_workers: int | None = None, threads: int | None = None,
        lenient: bool = False, log=None, **extract_options) -> ExtractResult:
    """`finetune`: FinetuneCfg's fields (epochs at least); lr defaults to the modality's recipe.
    `extract_options`: the rest of featcache.stage1.extract.extract's keywords (views, force, shard, ...)."""
    say = log or (lambda message: print(message, file=sys.stderr))
    device = resolve_device(device)
    dataset = data if isinstance(data, Dataset) else load_dataset(data, lenient=lenient)
    for s in dataset.skipped:
        say(f"skipped {s.file}:{s.line}: {s.reason}")
    if dataset.skipped:
        say(f"skipped {len(dataset.skipped)} unreadable CSV rows (--lenient; listed above)")
    finetuned = None
    if finetune:
        # here, not at the top: fine-tuning loads the split (scikit-learn, scipy) that a warm cache never needs
        from featcache.stage1.adapt import FinetuneCfg, ensure_finetuned

        cfg, source = resolve(encoder, weights, pretrained, image_size)
        ft = FinetuneCfg(**{"lr": FinetuneCfg.default_lr(cfg.is_text), "batch_size": batch_size, **finetune})
        source, finetuned = ensure_finetuned(dataset, cfg, source, ft, Path(cache), device=device, num_workers=num_workers,
                                             threads=threads, say=say, lenient=lenient)
        weights = source.path
    return extract(dataset, encoder, cache, batch_size=batch_size, device=device, num_workers=num_workers,
                   threads=threads, weights=weights, pretrained=pretrained, image_size=image_size, lenient=lenient,
                   finetuned=finetuned, log=say, **extract_options)
