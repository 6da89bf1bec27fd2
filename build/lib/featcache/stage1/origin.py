"""The encoder a cache was extracted with, rebuilt for the predictor and the export."""

from __future__ import annotations

import json
from pathlib import Path

from featcache.encoders.resolve import resolve
from stores.features import StoreError


def encoder_of(path: Path, attrs: dict):
    """The encoder a cache was extracted with, in eval mode: its configuration (name, input size)
    and the same weights file, checked by its hash, so a new photo or caption is embedded as the
    cache's rows were. StoreError when those weights are gone or changed."""
    from featcache.encoders.models import build_encoder

    config = json.loads(attrs["config"])
    spec, source = config["fingerprint_spec"], config["weights_source"]
    cfg, found = resolve(attrs["encoder"], source["path"], source["kind"] != "random-init",
                         spec["preprocessing"].get("input_size"))
    if found.sha256() != spec["weights_sha256"]:
        raise StoreError(f"{path}: extracted with the weights {source['path']}, which are no longer there or have "
                         f"changed (sha256 {spec['weights_sha256'][:12]}...); restore them or extract again")
    return build_encoder(cfg, found).eval()
