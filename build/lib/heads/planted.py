"""Feature arrays with planted multi-label signal, for tests and timing without any cache.

Like a generated dataset, at the feature level: each label has a direction per encoder; an
image's vector is the sum of the directions of the labels that encoder "sees" plus unit noise. The
image encoder sees each present label with probability p_seen[0], the text encoder with p_seen[1]
(and now and then a label that is absent), so each alone misses something and fusion wins.
"""

from __future__ import annotations

import numpy as np

PRIOR = np.array([0.72, 0.16, 0.09, 0.08, 0.08, 0.06, 0.06, 0.05, 0.05, 0.05, 0.05, 0.04, 0.04, 0.04, 0.03, 0.03,
                  0.02, 0.015])


def plant(y: np.ndarray, dims: tuple[int, ...] = (1280, 384), seed: int = 0, p_seen: tuple[float, ...] = (0.8, 0.65),
          p_distractor: float = 0.1, signal: float = 1.0) -> list[np.ndarray]:
    """One float32 [n, D] array per encoder for the multi-hot targets y; even encoders are
    image-like, odd ones text-like (they also name an absent label now and then)."""
    rng = np.random.default_rng(seed)
    y = np.asarray(y, bool)
    xs = []
    for m, d in enumerate(dims):
        seen = y & (rng.random(y.shape) < p_seen[m % len(p_seen)])
        if m % 2:
            seen |= ~y & (rng.random(y.shape) < p_distractor / y.shape[1])
        directions = rng.normal(size=(y.shape[1], d)).astype(np.float32) * d ** -0.25  # norm ~ d^0.25
        xs.append((seen.astype(np.float32) @ directions * signal + rng.normal(size=(len(y), d))).astype(np.float32))
    return xs


def make_planted(n: int, dims: tuple[int, ...] = (1280, 384), seed: int = 0, num_labels: int = 18,
                 **kw) -> tuple[list[np.ndarray], np.ndarray]:
    """(xs, y): targets drawn with COMP5329-like label frequencies (every image has a label)."""
    rng = np.random.default_rng(seed)
    y = rng.random((n, num_labels)) < np.resize(PRIOR, num_labels)
    y[np.arange(n), rng.integers(0, num_labels, n)] |= ~y.any(1)
    return plant(y, dims, seed + 1, **kw), y.astype(np.float32)
