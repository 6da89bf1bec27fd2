"""Stage-1 fine-tuning: backbone + a linear head trained with BCE, then the backbone is cached.

Trained on the TRAIN part of `train_val_split(targets, seed=0)` only: validation rows (and test
rows) are never trained on, so a head fitted later on the `<encoder>_ft` cache is validated fairly.
After each epoch the linear head's validation mAP and sample-F1 (at 0.5) are logged and kept in
the sidecar, to watch the run; they choose nothing (the last epoch's weights are saved).

The image recipe is gentle on purpose. Measured on the shared slice: efficientnet_lite0 at lr 1e-4
with BatchNorm statistics updating and no augmentation made the features worse (image-only
0.8214 -> 0.7996, and worse on the training rows too). So BatchNorm layers keep their ImageNet
statistics (a batch of 32 is a noisy estimate of them, and the running averages the cache is
extracted with trail the weights that moved), the study's augmentations are on, and the image lr
is 3e-5: 0.8275. The three changes were made together; their shares were not measured apart.
The backbone is saved as `<cache>/<encoder>_ft.safetensors`, with `<encoder>_ft.json` beside it
holding the fine-tuning spec; a later run with the same spec reuses the file instead of training.
The file's sha256 goes into the cache fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

from filelock import FileLock

from featcache.data import DataError, Dataset
from featcache.outputs import write_text
from featcache.encoders.registry import EncoderCfg, cache_name
from featcache.encoders.planner import cpus
from featcache.data.split import split_rows
from featcache.encoders.weights import WeightsSource, sha256_path
from featcache.stage1.config import AdaptConfig


def adapt_spec(dataset: Dataset, cfg: EncoderCfg, source: WeightsSource, ft: AdaptConfig, train_idx) -> dict:
    train_ids = "\n".join(dataset.train[i].image_id for i in train_idx)
    return {**asdict(ft), "encoder": cfg.name, "preprocessing": cfg.preprocessing(), "base_weights_sha256": source.sha256(),
            "dataset": dataset.fingerprint(), "train_rows": len(train_idx),
            "train_ids_sha256": hashlib.sha256(train_ids.encode()).hexdigest()[:16]}


def ensure_adapted(dataset: Dataset, cfg: EncoderCfg, source: WeightsSource, ft: AdaptConfig, out_dir: Path,
                     device: str = "cpu", num_workers: int | None = None, threads: int | None = None,
                     say=print, lenient: bool = False) -> tuple[WeightsSource, dict]:
    """The fine-tuned weights (trained now unless a file with the same spec exists) and the spec
    with the weights' sha256, for the fingerprint."""
    train_idx, val_idx = split_rows(dataset, ft.val_fraction, ft.seed)
    spec = adapt_spec(dataset, cfg, source, ft, train_idx)
    stem = cache_name(cfg.name)
    weights, sidecar = weights_file(out_dir, cfg.name), out_dir / f"{stem}_ft.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    # Two extractors fine-tuning the same encoder: the second waits, then reuses the first's weights.
    with FileLock(str(out_dir / f"{stem}_ft.lock")):
        reuse = weights.exists() and sidecar.exists() and json.loads(sidecar.read_text()).get("spec") == spec
        if reuse:
            say(f"{weights}: reusing fine-tuned weights")
        else:
            history = train_backbone(dataset, cfg, source, ft, weights, device, num_workers, threads, say, lenient, train_idx, val_idx)
        sha256 = sha256_path(weights)  # of the file as it is now, reused or just written
        if not reuse:
            write_text(sidecar, json.dumps({"spec": spec, "sha256": sha256, "history": history}, indent=1))
    return WeightsSource("path", weights), {**spec, "weights_sha256": sha256}


def weights_file(cache_dir: str | Path, encoder: str) -> Path:
    return Path(cache_dir) / f"{cache_name(encoder)}_ft.safetensors"


def adapted_weights(cache_dir: str | Path, cache_name: str, fingerprint: str) -> Path:
    """The fine-tuned backbone whose features are the cache `cache_name` ("<encoder>_ft") with
    this fingerprint: what a head fitted on that cache expects its backbone to be. ValueError,
    naming the file, if the cache was rebuilt since or the weights file is not the one it used."""
    from stores.features import StoreError, cache_path, read_attrs

    h5 = cache_path(cache_dir, cache_name)
    try:
        attrs = read_attrs(h5) if h5.exists() else None
    except StoreError as e:
        raise ValueError(str(e)) from None
    if attrs is None or attrs.get("fingerprint") != fingerprint:
        found = f"holds fingerprint {attrs.get('fingerprint')}" if attrs else "does not exist"
        raise ValueError(f"{h5} {found}; the head was fitted on fingerprint {fingerprint}: its fine-tuned backbone "
                         f"is gone. Fit the head again on the current cache (fit-head)")
    sha = json.loads(attrs["fingerprint_spec"])["finetune"]["weights_sha256"]
    weights = weights_file(cache_dir, cache_name.removesuffix("_ft"))
    if not weights.exists() or sha256_path(weights) != sha:
        raise ValueError(f"{weights}: {'missing' if not weights.exists() else 'not the file'} the cache {h5} was "
                         f"extracted with (sha256 {sha[:16]}); rerun extract --finetune-epochs with --force")
    return weights


def train_backbone(dataset: Dataset, cfg: EncoderCfg, source: WeightsSource, ft: AdaptConfig, out: Path, device: str,
          num_workers: int | None, threads: int | None, say, lenient: bool, train_idx, val_idx) -> list[dict]:
    """Writes the fine-tuned backbone to `out`; returns the per-epoch history."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from featcache.encoders.models import build_encoder, save_weights
    from featcache.encoders.loader import Collate, EncoderInputs, to_device
    from featcache.metrics import scores

    torch.set_num_threads(threads or cpus())
    records = [dataset.train[i] for i in train_idx]
    val_records = [dataset.train[i] for i in val_idx]
    targets = torch.from_numpy(dataset.targets(records))
    encoder = build_encoder(cfg, source).to(device)
    head = torch.nn.Linear(cfg.embed_dim, targets.shape[1]).to(device)
    workers = (0 if cfg.is_text else 1) if num_workers is None else num_workers
    optimizer = torch.optim.AdamW([{"params": encoder.parameters(), "lr": ft.lr},
                                   {"params": head.parameters(), "lr": ft.head_lr}], weight_decay=ft.weight_decay)
    steps = ft.epochs * -(-len(records) // ft.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, [ft.lr, ft.head_lr], total_steps=steps, pct_start=0.1)
    # Images draw a fresh seeded view each (epoch, row): a rerun sees the same views.
    inputs = EncoderInputs(dataset, [cfg], records, augment_seed=ft.seed if ft.augment and not cfg.is_text else None)
    loader = DataLoader(inputs, batch_size=ft.batch_size, shuffle=True, collate_fn=Collate([encoder]), num_workers=workers,
                        generator=torch.Generator().manual_seed(ft.seed), drop_last=len(records) > ft.batch_size)
    t0, skipped, history = time.perf_counter(), 0, []
    for epoch in range(1, ft.epochs + 1):
        inputs.epoch = epoch  # read by the workers forked for this epoch's iteration
        _train_mode(encoder, ft.freeze_bn)
        bar, total = tqdm(loader, desc=f"finetune {cfg.name} epoch {epoch}/{ft.epochs}", unit="batch"), 0.0
        for k, (rows, batch, errors) in enumerate(bar, 1):
            if errors and not lenient:
                raise DataError(errors[0][1])
            skipped += len(errors)
            if not rows:  # every image of the batch was unreadable
                continue
            loss = torch.nn.functional.binary_cross_entropy_with_logits(head(encoder(to_device(batch[0], device))),
                                                                        targets[rows].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item()
            bar.set_postfix(loss=f"{total / k:.4f}")
        probs = _predict(encoder, head, dataset, cfg, val_records, ft.batch_size, device, workers, lenient)
        val = scores(dataset.targets(val_records), probs)
        history.append({"epoch": epoch, "train_loss": round(total / max(len(loader), 1), 5),
                        "val_map": round(val["map"], 4), "val_sample_f1_at_0.5": round(val["sample_f1"], 4),
                        "seconds": round(time.perf_counter() - t0, 1)})
        say(f"finetune {cfg.name} epoch {epoch}: train loss {history[-1]['train_loss']:.4f}, validation mAP "
            f"{val['map']:.4f}, sample-F1 at 0.5 {val['sample_f1']:.4f} (linear head; watched, not selected on)")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(encoder, out, metadata={"encoder": cfg.name, "finetune": json.dumps(asdict(ft))})
    if skipped:
        say(f"{cfg.name}: fine-tuning skipped {skipped} unreadable training images over {ft.epochs} epochs (--lenient)")
    say(f"{out}: fine-tuned {cfg.name} for {ft.epochs} epochs on {len(records)} train rows in {time.perf_counter() - t0:.0f} s")
    return history


def _train_mode(encoder, freeze_bn: bool) -> None:
    from torch import nn

    encoder.train()
    if freeze_bn:
        for m in encoder.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def _predict(encoder, head, dataset: Dataset, cfg: EncoderCfg, records, batch_size: int, device: str,
             workers: int, lenient: bool):
    """Sigmoid outputs of backbone + head on clean inputs (an unreadable row scores 0 under lenient)."""
    import torch
    from torch.utils.data import DataLoader

    from featcache.encoders.loader import Collate, EncoderInputs, to_device

    probs = torch.zeros(len(records), head.out_features)
    encoder.eval()
    with torch.inference_mode():
        for rows, batch, errors in DataLoader(EncoderInputs(dataset, [cfg], records), batch_size=batch_size,
                                              collate_fn=Collate([encoder]), num_workers=workers):
            if errors and not lenient:
                raise DataError(errors[0][1])
            if rows:
                probs[rows] = torch.sigmoid(head(encoder(to_device(batch[0], device)).float())).cpu()
    return probs.numpy()
