"""The end-to-end model: encoders (in the head's input order) -> stage 2's HeadNet -> logits.

The head is stage 2's `HeadNet` (standardisation buffers + a fusion from heads/fusion.py), so a
head fitted on cached features (`init_head`) drops in unchanged: its buffers hold the cached
features' train mean/std and act as a fixed affine layer between backbone and fusion. Without
one, the buffers take the train statistics of the first `stats_rows` train rows (`standardise`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import nn

from heads.train import Head, HeadNet
from heads.config import HeadConfig

from featcache.data import Dataset, Record
from featcache.encoders.models import build_encoder
from featcache.stage1.adapt import adapted_weights
from featcache.encoders.registry import cache_name
from featcache.encoders.resolve import resolve
from featcache.e2e.batches import batches, readable
from featcache.e2e.config import E2EConfig
from featcache.e2e.distributed import Proc


class E2EModel(nn.Module):
    def __init__(self, encoders: list[nn.Module], head: HeadNet, freeze_bn: bool = False):
        super().__init__()
        self.encoders, self.head, self.freeze_bn = nn.ModuleList(encoders), head, freeze_bn

    def features(self, inputs: list) -> list[torch.Tensor]:
        xs = []
        for enc, x in zip(self.encoders, inputs):
            # A frozen encoder runs without autograd: no activations kept, no backward through it.
            with torch.set_grad_enabled(torch.is_grad_enabled() and any(p.requires_grad for p in enc.parameters())):
                xs.append(enc(x).float())
        return xs

    def forward(self, inputs: list) -> torch.Tensor:
        return self.head(self.features(inputs))

    def train(self, mode: bool = True) -> E2EModel:
        """Frozen parts stay in eval mode: their batch-norm statistics and dropout stay fixed; with
        freeze_bn every batch-norm layer keeps its statistics (its affine weights still train)."""
        super().train(mode)
        if mode:
            for m in self.encoders.modules():
                params = list(m.parameters())  # a whole frozen encoder, or a frozen early layer
                if params and not any(p.requires_grad for p in params):
                    m.eval()
                elif self.freeze_bn and isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self


def build_model(cfg: E2EConfig, num_labels: int, order: list[str], head: HeadNet | None = None,
                weights: dict[str, Path] | None = None) -> E2EModel:
    """Encoders named in `order` (registry names), and `head` or a fresh one. `weights`: encoder ->
    a weights file to start from instead of its pretrained source."""
    encoders = [build_encoder(*resolve(name, (weights or {}).get(name), cfg.pretrained, cfg.image_size)) for name in order]
    if head is None:
        head = HeadNet([e.embed_dim for e in encoders], num_labels,
                       HeadConfig(**asdict(cfg.head)))
    head.bf16 = False  # precision is this package's choice (cfg.precision), on any device
    model = E2EModel(encoders, head, cfg.freeze_bn)
    for enc in model.encoders:
        if cfg.channels_last and not enc.cfg.is_text:
            enc.to_channels_last()
        if enc.cfg.modality in cfg.freeze:
            enc.requires_grad_(False)
        elif "image-early" in cfg.freeze and not enc.cfg.is_text:
            params = list(enc.parameters())  # registration order: stem first, last stage last
            for p in params[:int(len(params) * cfg.early_fraction)]:
                p.requires_grad_(False)
    return model


def with_init_head(cfg: E2EConfig, num_labels: int) -> tuple[E2EConfig, list[str], HeadNet | None, dict[str, Path]]:
    """A stage-2 head to start from: its fusion settings go into the config (so the run records the
    model it trains) and its input order into the encoder order (a head may take text first).
    The head names its inputs by cache name (`cache_name(encoder)`); a head fitted on a stage-1
    fine-tuned cache (`<stem>_ft`) starts with that fine-tuned backbone (the last item: encoder ->
    weights file): its standardisation and weights were fitted to those features, not to the base
    backbone's."""
    if not cfg.init_head:
        return cfg, [cfg.image_encoder, cfg.text_encoder], None, {}
    head = Head.load(cfg.init_head)
    saved = _head_config(Path(cfg.init_head))
    by_stem = {cache_name(cfg.image_encoder): cfg.image_encoder, cache_name(cfg.text_encoder): cfg.text_encoder}
    stems = saved["encoders"]
    bases = [s if s in by_stem else s.removesuffix("_ft") for s in stems]
    if sorted(bases) != sorted(by_stem) or head.net.num_labels != num_labels:
        raise ValueError(f"--init-head {cfg.init_head}: a head over {stems} with {head.net.num_labels} labels does not "
                         f"fit {cfg.image_encoder} + {cfg.text_encoder} with {num_labels} labels")
    # The head trained on the train rows of fit-head's split (Split.of: seed split_seed, 20% held
    # out). Another split would put rows the head trained on into this run's validation rows.
    if (cfg.split_seed, cfg.val_fraction) != (saved.get("split_seed", 0), 0.2):
        raise ValueError(f"--init-head {cfg.init_head}: its head was fitted on split seed {saved.get('split_seed', 0)} "
                         f"(20% validation); split seed {cfg.split_seed} / val_fraction {cfg.val_fraction} would validate on rows "
                         f"it trained on")
    # A learning-curve point trained from a head that saw more rows would not measure its share.
    if saved.get("train_fraction", 1.0) != cfg.train_fraction:
        raise ValueError(f"--init-head {cfg.init_head}: its head was fitted on {saved.get('train_fraction', 1.0):g} of "
                         f"the train rows, this run trains on {cfg.train_fraction:g}; fit the head with "
                         f"fit-head --train-fraction {cfg.train_fraction:g}")
    weights = {by_stem[base]: _finetuned(cfg, saved, stem) for stem, base in zip(stems, bases) if stem != base}
    hc = head.cfg
    with torch.no_grad():
        floor_std(head.net)
    return replace(cfg, head=replace(cfg.head, fusion=hc.fusion, classifier=hc.classifier, width=hc.width,
                                      dropout=hc.dropout)), \
        [by_stem[base] for base in bases], head.net, weights


def _head_config(run_dir: Path) -> dict:
    """A stage-2 run's config.json: "encoders", the cache names its head was fitted on, in input
    order, "split_seed", "caches" and "fingerprints"."""
    try:
        saved = json.loads((run_dir / "config.json").read_text())
        return {**saved, "encoders": list(saved["encoders"])}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{run_dir}: not a fit-head run directory (config.json with 'encoders': {e})") from None


def _finetuned(cfg: E2EConfig, saved: dict, stem: str) -> Path:
    """The fine-tuned backbone beside the `<stem>_ft` cache the head was fitted on."""
    if stem not in saved.get("caches", {}):
        raise ValueError(f"--init-head {cfg.init_head}: fitted on {stem}, but its config.json does not say "
                         f"which cache directory (written before featcache recorded it); fit the head again")
    return adapted_weights(Path(saved["caches"][stem]).parent, stem, saved["fingerprints"][stem])


@torch.no_grad()
def standardise(model: E2EModel, dataset: Dataset, records: list[Record], device: torch.device) -> None:
    """A fresh head's buffers take the mean/std of these rows' clean features, as stage 2 does.
    In train mode: batch-norm layers that will train normalise with batch statistics, and the head
    must see the features they produce (for a random-init backbone, eval-mode features differ
    wildly). Frozen parts stay in eval mode (see E2EModel.train)."""
    model.train()
    feats = [[] for _ in model.encoders]
    for _, inputs in readable(batches(dataset, records, model, 32, Proc(device=device)), device):
        for f, x in zip(feats, model.features(inputs)):
            f.append(x)
    for i, f in enumerate(feats):
        x = torch.cat(f)
        getattr(model.head, f"mean{i}").copy_(x.mean(0))
        getattr(model.head, f"std{i}").copy_(x.std(0))
    floor_std(model.head)


def floor_std(head: HeadNet, share: float = 0.1) -> None:
    """No feature's std below `share` x the median: a dimension that is (nearly) constant before
    fine-tuning (a dead unit, or a random-init net in eval mode) may move once the backbone trains,
    and dividing it by ~0 would blow the logits up. Near-constant dims contribute ~0 either way."""
    for i in range(len(head.dims)):
        std = getattr(head, f"std{i}")
        std.clamp_(min=max(float(std.median()) * share, 1e-6))


def autocast_dtype(cfg: E2EConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of cfg.precision on this device; None: plain fp32."""
    if cfg.precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.precision]
