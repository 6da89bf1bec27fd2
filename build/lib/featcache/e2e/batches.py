"""Records -> batches on the device, through the one loader (featcache.encoders.loader), and the logits of
every row.

Items come in the model's encoder order (a head may take text first), keyed by their row in
`records`: a caller indexes its targets with the keys. Augmented views are seeded per (seed,
epoch, row) by featcache.encoders.loader.view_seed; set `loader.dataset.epoch` before each epoch."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from featcache.data import DataError, Dataset, Record
from featcache.encoders.loader import Collate, EncoderInputs, to_device
from featcache.e2e.distributed import Proc, gather


def batches(dataset: Dataset, records: list[Record], model, batch_size: int, proc: Proc, *, shuffle: bool = False,
            seed: int = 0, augment_seed: int | None = None, workers: int = 0) -> DataLoader:
    """This rank's share of the records (DistributedSampler: seeded order, set_epoch per epoch),
    as (keys, [batch per encoder], errors)."""
    inputs = EncoderInputs(dataset, [e.cfg for e in model.encoders], records, augment_seed)
    sampler = DistributedSampler(inputs, num_replicas=proc.world, rank=proc.rank, shuffle=shuffle, seed=seed)
    return DataLoader(inputs, batch_size=batch_size, sampler=sampler, collate_fn=Collate(list(model.encoders)),
                      num_workers=workers, pin_memory=proc.device.type == "cuda")


def readable(loader: DataLoader, device: torch.device) -> Iterator[tuple[list[int], list]]:
    """(keys, inputs on the device) per batch. An unreadable photo stops the run here, in the main
    process, with the error naming its file and CSV row: a model trained around a missing photo is
    not the one asked for."""
    for keys, inputs, errors in loader:
        if errors:
            raise DataError(errors[0][1])
        yield keys, [to_device(x, device) for x in inputs]


@torch.no_grad()
def logits_of(model, loader: DataLoader, proc: Proc, amp: torch.dtype | None) -> np.ndarray:
    """Logits [len(records), L]: each rank scores its shard, every rank gets the gathered whole."""
    model.eval()
    keys, out = [], []
    for k, inputs in readable(loader, proc.device):
        with torch.autocast(proc.device.type, dtype=amp, enabled=amp is not None):
            out.append(model(inputs).float().cpu())
        keys += k
    logits = np.zeros((len(loader.dataset), model.head.num_labels), np.float32)
    for k, x in gather((keys, torch.cat(out).numpy() if out else None), proc):
        if k:
            logits[k] = x  # the sampler pads a shard with repeated rows: same row, same logits
    return logits


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return torch.sigmoid(torch.from_numpy(logits)).numpy()
