"""An encoder name -> its complete config and where its weights are, without building the model.

    cfg, source = resolve("timm:convnext_tiny.fb_in1k")   # input size, mean/std, crop, width from timm
    cfg, source = resolve("hf:./tiny-bert")               # width from its config, max length from its tokenizer

An alias is complete as registered and resolves without torch (a warm cache answers at once). A
timm:/hf: config is completed from the model's own config, as timm's `create_model` does: timm's
pretrained config (`resolve_model_data_config`: input size, interpolation, mean/std, crop) and
`num_features`, or the transformers config's width and the tokenizer's max length (capped). Those
import timm or transformers (and torch) when they are called, never when this module is imported.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from featcache.encoders.registry import MAX_TEXT_LENGTH, EncoderCfg, get_cfg
from featcache.encoders.weights import WeightsNotFound, WeightsSource, how_to_supply, local_dir, resolve_weights, text_tokenizer_source


def resolve(name: str | EncoderCfg, weights: str | Path | None = None, pretrained: bool = True,
            image_size: int | None = None, download: bool = True) -> tuple[EncoderCfg, WeightsSource]:
    """The complete config and where its weights are. A timm name learns its hub file from its
    pretrained config first; an hf name needs its weights' directory to read its config."""
    cfg = get_cfg(name) if isinstance(name, str) else name
    if cfg.family == "timm" and not cfg.resolved:
        cfg = _resolve_timm(cfg)
    source = resolve_weights(cfg, weights, pretrained, download)
    if cfg.is_text and not cfg.resolved:
        cfg = _resolve_hf(cfg, source)
    if image_size and not cfg.is_text:
        cfg = replace(cfg, input_size=image_size)
    return cfg, source


def timm_model(cfg: EncoderCfg, **kwargs):
    """timm's model of a timm-family config, random weights (a clear error for an unknown name)."""
    import timm

    try:
        return timm.create_model(cfg.source, pretrained=False, **kwargs)
    except RuntimeError as e:  # timm: "Unknown model (...)"
        raise WeightsNotFound(f"{cfg.name}: {e}; python cli.py encoders --search PATTERN lists timm's names") from None


def _resolve_timm(cfg: EncoderCfg) -> EncoderCfg:
    import timm
    import torch

    with torch.device("meta"):  # shapes and configs only: nothing is allocated
        model = timm_model(cfg, num_classes=0)
    data = timm.data.resolve_model_data_config(model)
    return replace(cfg, embed_dim=int(getattr(model, "head_hidden_size", None) or model.num_features),
                   input_size=int(data["input_size"][-1]), mean=tuple(data["mean"]), std=tuple(data["std"]),
                   interpolation=data["interpolation"], crop_pct=float(data["crop_pct"]),
                   hub_id=model.pretrained_cfg.get("hf_hub_id") or None)


def config_dir(cfg: EncoderCfg, source: WeightsSource) -> Path:
    """Where an hf model's config.json is: its weights' directory, or (random init) the hub cache."""
    if source.path is not None and source.path.is_dir():
        return source.path
    found = local_dir(cfg)
    if found is None:
        try:
            found = resolve_weights(cfg, None, True, download=False).path
        except WeightsNotFound:  # said below, as what is missing: a config to build random weights from
            found = None
    if found is None or not found.is_dir():
        raise WeightsNotFound(f"{cfg.name}: no config.json found to build the model from.\n{how_to_supply(cfg)}")
    return found


def _resolve_hf(cfg: EncoderCfg, source: WeightsSource) -> EncoderCfg:
    quiet_transformers()
    from transformers import AutoConfig, AutoTokenizer

    where = config_dir(cfg, source)
    try:
        config = AutoConfig.from_pretrained(str(where))
        tokenizer = AutoTokenizer.from_pretrained(str(text_tokenizer_source(cfg, source)[0]))
    except (OSError, ValueError) as e:
        raise WeightsNotFound(f"{cfg.name}: {where} is not a transformers model directory ({str(e).splitlines()[0][:200]})"
                              f"\n{how_to_supply(cfg)}") from None
    config = getattr(config, "text_config", None) or config  # CLIP / SigLIP: the text tower
    width = getattr(config, "hidden_size", None) or getattr(config, "d_model", None)
    limit = tokenizer.model_max_length if tokenizer.model_max_length < 1_000_000 else MAX_TEXT_LENGTH  # "no limit" is 1e30
    return replace(cfg, embed_dim=int(width), max_length=min(int(limit), MAX_TEXT_LENGTH))


def quiet_transformers() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything below is local: never wait on the network
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # DataLoader workers fork after tokenising
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
