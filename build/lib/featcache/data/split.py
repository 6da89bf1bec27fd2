"""A seeded, label-stratified train/validation split for multi-label data.

Iterative stratification (Sechidis et al. 2011, via iterative-stratification) keeps every
label's share, the rare ones included, close to the same in both parts. The same seed gives the
same split on any machine: it depends only on the targets' order and numpy's RandomState."""

from __future__ import annotations

import numpy as np

from featcache.data.records import DataError


def train_val_split(targets: np.ndarray, val_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sorted row indices (train, validation) of a multi-hot target matrix."""
    targets = np.asarray(targets)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if len(targets) < 2:
        raise ValueError(f"need at least 2 labelled rows to split, got {len(targets)}")
    # Imported here: iterstrat brings scikit-learn and scipy, which a warm cache check never needs.
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
    train_idx, val_idx = next(splitter.split(np.zeros(len(targets)), targets))
    return np.sort(train_idx), np.sort(val_idx)


def split_rows(dataset, val_fraction: float | None = None, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) row indices into `dataset.train`: the rows a split column names `val`,
    else a stratified split with the dataset's val_fraction and split_seed (or those given)."""
    if dataset.val_keys:
        is_val = np.array([r.image_id in dataset.val_keys for r in dataset.train], dtype=bool)
        if is_val.all():
            raise DataError(f"{dataset.name}: every labelled row is a validation row; mark some train")
        return np.flatnonzero(~is_val), np.flatnonzero(is_val)
    return train_val_split(dataset.targets(), dataset.val_fraction if val_fraction is None else val_fraction,
                           dataset.split_seed if seed is None else seed)


def nested_share(n: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted positions of the first `fraction` of n rows in seed's order: one seed's shares are
    nested (the quarter's rows are inside the half's), as a learning curve wants."""
    if not 0 < fraction <= 1:
        raise ValueError(f"a share of the train rows must be in (0, 1], got {fraction}")
    return np.sort(np.random.default_rng(seed).permutation(n)[:max(1, round(fraction * n))])
