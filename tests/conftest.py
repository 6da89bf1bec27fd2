"""Shared fixtures. Tests never need ../shared: they generate their own data."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Converted OpenVINO models go to a directory of this test session, not the user's ~/.cache; it
# is removed when the session ends (a few hundred MB each: left behind, they fill the disk).
os.environ["FEATCACHE_HOME"] = tempfile.mkdtemp(prefix="featcache-home-")
atexit.register(shutil.rmtree, os.environ["FEATCACHE_HOME"], ignore_errors=True)

from featcache.data.synth import make_dataset  # noqa: E402


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A small generated dataset in the COMP5329 layout (read-only for tests: copy before changing)."""
    return make_dataset(tmp_path_factory.mktemp("synth"), n_train=400, n_test=80, seed=0)


# --- stage 2 (heads): feature caches of generated data ------------------------------------------

@pytest.fixture(scope="session")
def synth_caches(synth_root, tmp_path_factory):
    """Caches of synth_root built by stage 1's extract with random-init encoders: efficientnet_lite0
    (32 px, 2 augmented views) and minilm_l6. Random-init features carry little signal."""
    from featcache.data import load_dataset
    from featcache.stage1.extract import extract

    cache = tmp_path_factory.mktemp("synth_cache")
    dataset = load_dataset(synth_root)
    fast = dict(pretrained=False, batch_size=64, threads=1, num_workers=0, progress=False, log=lambda m: None)
    extract(dataset, "efficientnet_lite0", cache, image_size=32, views=2, **fast)
    extract(dataset, "minilm_l6", cache, **fast)
    return cache


@pytest.fixture(scope="session")
def planted_data(tmp_path_factory):
    """(dataset root, cache dir): a generated dataset (1,200 train + 200 test rows) and, written
    through the store, caches "img" (image-like, 96-d) and "txt" (text-like, 48-d) whose features
    are planted from each row's true labels (test rows: test_labels.csv); "img" has 2 views."""
    import numpy as np

    from featcache.data import load_dataset
    from heads.planted import plant
    from stores.features import FeatureWriter, cache_path

    root = make_dataset(tmp_path_factory.mktemp("planted"), n_train=1200, n_test=200, seed=3, image_size=16)
    dataset = load_dataset(root)
    test_labels = dict(line.split(",") for line in (root / "test_labels.csv").read_text().splitlines()[1:])
    y = np.vstack([dataset.targets(), dataset.label_space.encode([tuple(map(int, test_labels[r.image_id].split()))
                                                                  for r in dataset.test])])
    ids = [r.image_id for r in dataset.train + dataset.test]
    n_train = len(dataset.train)
    cache = tmp_path_factory.mktemp("planted_cache")
    for m, (name, modality, dim) in enumerate([("img", "image", 96), ("txt", "text", 48)]):
        x = plant(y, dims=(96, 48), seed=11, signal=1.5)[m]
        rng = np.random.default_rng(12 + m)  # a view: the clean vector plus augmentation-like noise
        views = [x[:n_train] + rng.normal(0, 0.5, (n_train, dim)).astype(np.float32) for _ in range(2)] if modality == "image" else []
        attrs = {"fingerprint": f"planted-{name}-v1", "encoder": name, "modality": modality, "config": "{}"}
        writer, _ = FeatureWriter.open(cache_path(cache, name), ids, dim, n_train, len(views), attrs)
        writer.write(0, np.vstack([x, *views]))
        writer.finish()
    return root, cache
