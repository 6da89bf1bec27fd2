"""Stage-1 fine-tuning: backbone + a linear head trained with BCE, then the backbone is cached.

Trained on the TRAIN part of `train_val_split(targets, seed=0)` only: validation rows (and test
rows) are never seen, so a head fitted later on the `<encoder>_ft` cache is validated fairly.
The backbone is saved as `<cache>/<encoder>_ft.safetensors`, with `<encoder>_ft.json` beside it
holding the fine-tuning spec; a later run with the same spec reuses the file instead of training.
The file's sha256 goes into the cache fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock

from .data import DataError, Dataset
from .encoders import EncoderCfg, WeightsSource, sha256_path
from .extract import encoder_input
from .split import train_val_split


@dataclass(frozen=True)
class FinetuneCfg:
    epochs: int
    lr: float
    batch_size: int = 32
    # The linear head starts from scratch: at the backbone's small lr it would take most of the
    # run just to learn the label priors, and the backbone would bend to make up for it.
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    seed: int = 0  # split seed and training seed
    val_fraction: float = 0.2


def finetune_spec(dataset: Dataset, cfg: EncoderCfg, source: WeightsSource, ft: FinetuneCfg, train_idx) -> dict:
    train_ids = "\n".join(dataset.train[i].image_id for i in train_idx)
    return {**asdict(ft), "encoder": cfg.name, "preprocessing": cfg.preprocessing(), "base_weights_sha256": source.sha256(),
            "dataset": dataset.fingerprint(), "train_rows": len(train_idx),
            "train_ids_sha256": hashlib.sha256(train_ids.encode()).hexdigest()[:16]}


def ensure_finetuned(dataset: Dataset, cfg: EncoderCfg, source: WeightsSource, ft: FinetuneCfg, out_dir: Path,
                     device: str = "cpu", num_workers: int | None = None, threads: int | None = None,
                     say=print, lenient: bool = False) -> tuple[WeightsSource, dict]:
    """The fine-tuned weights (trained now unless a file with the same spec exists) and the spec
    with the weights' sha256, for the fingerprint."""
    train_idx, _ = train_val_split(dataset.targets(), ft.val_fraction, ft.seed)
    spec = finetune_spec(dataset, cfg, source, ft, train_idx)
    weights, sidecar = out_dir / f"{cfg.name}_ft.safetensors", out_dir / f"{cfg.name}_ft.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    # Two extractors fine-tuning the same encoder: the second waits, then reuses the first's weights.
    with FileLock(str(out_dir / f"{cfg.name}_ft.lock")):
        reuse = weights.exists() and sidecar.exists() and json.loads(sidecar.read_text()).get("spec") == spec
        if reuse:
            say(f"{weights}: reusing fine-tuned weights")
        else:
            train(dataset, cfg, source, ft, weights, device, num_workers, threads, say, lenient, train_idx)
        sha256 = sha256_path(weights)  # of the file as it is now, reused or just written
        if not reuse:
            sidecar.write_text(json.dumps({"spec": spec, "sha256": sha256}, indent=1))
    return WeightsSource("path", weights), {**spec, "weights_sha256": sha256}


def train(dataset: Dataset, cfg: EncoderCfg, source: WeightsSource, ft: FinetuneCfg, out: Path, device: str,
          num_workers: int | None, threads: int | None, say, lenient: bool, train_idx) -> Path:
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from .backbones import build_encoder, save_weights

    torch.set_num_threads(threads or os.cpu_count() or 1)
    records = [dataset.train[i] for i in train_idx]
    targets = torch.from_numpy(dataset.targets(records))
    encoder = build_encoder(cfg, source).to(device).train()
    head = torch.nn.Linear(cfg.embed_dim, targets.shape[1]).to(device)
    optimizer = torch.optim.AdamW([{"params": encoder.parameters(), "lr": ft.lr},
                                   {"params": head.parameters(), "lr": ft.head_lr}], weight_decay=ft.weight_decay)
    steps = ft.epochs * -(-len(records) // ft.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, [ft.lr, ft.head_lr], total_steps=steps, pct_start=0.1)

    def item(i: int):
        x, err = encoder_input(dataset, cfg, records[i])
        return x, targets[i], err

    def collate(batch):
        kept = [(x, y) for x, y, err in batch if err is None]
        errors = [err for _, _, err in batch if err is not None]
        if not kept:
            return None, None, errors
        return encoder.collate([x for x, _ in kept]), torch.stack([y for _, y in kept]), errors

    workers = (0 if cfg.is_text else 1) if num_workers is None else num_workers
    loader = DataLoader(_Items(item, len(records)), batch_size=ft.batch_size, shuffle=True, collate_fn=collate,
                        num_workers=workers, generator=torch.Generator().manual_seed(ft.seed), drop_last=len(records) > ft.batch_size)
    t0, skipped = time.perf_counter(), 0
    for epoch in range(ft.epochs):
        bar, total = tqdm(loader, desc=f"finetune {cfg.name} epoch {epoch + 1}/{ft.epochs}", unit="batch"), 0.0
        for k, (x, y, errors) in enumerate(bar, 1):
            if errors and not lenient:
                raise DataError(errors[0])
            skipped += len(errors)
            if x is None:  # every image of the batch was unreadable
                continue
            x = {n: v.to(device) for n, v in x.items()} if isinstance(x, dict) else x.to(device)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(head(encoder(x)), y.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item()
            bar.set_postfix(loss=f"{total / k:.4f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(encoder, out, metadata={"encoder": cfg.name, "finetune": json.dumps(asdict(ft))})
    if skipped:
        say(f"{cfg.name}: fine-tuning skipped {skipped} unreadable training images over {ft.epochs} epochs (--lenient)")
    say(f"{out}: fine-tuned {cfg.name} for {ft.epochs} epochs on {len(records)} train rows in {time.perf_counter() - t0:.0f} s")
    return out


class _Items:
    """A map-style dataset over a function (picklable enough for forked workers)."""

    def __init__(self, fn, n: int):
        self.fn, self.n = fn, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return self.fn(i)
