"""Stage 1: run a backbone once over every train and test item and cache the features.

    extract(dataset, "efficientnet_lite0", "cache/")  ->  cache/efficientnet_lite0.h5

A warm cache (stage1.fingerprint) answers before any model is built. The work (stage1.work) is
split into chunks that are written and flushed one by one; a killed run resumes at the first
unwritten chunk, and computes exactly the batches an uninterrupted one would, so the features
are identical. One writer per file (stage1.locks); shards and their merge: stage1.shards.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from featcache import __version__
from featcache.data import DataError, Dataset
from featcache.encoders.backends import Compute, candidates, choose, failed_before, model_key, resolve_device
from featcache.encoders.registry import EncoderCfg, cache_name
from featcache.encoders.resolve import resolve
from featcache.encoders.weights import WeightsSource
from featcache.outputs import check_out_dir, inputs_of
from featcache.options import from_flat
from featcache.stage1.config import ExtractConfig
from featcache.stage1.fingerprint import (compute_of, fingerprint_spec, model_spec, spec_hash, warm_attrs,
                                          with_compute)
from featcache.stage1.locks import exclusive
from featcache.stage1.shards import merge, shard_done, shard_rows
from featcache.encoders.planner import cpus
from featcache.stage1.threads import ThreadTuner
from featcache.stage1.work import Work, first_inputs, plan_batches
from stores.features import FeatureWriter, cache_path, shard_path


@dataclass
class ExtractResult:
    name: str
    path: Path
    fingerprint: str
    rows: int
    warm: bool
    seconds: float
    items_per_s: float = 0.0
    compute: str = ""
    resumed_from: int = 0
    skipped: list[dict] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    def summary(self) -> str:
        state = "warm, not recomputed" if self.warm else f"{self.items_per_s:.1f} items/s on {self.compute}"
        line = f"{self.path}: {self.rows} rows, fingerprint {self.fingerprint} ({state}, {self.seconds:.2f} s)"
        if self.skipped:
            line += f"\nskipped {len(self.skipped)} items: " + ", ".join(s["image_id"] for s in self.skipped[:20])
        return line


def extract(dataset: Dataset, encoder_name: str, cache_dir: str | Path | None = None, *,
            config: ExtractConfig | None = None, finetuned: dict | None = None, log=None, **options) -> ExtractResult:
    """`config`, or ExtractConfig's fields as `options` (`cache_dir`: its cache). `finetuned`: the spec
    of stage-1 adapted weights (featcache.stage1.build trains them); the cache is then `<name>_ft`,
    and the spec is part of its fingerprint. backend and precision: featcache.encoders.backends.choose."""
    opt = config or from_flat(ExtractConfig, {**options, **({"cache": Path(cache_dir)} if cache_dir is not None else {})})
    t0 = time.perf_counter()
    messages: list[str] = []

    def say(message: str) -> None:
        messages.append(message)
        (log or (lambda m: print(m, file=sys.stderr)))(message)

    check_out_dir(opt.cache, inputs_of(dataset=dataset))  # before any work: a directory, not in the data
    device = resolve_device(opt.device)
    compute, auto = choose(opt.backend, opt.precision, device), opt.backend == opt.precision == "auto"
    cfg, source = resolve(encoder_name, opt.weights, opt.pretrained, opt.image_size)
    if not dataset.has(cfg.modality):
        raise DataError(f"{dataset.name}: has no {cfg.modality} column, and {cfg.name} is an {cfg.modality} encoder "
                        f"(the data has {' and '.join(dataset.modalities)})")
    if opt.views and cfg.is_text:
        raise ValueError(f"{cfg.name}: --views applies to image encoders only")
    name = cache_name(cfg.name) + ("_ft" if finetuned else "")
    spec = fingerprint_spec(cfg, source, dataset, opt.views, opt.dtype, finetuned)  # hashes the weights: once
    key = model_key(model_spec(spec)) if compute.backend == "openvino" else ""
    if key and (why := failed_before(key)):
        say(f"{cfg.name}: did not convert to OpenVINO before ({why}); running it on torch {compute.precision}")
        compute = Compute("torch", compute.precision)
    spec = with_compute(spec, compute)
    fingerprint = spec_hash(spec)
    path = cache_path(opt.cache, name)

    def warm(rebuild: bool = opt.force) -> ExtractResult | None:
        attrs = warm_attrs(path, spec, fingerprint, auto=auto, rebuild=rebuild, say=say)
        if attrs is None:
            return None
        return ExtractResult(name, path, attrs["fingerprint"], int(attrs["rows"]), True, time.perf_counter() - t0,
                             skipped=json.loads(attrs.get("skipped", "[]")), messages=messages,
                             compute=compute_of(json.loads(attrs.get("fingerprint_spec", "{}"))))

    if (hit := warm()) is not None:
        return hit
    # auto options: the paths are timed here once (featcache.encoders.backends.fastest), after the warm check
    paths = candidates(opt.backend, opt.precision, device)
    if compute.backend == "torch":  # torch asked for, or the model did not convert before
        paths = [p for p in paths if p.backend == "torch"] or [compute]
    encoder, run, used = _model(cfg, source, compute, device, key, opt.threads, say,
                                plan=(paths, dataset, spec_hash(model_spec(spec)), opt.batch_size))
    if used != compute:  # it did not convert: the features will be torch's, and so is the fingerprint
        compute, spec = used, with_compute(spec, used)
        fingerprint = spec_hash(spec)
        if (hit := warm()) is not None:
            return hit

    path.parent.mkdir(parents=True, exist_ok=True)
    sharded = opt.num_shards > 1
    out = shard_path(path, opt.shard, opt.num_shards) if sharded else path
    with exclusive(out, say) as waited:
        # the other process finished it while we waited: use it, even under --force (it is new)
        if (hit := warm(rebuild=opt.force and not waited)) is not None:
            return hit
        config = {"fingerprint_spec": spec, "encoder_cfg": json.loads(json.dumps(asdict(cfg), default=str)),
                  "weights_source": {"kind": source.kind, "path": str(source.path) if source.path else None},
                  "run": {"batch_size": opt.batch_size, "device": device, "num_workers": opt.num_workers,
                          "threads": opt.threads, "compute": str(compute)},
                  "dataset_root": str(dataset.root)}
        attrs = {"fingerprint": fingerprint, "fingerprint_spec": json.dumps(spec, sort_keys=True),
                 "config": json.dumps(config, sort_keys=True), "encoder": cfg.name, "modality": cfg.modality,
                 "featcache_version": __version__}
        rows = shard_rows(Work(dataset, cfg, opt.views).total, opt.batch_size * opt.chunk_batches, opt.shard,
                          opt.num_shards)
        if sharded and shard_done(out, fingerprint, rows):
            result = ExtractResult(name, out, fingerprint, 0, True, time.perf_counter() - t0, messages=messages)
        else:
            result = _run(dataset, cfg, opt, encoder, run, compute, device, out, attrs, say, messages, t0,
                          rows if sharded else None)
    if sharded and merge(path, opt.num_shards, force=opt.force, say=say):
        result.path = path
    return result


def _model(cfg: EncoderCfg, source: WeightsSource, compute: Compute, device: str, key: str, threads: int | None, say,
           plan=None):
    """(encoder module, batch -> features, the compute actually used): OpenVINO converts here, so a
    model that does not convert is known before anything is written. `plan`: (paths, dataset,
    model id, batch size); several paths are timed on the dataset's first items (backends.fastest)."""
    from featcache.encoders.backends import fastest, runner
    from featcache.encoders.models import build_encoder

    encoder = build_encoder(cfg, source)
    paths, dataset, model, batch_size = plan or ([compute], None, "", 0)
    if len(paths) > 1:
        run, used = fastest(encoder, first_inputs(dataset, cfg, 4 * batch_size), paths, device, key, {"model": model},
                            batch_size, threads, say)
    else:
        run, used = runner(encoder, paths[0], device, key, threads, say)
    return encoder, run, used


def _run(dataset: Dataset, cfg: EncoderCfg, opt: ExtractConfig, encoder, run, compute: Compute, device: str,
         path: Path, attrs: dict, say, messages: list[str], t0: float, rows=None) -> ExtractResult:
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from featcache.encoders.loader import Collate, to_device

    work = Work(dataset, cfg, opt.views)
    ids = [r.image_id for r in work.records]
    writer, message = FeatureWriter.open(path, ids, cfg.embed_dim, work.n_train, opt.views, attrs, opt.dtype, rows)
    say(message)
    try:
        start, stop = writer.rows_done, writer.hi
        # OpenVINO schedules its own threads; torch's are tuned batch by batch unless given
        tuner = None if opt.threads or device != "cpu" or compute.backend != "torch" else ThreadTuner(cpus())
        torch.set_num_threads(opt.threads or (tuner.current if tuner else cpus()))
        chunk, batch_size, num_workers = opt.batch_size * opt.chunk_batches, opt.batch_size, opt.num_workers
        if num_workers is None:  # images: decode in a worker while the model runs; text: tokenising is cheap
            num_workers = 0 if cfg.is_text else max(1, min(4, cpus() - 1))
        loader = DataLoader(work, batch_sampler=plan_batches(work, start, chunk, batch_size, stop), num_workers=num_workers,
                            collate_fn=Collate([encoder]), pin_memory=device.startswith("cuda"),
                            prefetch_factor=4 if num_workers else None)
        unit = "caption" if cfg.is_text else "img"
        bar = tqdm(total=stop - writer.lo, initial=start - writer.lo, unit=unit, desc=path.stem, disable=not opt.progress, smoothing=0.1)
        buffer = np.zeros((chunk, cfg.embed_dim), np.float32)
        chunk_start, left, skips = start, min(chunk, stop - start), []
        t_run = time.perf_counter()
        with torch.inference_mode():
            for ok, batch, errors in loader:
                for w, err in errors:
                    if not opt.lenient:
                        raise DataError(err)
                    skips.append({"row": work.row(w), "image_id": ids[work.row(w)], "work_row": w, "reason": err})
                if ok:
                    x = to_device(batch[0], device)
                    t_batch = time.perf_counter()
                    run.submit(x, functools.partial(buffer.__setitem__, np.asarray(ok) - chunk_start))
                    if tuner:  # torch runs submitted batches at once  # work = input elements: tokens for text (batches differ in length), pixels for images
                        size = x["input_ids"].numel() if isinstance(x, dict) else x.numel()
                        torch.set_num_threads(tuner.update(size, time.perf_counter() - t_batch))
                for w, _ in errors:
                    buffer[w - chunk_start] = 0.0
                left -= len(ok) + len(errors)
                bar.update(len(ok) + len(errors))
                if left == 0:
                    run.wait()  # OpenVINO may still be filling the chunk's last rows
                    n = min(chunk, stop - chunk_start)
                    writer.write(chunk_start, buffer[:n], skips)
                    if tuner:
                        bar.set_postfix(threads=tuner.current)
                    chunk_start, left, skips = chunk_start + n, min(chunk, stop - chunk_start - n), []
        bar.close()
        done = stop - start
        rate = done / max(time.perf_counter() - t_run, 1e-9)
        skipped = writer.skipped
        writer.finish()
    finally:
        run.wait()  # no OpenVINO request may outlive the buffer it writes into (an error leaves some in flight)
        writer.close()
    if skipped:
        say(f"{path}: skipped {len(skipped)} unreadable items (absent from the cache): "
            + "; ".join(s["reason"] for s in skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    rows = f"work rows {writer.lo}..{writer.hi} of {work.total}" if writer.is_shard else f"{work.n} rows"
    say(f"{path}: {rows} x {cfg.embed_dim} ({opt.views} views) in {time.perf_counter() - t0:.1f} s, {rate:.1f} {unit}/s "
        f"on {compute}")
    return ExtractResult(path.stem, path, attrs["fingerprint"], work.n - len({s["row"] for s in skipped}), False,
                         time.perf_counter() - t0, rate, str(compute), start, skipped, messages)
