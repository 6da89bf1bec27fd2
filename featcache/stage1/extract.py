"""Stage 1: run a backbone once over every train and test item and cache the features.

    extract(dataset, "efficientnet_lite0", "cache/")  ->  cache/efficientnet_lite0.h5

The cache's fingerprint hashes everything that changes a feature (encoder, weight file bytes,
preprocessing, dataset, fine-tuning, views, dtype, featcache version) and nothing that does not
(batch size, workers, device). The compute path (backend and precision, featcache.encoders.backends) is
part of it, except for torch fp32, the reference path, so caches built before backends existed
stay valid; with `auto` options a complete cache that differs only in its compute path is used
as it is (it was built by one path, so nothing is mixed). It is computed without building the model, so a warm cache
answers in well under 2 s. The work is split into chunks that are written and flushed one by
one; a killed run resumes at the first unwritten chunk. Chunks are whole batches and batches
are planned from the chunk start, so a resumed run computes exactly the batches an
uninterrupted one would, and the features are identical.

Sharded (`shard=I, num_shards=N`, or under torchrun: RANK / WORLD_SIZE): the work rows are cut
into N contiguous blocks of whole chunks; shard I extracts block I into `<name>.h5.shard-I-of-N`.
Same chunks, same batches: with fixed threads the shards hold exactly the unsharded features.
The shard that finishes last (any process, any order) merges them into `<name>.h5` under the
cache lock; `merge(...)` (cli merge-shards) does it by hand.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from stores.features import (FeatureWriter, StoreError, cache_path, merge_shards, read_attrs, shard_path,
                             shard_status)

from featcache import __version__
from featcache.encoders.backends import Compute, candidates, choose, failed_before, model_key, resolve_device
from featcache.data import Dataset, DataError
from featcache.data.images import DECODE_VERSION
from featcache.outputs import check_out_dir, inputs_of
from featcache.encoders.planner import home
from featcache.encoders.registry import EncoderCfg, cache_name
from featcache.encoders.resolve import resolve
from featcache.encoders.weights import WeightsSource, text_tokenizer_source

VIEW_AUGMENT = "hflip, rotate<=10deg, random-resized-crop(scale 0.6-1)"


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


def fingerprint_spec(cfg: EncoderCfg, source: WeightsSource, dataset: Dataset, views: int, dtype: str,
                     finetune: dict | None, compute: Compute = Compute("torch", "fp32")) -> dict:
    """What the features depend on, and only that."""
    preprocessing = cfg.preprocessing()
    if cfg.is_text:  # a random-init text encoder may borrow another tokenizer: say which
        tok_dir, tok_from = text_tokenizer_source(cfg, source)
        preprocessing["tokenizer"] = tok_from
    spec = {
        "encoder": {"name": cfg.name, "family": cfg.family, "source": cfg.source, "embed_dim": cfg.embed_dim},
        "weights_sha256": source.sha256(),
        "preprocessing": preprocessing,
        "dataset": dataset.fingerprint(memo=home() / "fingerprints.json"),
        "finetune": finetune,
        "views": {"k": views, "augment": VIEW_AUGMENT, "seed": 0} if views else None,
        "dtype": dtype,
        "featcache_version": __version__,
        **({} if cfg.is_text else {"decode": DECODE_VERSION}),  # how a photo file becomes pixels
    }
    return with_compute(spec, compute)


def encoder_of(path: Path, attrs: dict):
    """The encoder a cache was extracted with, in eval mode: its configuration (name, input size)
    and the same weights file, checked by its hash, so a new photo or caption is embedded as the
    cache's rows were. StoreError when those weights are gone or changed."""
    from featcache.encoders.models import build_encoder

    config = json.loads(attrs["config"])
    spec, source = config["fingerprint_spec"], config["weights_source"]
    cfg, found = resolve(attrs["encoder"], source["path"], source["kind"] != "random-init",
                         spec["preprocessing"].get("input_size"))
    if found.sha256() != spec["weights_sha256"]:
        raise StoreError(f"{path}: extracted with the weights {source['path']}, which are no longer there or have "
                         f"changed (sha256 {spec['weights_sha256'][:12]}...); restore them or extract again")
    return build_encoder(cfg, found).eval()


def with_compute(spec: dict, compute: Compute) -> dict:
    """The spec on another compute path; torch fp32, the reference, adds nothing (old fingerprints hold)."""
    spec = {k: v for k, v in spec.items() if k != "compute"}
    if not compute.is_reference:
        spec["compute"] = {"backend": compute.backend, "precision": compute.precision}
    return spec


def spec_hash(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _differences(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(keys) or "unknown"


def extract(dataset: Dataset, encoder_name: str, cache_dir: str | Path, *, batch_size: int = 32,
            device: str = "auto", num_workers: int | None = None, threads: int | None = None,
            weights: str | Path | None = None, pretrained: bool = True, image_size: int | None = None,
            views: int = 0, force: bool = False, lenient: bool = False, dtype: str = "float16",
            finetuned: dict | None = None, chunk_batches: int = 8, progress: bool = True,
            log=None, shard: int = 0, num_shards: int = 1, backend: str = "auto",
            precision: str = "auto") -> ExtractResult:
    """`finetuned`: the spec of stage-1 fine-tuned `weights` (featcache.stage1.build trains them); the
    cache is then `<name>_ft`, and the spec is part of its fingerprint. `backend` (auto, torch,
    openvino) and `precision` (auto, fp32, bf16, fp16): featcache.encoders.backends.choose."""
    t0 = time.perf_counter()
    messages: list[str] = []

    def say(message: str) -> None:
        messages.append(message)
        (log or (lambda m: print(m, file=sys.stderr)))(message)

    if not 0 <= shard < num_shards:
        raise ValueError(f"--shard {shard} is not in 0..{num_shards - 1} (--num-shards {num_shards})")
    check_out_dir(cache_dir, inputs_of(dataset=dataset))  # before any work: a directory, not in the data
    device = resolve_device(device)
    compute, chosen = choose(backend, precision, device), backend == precision == "auto"
    cfg, source = resolve(encoder_name, weights, pretrained, image_size)
    if not dataset.has(cfg.modality):
        raise DataError(f"{dataset.name}: has no {cfg.modality} column, and {cfg.name} is an {cfg.modality} encoder "
                        f"(the data has {' and '.join(dataset.modalities)})")
    if views and cfg.is_text:
        raise ValueError(f"{cfg.name}: --views applies to image encoders only")
    name = cache_name(cfg.name) + ("_ft" if finetuned else "")
    spec = fingerprint_spec(cfg, source, dataset, views, dtype, finetuned)  # hashes the weights: once
    key = model_key({k: spec[k] for k in ("encoder", "weights_sha256", "preprocessing", "finetune")}) \
        if compute.backend == "openvino" else ""
    if key and (why := failed_before(key)):
        say(f"{cfg.name}: did not convert to OpenVINO before ({why}); running it on torch {compute.precision}")
        compute = Compute("torch", compute.precision)
    spec = with_compute(spec, compute)
    fingerprint = spec_hash(spec)
    path = cache_path(cache_dir, name)

    def warm(rebuild: bool = force) -> ExtractResult | None:
        """The existing cache if it is complete and built from this configuration; refuse a
        different one. With `rebuild` (--force) any existing cache is rebuilt beside it and
        replaced atomically: also one of this configuration whose bytes are damaged."""
        if not path.exists():
            return None
        try:
            attrs = read_attrs(path)
        except StoreError:
            if not rebuild:
                raise
            say(f"{path}: unreadable, rebuilding (--force)")
            return None
        old = json.loads(attrs.get("fingerprint_spec", "{}"))
        same_model = {k: v for k, v in old.items() if k != "compute"} == {k: v for k, v in spec.items() if k != "compute"}
        if attrs.get("complete") and (attrs.get("fingerprint") == fingerprint or (chosen and same_model)):
            if rebuild:
                say(f"{path}: rebuilding it (--force)")
                return None
            if attrs.get("fingerprint") != fingerprint:
                say(f"{path}: built on {_compute_of(old)}; used as it is (--backend/--precision auto)")
            return ExtractResult(name, path, attrs["fingerprint"], int(attrs["rows"]), True, time.perf_counter() - t0,
                                 skipped=json.loads(attrs.get("skipped", "[]")), messages=messages,
                                 compute=_compute_of(old))
        if not rebuild:
            raise StoreError(f"{path}: cache built from a different configuration (fingerprint {attrs.get('fingerprint')} "
                             f"!= {fingerprint}; differs in: {_differences(old, spec)}). Not mixing them: rerun with "
                             f"--force to rebuild it, or use another --cache directory.")
        say(f"{path}: configuration changed ({_differences(old, spec)}), rebuilding (--force)")
        return None

    if (hit := warm()) is not None:
        return hit
    # auto options: the paths are timed here once (featcache.encoders.backends.fastest), after the warm check
    paths = candidates(backend, precision, device)
    if compute.backend == "torch":  # torch asked for, or the model did not convert before
        paths = [p for p in paths if p.backend == "torch"] or [compute]
    encoder, run, used = _model(cfg, source, compute, device, key, threads, say,
                                plan=(paths, dataset, spec_hash({k: spec[k] for k in ("encoder", "weights_sha256",
                                                                                     "preprocessing", "finetune")}),
                                      batch_size))
    if used != compute:  # it did not convert: the features will be torch's, and so is the fingerprint
        compute, spec = used, with_compute(spec, used)
        fingerprint = spec_hash(spec)
        if (hit := warm()) is not None:
            return hit

    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    out = shard_path(path, shard, num_shards) if num_shards > 1 else path
    lock = FileLock(str(out) + ".lock")
    waited = False
    try:
        lock.acquire(timeout=0)
    except Timeout:
        say(f"{out}: another process is extracting it; waiting for it to finish")
        lock.acquire()
        waited = True
    try:
        # the other process finished it while we waited: use it, even under --force (it is new)
        if (hit := warm(rebuild=force and not waited)) is not None:
            return hit
        config = {"fingerprint_spec": spec, "encoder_cfg": json.loads(json.dumps(asdict(cfg), default=str)),
                  "weights_source": {"kind": source.kind, "path": str(source.path) if source.path else None},
                  "run": {"batch_size": batch_size, "device": device, "num_workers": num_workers, "threads": threads,
                          "compute": str(compute)},
                  "dataset_root": str(dataset.root)}
        attrs = {"fingerprint": fingerprint, "fingerprint_spec": json.dumps(spec, sort_keys=True),
                 "config": json.dumps(config, sort_keys=True), "encoder": cfg.name, "modality": cfg.modality,
                 "featcache_version": __version__}
        rows = shard_rows(Work(dataset, cfg, views).total, batch_size * chunk_batches, shard, num_shards)
        if num_shards > 1 and _shard_done(out, fingerprint, rows):
            result = ExtractResult(name, out, fingerprint, 0, True, time.perf_counter() - t0, messages=messages)
        else:
            result = _run(dataset, cfg, encoder, run, compute, out, attrs, views, dtype, batch_size, chunk_batches, device,
                          num_workers, threads, lenient, progress, say, messages, t0, rows if num_shards > 1 else None)
    finally:
        lock.release()
    if num_shards > 1 and merge(path, num_shards, force=force, say=say):
        result.path = path
    return result


def _compute_of(spec: dict) -> str:
    return str(Compute(**spec.get("compute") or {"backend": "torch", "precision": "fp32"}))


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
        run, used = fastest(encoder, _sample(dataset, cfg, 4 * batch_size), paths, device, key, {"model": model},
                            batch_size, threads, say)
    else:
        run, used = runner(encoder, paths[0], device, key, threads, say)
    return encoder, run, used


def _sample(dataset: Dataset, cfg: EncoderCfg, n: int) -> list:
    """The first n readable photos (PIL) or captions of the dataset: the planner times real inputs."""
    if cfg.is_text:
        return [r.caption for r in (dataset.train + dataset.test)[:n]]
    out = []
    for r in dataset.train + dataset.test:
        try:
            out.append(dataset.open_image(r))
        except DataError:  # an unreadable photo is extract's to report (or skip, --lenient)
            continue
        if len(out) == n:
            break
    return out


def shard_rows(total: int, chunk: int, shard: int, num_shards: int) -> tuple[int, int]:
    """Work rows [lo, hi) of shard I: a contiguous block of whole chunks (so its batches are the
    unsharded run's batches); shards differ by at most one chunk."""
    chunks = -(-total // chunk)
    return (min(total, shard * chunks // num_shards * chunk), min(total, (shard + 1) * chunks // num_shards * chunk))


def _shard_done(out: Path, fingerprint: str, rows: tuple[int, int]) -> bool:
    """A complete shard file of this configuration and rows is reused; any other is deleted."""
    if not out.exists():
        return False
    try:
        a = read_attrs(out)
    except StoreError:
        a = {}
    if a.get("complete") and a.get("fingerprint") == fingerprint and (a.get("lo"), a.get("hi")) == rows:
        return True
    out.unlink()
    return False


def merge(path: Path, num_shards: int | None = None, force: bool = False, say=print) -> bool:
    """Merge the N shards of `path` if all are complete; False (and which are pending) if not.
    Under the cache lock: of two shards finishing at once, one merges, the other finds it done.
    num_shards None: the N of the shard files beside `path` (StoreError unless exactly one N)."""
    from filelock import FileLock

    if num_shards is None:
        counts = {int(m.group(1)) for p in path.parent.glob(f"{path.name}.shard-*-of-*")
                  if (m := re.search(r"-of-(\d+)(\.partial)?$", p.name))}
        if len(counts) != 1:
            raise StoreError(f"{path}: expected the shards of one --num-shards run beside it, "
                             f"found {'none' if not counts else sorted(counts)}")
        num_shards = counts.pop()

    if pending := shard_status(path, num_shards):
        say(f"{path}: not merged yet: " + "; ".join(pending))
        return False
    with FileLock(str(path) + ".lock"):
        if shard_status(path, num_shards):  # merged (and the shards deleted) while we waited
            return True
        if path.exists() and not force:
            old, new = read_attrs(path), read_attrs(shard_path(path, 0, num_shards))
            if old.get("complete") and old.get("fingerprint") != new.get("fingerprint"):
                raise StoreError(f"{path}: cache built from a different configuration (fingerprint {old.get('fingerprint')} "
                                 f"!= shards' {new.get('fingerprint')}); rerun with --force to replace it")
        merge_shards(path, num_shards)
    say(f"{path}: merged {num_shards} shards")
    return True


class Work:
    """Work row w -> (w, [model input], error or None), as featcache.encoders.loader's items. Clean rows
    first (train then test), then the views: view k of train row r is r's epoch-(k + 1) view."""

    def __init__(self, dataset: Dataset, cfg: EncoderCfg, views: int):
        self.records = dataset.train + dataset.test
        self.n, self.n_train = len(self.records), len(dataset.train)
        self.total = self.n + views * self.n_train
        self.dataset, self.cfg = dataset, cfg

    def __len__(self) -> int:
        return self.total

    def row(self, w: int) -> int:
        """The clean row a work row is about (a view's train row)."""
        return w if w < self.n else (w - self.n) % self.n_train

    def record(self, w: int):
        from featcache.encoders.loader import view_seed  # torch: only once there is work (a warm cache never gets here)

        if w < self.n:
            return self.records[w], None
        v, r = divmod(w - self.n, self.n_train)
        return self.records[r], view_seed(0, v + 1, r)  # a view's seed depends only on (view, row)

    def __getitem__(self, w: int):
        from featcache.encoders.loader import item

        rec, seed = self.record(w)
        return item(self.dataset, [self.cfg], rec, w, seed)


def plan_batches(work: Work, start: int, chunk: int, batch_size: int, stop: int | None = None) -> list[list[int]]:
    """Batches of work rows [start, stop), never crossing a chunk. Captions are sorted by length
    inside a chunk, so a batch pads to similar lengths (the pooled features do not change)."""
    batches, stop = [], work.total if stop is None else stop
    for a in range(start, stop, chunk):
        rows = list(range(a, min(a + chunk, stop)))
        if work.cfg.is_text:
            rows.sort(key=lambda w: len(work.record(w)[0].caption))
        batches += [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
    return batches


def _run(dataset, cfg, encoder, run, compute, path, attrs, views, dtype, batch_size, chunk_batches, device, num_workers,
         threads, lenient, progress, say, messages, t0, rows=None) -> ExtractResult:
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from featcache.encoders.loader import Collate, to_device

    work = Work(dataset, cfg, views)
    ids = [r.image_id for r in work.records]
    writer, message = FeatureWriter.open(path, ids, cfg.embed_dim, work.n_train, views, attrs, dtype, rows)
    say(message)
    try:
        start, stop = writer.rows_done, writer.hi
        # OpenVINO schedules its own threads; torch's are tuned batch by batch unless given
        tuner = None if threads or device != "cpu" or compute.backend != "torch" else ThreadTuner(_cpus())
        torch.set_num_threads(threads or (tuner.current if tuner else _cpus()))
        chunk = batch_size * chunk_batches
        if num_workers is None:  # images: decode in a worker while the model runs; text: tokenising is cheap
            num_workers = 0 if cfg.is_text else max(1, min(4, (os.cpu_count() or 2) - 1))
        loader = DataLoader(work, batch_sampler=plan_batches(work, start, chunk, batch_size, stop), num_workers=num_workers,
                            collate_fn=Collate([encoder]), pin_memory=device.startswith("cuda"),
                            prefetch_factor=4 if num_workers else None)
        unit = "caption" if cfg.is_text else "img"
        bar = tqdm(total=stop - writer.lo, initial=start - writer.lo, unit=unit, desc=path.stem, disable=not progress, smoothing=0.1)
        buffer = np.zeros((chunk, cfg.embed_dim), np.float32)
        chunk_start, left, skips = start, min(chunk, stop - start), []
        t_run = time.perf_counter()
        with torch.inference_mode():
            for ok, batch, errors in loader:
                for w, err in errors:
                    if not lenient:
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
    say(f"{path}: {rows} x {cfg.embed_dim} ({views} views) in {time.perf_counter() - t0:.1f} s, {rate:.1f} {unit}/s "
        f"on {compute}")
    return ExtractResult(path.stem, path, attrs["fingerprint"], work.n - len({s["row"] for s in skipped}), False,
                         time.perf_counter() - t0, rate, str(compute), start, skipped, messages)


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class ThreadTuner:
    """Picks torch's thread count batch by batch from the measured forward speed. On a machine
    shared with another busy process, 2 threads on 2 cores run 2x slower than 1 (each waits on
    the other); alone, 2 run faster. So: run the best measured count, and every `explore`
    batches re-measure the least recently tried one. Thread counts change float32 rounding
    (~1e-6), so a run that must be bit-for-bit reproducible passes threads explicitly."""

    def __init__(self, cpus: int, explore: int = 16):
        self.candidates = sorted({1, max(1, cpus // 2), cpus})
        self.rate: dict[int, float] = {}
        self.tried: dict[int, int] = {}
        self.current, self.batches, self.explore = cpus, 0, explore

    def update(self, work: float, seconds: float) -> int:
        self.batches += 1
        if self.batches == 1:  # the first batch also pays for kernel selection: not a fair measurement
            return self.current
        self.rate[self.current], self.tried[self.current] = work / max(seconds, 1e-9), self.batches
        untried = [n for n in self.candidates if n not in self.rate]
        if untried:
            self.current = untried[0]
        elif self.batches % self.explore == 0:
            self.current = min(self.candidates, key=lambda n: self.tried[n])
        else:
            self.current = max(self.rate, key=self.rate.get)
        return self.current
