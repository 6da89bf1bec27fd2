"""The one record -> tensor loader: extraction, stage-1 fine-tuning and end to end all read rows here.

    inputs = EncoderInputs(dataset, [image_cfg, text_cfg], records, augment_seed=0)
    for idx, (images, tokens), errors in DataLoader(inputs, collate_fn=Collate([image_enc, text_enc]), ...):

An item is (row, [model input per encoder config], error or None). An unreadable photo is not
raised inside a DataLoader worker (it would come wrapped in a worker traceback): its error, which
names the file and the CSV row, travels with the batch, and the caller raises it or counts it in
the main process. Augmented views are seeded per (seed, epoch, row) by `view_seed`, one formula
for every stage, so a resumed run draws the same views.
"""

from __future__ import annotations

import torch

from featcache.data import DataError, Dataset, Record
from featcache.encoders.models import preprocess_image
from featcache.encoders.registry import EncoderCfg


def view_seed(seed: int, epoch: int, row: int) -> int:
    """The augmentation seed of one row in one epoch (extraction's cached view k is epoch k + 1, seed 0)."""
    return (seed * 1009 + epoch) * 1_000_003 + row


def encoder_input(dataset: Dataset, cfg: EncoderCfg, rec: Record, seed: int | None = None):
    """(model input, None) for a record's caption or image, or (None, error) for an unreadable image."""
    if cfg.is_text:
        return rec.caption, None
    try:
        return preprocess_image(cfg, dataset.open_image(rec), seed), None
    except DataError as e:  # it names the file and the row
        return None, str(e)


class EncoderInputs(torch.utils.data.Dataset):
    """Row i of `records` -> (i, [input per config], error). With `augment_seed`, images are a
    fresh seeded view each epoch: set `.epoch` before iterating (forked workers copy it)."""

    def __init__(self, dataset: Dataset, cfgs: list[EncoderCfg], records: list[Record], augment_seed: int | None = None):
        self.dataset, self.cfgs, self.records, self.augment_seed = dataset, cfgs, records, augment_seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        seed = None if self.augment_seed is None else view_seed(self.augment_seed, self.epoch, i)
        return item(self.dataset, self.cfgs, self.records[i], i, seed)


def item(dataset: Dataset, cfgs: list[EncoderCfg], rec: Record, key: int, seed: int | None):
    xs, error = [], None
    for cfg in cfgs:
        x, err = encoder_input(dataset, cfg, rec, seed)
        xs.append(x)
        error = error or err
    return key, xs, error


class Collate:
    """Items -> (keys of the rows read, [batch per encoder], errors of the rows not read). A batch
    whose every row failed has batches None."""

    def __init__(self, encoders: list):
        self.encoders = encoders

    def __call__(self, items: list):
        kept = [(key, xs) for key, xs, err in items if err is None]
        errors = [(key, err) for key, _, err in items if err is not None]
        if not kept:
            return [], None, errors
        return [key for key, _ in kept], [enc.collate([xs[k] for _, xs in kept]) for k, enc in enumerate(self.encoders)], errors


def to_device(x, device):
    """A batch (tensor, or a tokenizer's dict of tensors) on the device."""
    if isinstance(x, dict):
        return {k: v.to(device, non_blocking=True) for k, v in x.items()}
    return x.to(device, non_blocking=True)
