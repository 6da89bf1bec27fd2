"""Extraction backends and precisions (featcache.encoders.backends): options, fingerprints, OpenVINO
against torch fp32, and the fall back to torch for a model that does not convert."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from featcache.encoders.backends import Compute, choose, failed_before, openvino_bf16, openvino_installed, runner
from featcache.data import load_dataset
from featcache.encoders.models import ImageEncoder, create_encoder
from featcache.stage1.extract import extract
from featcache.stage1.fingerprint import fingerprint_spec, spec_hash
from featcache.encoders.registry import get_cfg
from featcache.encoders.weights import WeightsSource
from stores.features import open_features

needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino not installed")
FAST = dict(pretrained=False, batch_size=16, threads=1, num_workers=0, progress=False, log=lambda m: None)


def test_options_are_validated_in_one_place_with_what_to_use_instead():
    with pytest.raises(ValueError, match="--backend 'tensorrt': expected one of auto, torch, openvino"):
        choose("tensorrt")
    with pytest.raises(ValueError, match="--precision 'int4'"):
        choose("torch", "int4")
    with pytest.raises(ValueError, match="fp16 is for GPUs"):
        choose("torch", "fp16", "cpu")
    with pytest.raises(ValueError, match="openvino runs on the CPU"):
        choose("openvino", "auto", "cuda")
    assert choose("torch", "fp32") == Compute("torch", "fp32")
    auto = choose()
    assert auto.precision == "fp32"  # provisional: never guessed from flags; extract times the paths
    if openvino_installed() and not openvino_bf16():
        with pytest.raises(ValueError, match="OpenVINO has no bf16 on this CPU"):
            choose("openvino", "bf16")


def test_backend_and_precision_change_the_fingerprint_and_torch_fp32_keeps_the_old_one(synth_root):
    cfg, dataset = get_cfg("efficientnet_lite0"), load_dataset(synth_root)
    source = WeightsSource("random-init", None)
    hashes = {c: spec_hash(fingerprint_spec(cfg, source, dataset, 0, "float16", None, c))
              for c in [Compute(b, p) for b in ("torch", "openvino") for p in ("fp32", "bf16")]}
    assert len(set(hashes.values())) == 4
    reference = fingerprint_spec(cfg, source, dataset, 0, "float16", None)
    assert "compute" not in reference and spec_hash(reference) == hashes[Compute("torch", "fp32")]


@needs_openvino
@pytest.mark.parametrize("encoder", ["efficientnet_lite0", "minilm_l6"])
def test_openvino_features_equal_torch_fp32_features(synth_root, tmp_path, encoder):
    """Within 1e-3 of the feature scale in the float16 cache, which itself rounds at ~5e-4; the
    captions have many lengths, so the converted text model is checked on padded batches."""
    dataset = load_dataset(synth_root)
    size = {"image_size": 32} if encoder.startswith("eff") else {}
    ov = extract(dataset, encoder, tmp_path / "ov", backend="openvino", precision="fp32", **size, **FAST)
    pt = extract(dataset, encoder, tmp_path / "pt", backend="torch", precision="fp32", **size, **FAST)
    assert ov.compute == "openvino fp32" and pt.compute == "torch fp32" and ov.fingerprint != pt.fingerprint
    a, b = (open_features(tmp_path / d, ov.name).features for d in ("ov", "pt"))
    assert a.shape == b.shape and np.abs(a - b).max() <= 1e-3 * np.abs(b).max()


@needs_openvino
def test_auto_uses_a_complete_cache_of_another_compute_path_and_explicit_options_refuse_it(synth_root, tmp_path):
    from stores.features import StoreError

    dataset, messages = load_dataset(synth_root), []
    built = extract(dataset, "minilm_l6", tmp_path, backend="torch", precision="fp32", **FAST)
    again = extract(dataset, "minilm_l6", tmp_path, **{**FAST, "log": messages.append})
    assert again.warm and again.fingerprint == built.fingerprint and again.compute == "torch fp32"
    assert any("built on torch fp32; used as it is" in m for m in messages)
    with pytest.raises(StoreError, match="differs in: compute"):
        extract(dataset, "minilm_l6", tmp_path, backend="openvino", precision="fp32", **FAST)


class Histogram(torch.nn.Module):
    """A backbone with an op OpenVINO has no conversion rule for (aten::histc)."""

    def forward(self, x):
        return torch.stack([torch.histc(row, bins=8, min=-3, max=3) for row in x.flatten(1)])


@needs_openvino
def test_a_model_that_does_not_convert_runs_on_torch_says_why_and_is_remembered():
    cfg = get_cfg("efficientnet_lite0")
    encoder, messages = ImageEncoder(cfg, Histogram()).eval(), []
    run, used = runner(encoder, Compute("openvino", "fp32"), "cpu", "histogram-test", say=messages.append)
    assert used == Compute("torch", "fp32")
    assert "does not convert to OpenVINO" in messages[0] and "aten::histc" in messages[0]
    assert "aten::histc" in failed_before("histogram-test")
    x = encoder.example_batch(3)
    with torch.inference_mode():
        assert torch.equal(run(x), encoder(x))


def test_torch_bf16_runs_and_stays_near_fp32():
    """bf16 keeps 8 bits of mantissa: features within a few percent of the fp32 ones."""
    encoder = create_encoder("minilm_l6", pretrained=False)
    x = encoder.collate(["a dog on a sofa", "two buses parked beside a red building in the rain"])
    with torch.inference_mode():
        fp32 = runner(encoder, Compute("torch", "fp32"), "cpu", "", say=lambda m: None)[0](x)
        bf16 = runner(encoder, Compute("torch", "bf16"), "cpu", "", say=lambda m: None)[0](x)
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)
    assert torch.allclose(bf16, fp32, atol=0.05 * fp32.abs().max().item())
