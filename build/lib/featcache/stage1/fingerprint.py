"""What a cache's features depend on, its hash, and whether an existing cache answers.

The fingerprint hashes everything that changes a feature (encoder, weight file bytes,
preprocessing, dataset, stage-1 adaptation, views, dtype, featcache version) and nothing that
does not (batch size, workers, device). The compute path (backend and precision) is part of it,
except for torch fp32, the reference path, so caches built before backends existed stay valid;
with `auto` options a complete cache that differs only in its compute path is used as it is (it
was built by one path, so nothing is mixed). Nothing here builds a model: a warm cache answers
without torch.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from featcache import __version__
from featcache.data import Dataset
from featcache.data.images import DECODE_VERSION
from featcache.encoders.backends import Compute
from featcache.encoders.planner import home
from featcache.encoders.registry import EncoderCfg
from featcache.encoders.weights import WeightsSource, text_tokenizer_source
from stores.features import StoreError, read_attrs

VIEW_AUGMENT = "hflip, rotate<=10deg, random-resized-crop(scale 0.6-1)"


def fingerprint_spec(cfg: EncoderCfg, source: WeightsSource, dataset: Dataset, views: int, dtype: str,
                     finetune: dict | None, compute: Compute = Compute("torch", "fp32")) -> dict:
    """What the features depend on, and only that. `finetune`: the stage-1 adaptation's spec (the
    key keeps its old name, so fingerprints of existing caches hold)."""
    preprocessing = cfg.preprocessing()
    if cfg.is_text:  # a random-init text encoder may borrow another tokenizer: say which
        tok_dir, tok_from = text_tokenizer_source(cfg, source)
        preprocessing["tokenizer"] = tok_from
    spec = {
        "encoder": {"name": cfg.name, "family": cfg.family, "source": cfg.source, "embed_dim": cfg.embed_dim},
        "weights_sha256": source.sha256(),
        "preprocessing": preprocessing,
        "dataset": dataset.fingerprint(memo=home() / "fingerprints.json"),
        "finetune": finetune,
        "views": {"k": views, "augment": VIEW_AUGMENT, "seed": 0} if views else None,
        "dtype": dtype,
        "featcache_version": __version__,
        **({} if cfg.is_text else {"decode": DECODE_VERSION}),  # how a photo file becomes pixels
    }
    return with_compute(spec, compute)


def with_compute(spec: dict, compute: Compute) -> dict:
    """The spec on another compute path; torch fp32, the reference, adds nothing (old fingerprints hold)."""
    spec = {k: v for k, v in spec.items() if k != "compute"}
    if not compute.is_reference:
        spec["compute"] = {"backend": compute.backend, "precision": compute.precision}
    return spec


def spec_hash(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def model_spec(spec: dict) -> dict:
    """The part of a spec that names the model alone (not the data, dtype or compute path)."""
    return {k: spec[k] for k in ("encoder", "weights_sha256", "preprocessing", "finetune")}


def compute_of(spec: dict) -> str:
    return str(Compute(**spec.get("compute") or {"backend": "torch", "precision": "fp32"}))


def differences(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(keys) or "unknown"


def warm_attrs(path: Path, spec: dict, fingerprint: str, *, auto: bool, rebuild: bool, say) -> dict | None:
    """The attributes of the cache at `path` when it is complete and built from this configuration
    (with `auto` options: or from this one on another compute path); None when there is none or it
    is to be rebuilt. A cache of a different configuration is refused, unless `rebuild` (--force):
    then any existing cache is rebuilt beside it and replaced atomically, also one of this
    configuration whose bytes are damaged."""
    if not path.exists():
        return None
    try:
        attrs = read_attrs(path)
    except StoreError:
        if not rebuild:
            raise
        say(f"{path}: unreadable, rebuilding (--force)")
        return None
    old = json.loads(attrs.get("fingerprint_spec", "{}"))
    same_model = {k: v for k, v in old.items() if k != "compute"} == {k: v for k, v in spec.items() if k != "compute"}
    if attrs.get("complete") and (attrs.get("fingerprint") == fingerprint or (auto and same_model)):
        if rebuild:
            say(f"{path}: rebuilding it (--force)")
            return None
        if attrs.get("fingerprint") != fingerprint:
            say(f"{path}: built on {compute_of(old)}; used as it is (--backend/--precision auto)")
        return attrs
    if not rebuild:
        raise StoreError(f"{path}: cache built from a different configuration (fingerprint {attrs.get('fingerprint')} "
                         f"!= {fingerprint}; differs in: {differences(old, spec)}). Not mixing them: rerun with "
                         f"--force to rebuild it, or use another --cache directory.")
    say(f"{path}: configuration changed ({differences(old, spec)}), rebuilding (--force)")
    return None
