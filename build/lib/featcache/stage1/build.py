"""Stage 1 as one call: (optionally) adapt a backbone to the train rows, then cache its features.

    extract_features("data/", "timm:resnet18", cache="cache/")                 # cache/timm-resnet18.h5
    extract_features("data/", "minilm_l6", cache="cache/", adapt_epochs=3)     # cache/minilm_l6_ft.h5

The options are ExtractConfig's (featcache.stage1.config), checked in one place; the command line's
`extract` is this function. Extraction (featcache.stage1.extract) knows nothing of adaptation: it is
handed the adapted weights and their spec, which goes into the cache's fingerprint.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from featcache.data import Dataset, load_dataset
from featcache.encoders.backends import resolve_device
from featcache.encoders.resolve import resolve
from featcache.options import from_flat
from featcache.stage1.config import ExtractConfig
from featcache.stage1.extract import ExtractResult, extract


def extract_features(data, encoder: str, *, log=None, **options) -> ExtractResult:
    """Run `encoder` (an alias, timm:<name> or hf:<repo or dir>) once over every row of `data` (anything
    load_dataset takes) into <cache>/<name>.h5; a warm cache returns at once. `options`: ExtractConfig's
    fields (cache, batch_size, backend, precision, views, lenient, force, weights, adapt_epochs, ...)."""
    cfg = from_flat(ExtractConfig, options)
    say = log or (lambda message: print(message, file=sys.stderr))
    device = resolve_device(cfg.device)
    dataset = data if isinstance(data, Dataset) else load_dataset(data, lenient=cfg.lenient)
    for s in dataset.skipped:
        say(f"skipped {s.file}:{s.line}: {s.reason}")
    if dataset.skipped:
        say(f"skipped {len(dataset.skipped)} unreadable CSV rows (--lenient; listed above)")
    adapted, weights = None, cfg.weights
    if cfg.adapt_epochs:
        # here, not at the top: adaptation loads the split (scikit-learn, scipy) that a warm cache never needs
        from featcache.stage1.adapt import ensure_adapted

        enc, source = resolve(encoder, cfg.weights, cfg.pretrained, cfg.image_size)
        source, adapted = ensure_adapted(dataset, enc, source, cfg.adapt(enc.is_text), Path(cfg.cache), device=device,
                                         num_workers=cfg.num_workers, threads=cfg.threads, say=say, lenient=cfg.lenient)
        weights = source.path
    return extract(dataset, encoder, config=replace(cfg, weights=weights, device=device), finetuned=adapted, log=say)
