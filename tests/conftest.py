"""Shared fixtures. Tests never need ../shared: they generate their own data."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from featcache.synth import make_dataset  # noqa: E402


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A small generated dataset in the COMP5329 layout (read-only for tests: copy before changing)."""
    return make_dataset(tmp_path_factory.mktemp("synth"), n_train=400, n_test=80, seed=0)
