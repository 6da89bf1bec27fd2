"""Sharded extraction (issue 5): shards run as separate processes merge into the unsharded cache.

Shard 0 is given --shard/--num-shards, shard 1 gets RANK/WORLD_SIZE as torchrun sets them; both
run at once, and whichever finishes last merges. Threads fixed: the features are bit-for-bit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from featcache.data import load_dataset
from featcache.stage1.extract import extract
from featcache.data.synth import make_dataset
from stores.features import cache_path, open_features, partial_path, shard_path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from cli import app  # noqa: E402

# torch fp32, the reference path: these tests are about shards; backends are tests/test_backends.py
ARGS = ["--encoder", "efficientnet_lite0", "--random-init", "--image-size", "32", "--batch-size", "4",
        "--threads", "1", "--num-workers", "0", "--views", "1", "--backend", "torch", "--precision", "fp32"]
FAST = dict(pretrained=False, image_size=32, batch_size=4, threads=1, num_workers=0, views=1, progress=False,
            log=lambda m: None, backend="torch", precision="fp32")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), n_train=40, n_test=12, seed=2, image_size=40)


def test_two_shard_processes_merge_into_the_unsharded_cache(data_root, tmp_path):
    base = [sys.executable, "cli.py", "extract", "--data", str(data_root), "--cache", str(tmp_path / "sharded"), *ARGS]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    procs = [subprocess.Popen(base + ["--shard", "0", "--num-shards", "2"], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE),
             subprocess.Popen(base, cwd=ROOT, env={**env, "RANK": "1", "WORLD_SIZE": "2"}, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-800:] for _, err in outs]
    assert sum("merged 2 shards" in err for _, err in outs) == 1, [err[-800:] for _, err in outs]
    extract(load_dataset(data_root), "efficientnet_lite0", tmp_path / "one", **FAST)
    merged, one = cache_path(tmp_path / "sharded", "efficientnet_lite0"), cache_path(tmp_path / "one", "efficientnet_lite0")
    with h5py.File(merged) as a, h5py.File(one) as b:
        assert a.attrs["fingerprint"] == b.attrs["fingerprint"] and a.attrs["rows"] == b.attrs["rows"] == 52
        assert a["ids"].asstr()[()].tolist() == b["ids"].asstr()[()].tolist()
        assert np.array_equal(a["features"][()], b["features"][()])  # bitwise: float16 as stored
        assert np.array_equal(a["views"][()], b["views"][()])
    assert not list((tmp_path / "sharded").glob("*.shard-*-of-2"))  # merged shards are deleted
    assert open_features(tmp_path / "sharded", "efficientnet_lite0").features.shape == (52, 1280)


def test_a_missing_or_unfinished_shard_is_named(data_root, tmp_path):
    dataset = load_dataset(data_root)
    extract(dataset, "efficientnet_lite0", tmp_path, shard=0, num_shards=3, **FAST)
    partial_path(shard_path(cache_path(tmp_path, "efficientnet_lite0"), 1, 3)).write_bytes(b"")  # as if killed
    out = CliRunner().invoke(app, ["merge-shards", "--encoder", "efficientnet_lite0", "--cache", str(tmp_path)])
    assert out.exit_code == 2
    assert "efficientnet_lite0.h5.shard-1-of-3: shard 1 of 3 is being written or interrupted" in out.output
    assert "efficientnet_lite0.h5.shard-2-of-3: shard 2 of 3 is missing" in out.output
    assert not cache_path(tmp_path, "efficientnet_lite0").exists()
    for i in (2, 1):  # the interrupted shard starts over; the last one merges
        extract(dataset, "efficientnet_lite0", tmp_path, shard=i, num_shards=3, **FAST)
    extract(dataset, "efficientnet_lite0", tmp_path / "one", **FAST)
    a, b = open_features(tmp_path, "efficientnet_lite0"), open_features(tmp_path / "one", "efficientnet_lite0")
    assert a.fingerprint == b.fingerprint and np.array_equal(a.features, b.features) and np.array_equal(a.views, b.views)
    out = CliRunner().invoke(app, ["merge-shards", "--encoder", "efficientnet_lite0", "--cache", str(tmp_path)])
    assert out.exit_code == 2 and "found none" in out.output


def test_more_shards_than_chunks_and_a_bad_shard_index(data_root, tmp_path):
    dataset = load_dataset(data_root)
    for i in range(5):  # 52 clean + 40 view rows in chunks of 32: two shards are empty
        extract(dataset, "efficientnet_lite0", tmp_path, shard=i, num_shards=5, **FAST)
    extract(dataset, "efficientnet_lite0", tmp_path / "one", **FAST)
    assert np.array_equal(open_features(tmp_path, "efficientnet_lite0").features,
                          open_features(tmp_path / "one", "efficientnet_lite0").features)
    with pytest.raises(ValueError, match="shard=2: not in 0..1"):
        extract(dataset, "efficientnet_lite0", tmp_path, shard=2, num_shards=2, **FAST)
