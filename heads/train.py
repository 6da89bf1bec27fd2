"""Train a fusion head on cached features: sklearn-style `Head(cfg).fit(xs, y, val=...)`.

Everything is in memory as tensors and mini-batches are index slices (no DataLoader: at ~20 steps
an epoch its per-batch overhead would dominate). Inputs are standardised with the training rows'
statistics, which live in the network as buffers, so saved weights take raw cached features.
AdamW, early stopping on a validation score the caller passes in (stage 2 passes mAP:
threshold-free, so it does not favour one loss's calibration over another; without one, the
negative validation loss), the best epoch's weights kept. Same seed, same thread count -> same
weights and metrics.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import time
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from heads.config import HeadConfig
from heads.fusion import CLASSIFIERS, FUSIONS
from heads.losses import LOSSES


SHAPE = (512, 1664, 512)  # a head's first layer on a batch: [512, 1664] @ [1664, 512], the product that dominates a fit


def matmul_rates(threads: int = 1, seconds: float = 0.15) -> dict[str, float]:
    """FLOP/s of fp32 and bf16 on a head's dominant product, measured here. bf16 is left after its
    first product when that is 4x slower than fp32's (emulated: ~0.01x on an AVX2 CPU, where a
    full timing would take seconds). CPU flags do not say which is faster: an AVX512-BF16 CPU
    without AMX ran bf16 at 0.58x fp32, an AMX CPU at 2-6x."""
    m, k, n = SHAPE
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    rates = {}
    own = torch.Generator().manual_seed(0)  # not the global generator: a measurement must not move a model's init
    try:
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            a, b = torch.randn(m, k, generator=own).to(dtype), torch.randn(k, n, generator=own).to(dtype)
            a @ b  # kernel selection
            count, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                a @ b
                count += 1
                if name == "bf16" and count == 1 and (time.perf_counter() - t0) * rates["fp32"] > 4 * 2 * m * k * n:
                    break
            rates[name] = count * 2 * m * k * n / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    return rates


def resolved(cfg: HeadConfig) -> HeadConfig:
    """The config with bf16 decided: as given, or whichever of bf16 and fp32 measures faster here."""
    return cfg if cfg.bf16 is not None else replace(cfg, bf16=faster_bf16(cfg.threads))


@functools.cache
def faster_bf16(threads: int = 1) -> bool:
    """bf16 autocast where it measures faster than fp32 here (once per process; featcache's
    planner remembers it across processes and passes it as HeadConfig.bf16)."""
    rates = matmul_rates(threads)
    return rates["bf16"] > rates["fp32"]


class HeadNet(nn.Module):
    """Standardisation (buffers) + a fusion with its classifier.

    A fusion may define `prepare(xs)`: its deterministic, parameter-free first step (concat's
    concatenate + ReLU). Training runs it once per epoch instead of once per step."""

    def __init__(self, dims: list[int], num_labels: int, cfg: HeadConfig):
        super().__init__()
        self.dims, self.num_labels, self.bf16 = list(dims), num_labels, bool(resolved(cfg).bf16)
        for i, d in enumerate(dims):
            self.register_buffer(f"mean{i}", torch.zeros(d))
            self.register_buffer(f"std{i}", torch.ones(d))
        self.outputs: list[nn.Linear] = []  # each classifier's last layer: a row of weights per label

        def classifier(in_dim: int) -> nn.Module:
            module = CLASSIFIERS[cfg.classifier](in_dim, num_labels=num_labels, width=cfg.width, dropout=cfg.dropout)
            self.outputs.append([m for m in module.modules() if isinstance(m, nn.Linear)][-1])
            return module

        self.fusion = FUSIONS[cfg.fusion](dims, num_labels, classifier, cfg.width, cfg.dropout)

    def init_outputs(self, y: torch.Tensor, seed: int) -> None:
        """Draw each label's output weights (as nn.Linear draws them) from a seed made of the run's seed
        and the label's own training column, which rows have it, instead of from its place among the
        labels. The same data with its labels in another order or under other names (a table's sorted
        names against COMP5329's ids) then starts from the same head and trains to the same result, up
        to the rounding of sums over labels. Draws from its own generators: the global one, and so
        every other layer's weights, are as they were."""
        columns = np.packbits(y.numpy() > 0, axis=0)  # [ceil(n / 8), labels]: a label's column as bytes
        with torch.no_grad():
            for k, layer in enumerate(self.outputs):
                bound = 1 / math.sqrt(layer.in_features)
                for label in range(layer.out_features):
                    digest = hashlib.sha256(f"{seed}:{k}:".encode() + columns[:, label].tobytes()).digest()
                    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
                    layer.weight[label].uniform_(-bound, bound, generator=gen)
                    if layer.bias is not None:
                        layer.bias[label].uniform_(-bound, bound, generator=gen)

    def prepare(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Raw features -> the fusion's inputs: standardised, prepared, bf16 when training in bf16."""
        # In place where possible: allocating a fresh 24,000 x 1664 tensor costs 3x the arithmetic.
        dtype = torch.bfloat16 if self.bf16 else torch.float32
        xs = [(x - getattr(self, f"mean{i}")).div_(getattr(self, f"std{i}")).to(dtype) for i, x in enumerate(xs)]
        return self.fusion.prepare(xs) if hasattr(self.fusion, "prepare") else xs

    def logits(self, prepared: list[torch.Tensor]) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            return self.fusion(prepared).float()

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        """Raw cached features (one [B, D_i] tensor per encoder) -> logits [B, num_labels]."""
        return self.logits(self.prepare(xs))


class Head:
    def __init__(self, cfg: HeadConfig = HeadConfig()):
        self.cfg = resolved(cfg)
        self.net: HeadNet | None = None
        self.history: list[dict] = []
        self.best_epoch = self.steps_run = -1
        self.fit_seconds = self.fit_cpu_seconds = float("nan")

    def fit(self, xs: list[np.ndarray], y: np.ndarray, val: tuple[list[np.ndarray], np.ndarray] | None = None,
            views: list[np.ndarray | None] | None = None,
            scorer: Callable[[np.ndarray, np.ndarray], float] | None = None) -> Head:
        """xs: one float array [n, D_i] per encoder; views: per encoder None or [K, n, D_i] augmented
        views of the same rows (each epoch every row takes the clean vector or one view at random).
        With `val`, each epoch is scored on it and the best epoch's weights are kept:
        scorer(y_val, probs) -> float, higher is better; None scores the negative validation loss
        (the config's loss). The history records it per epoch as "val_score"."""
        cfg, t0, c0 = self.cfg, time.perf_counter(), time.process_time()
        torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        xs = [torch.as_tensor(np.asarray(x, np.float32)) for x in xs]
        y_t = torch.as_tensor(np.asarray(y, np.float32))
        _check(xs, y_t, "training")
        self.net = net = HeadNet([x.shape[1] for x in xs], y_t.shape[1], cfg)
        net.init_outputs(y_t, cfg.seed)
        with torch.no_grad():
            for i, x in enumerate(xs):  # numpy's std is ~5x faster than torch's on one thread
                getattr(net, f"mean{i}").copy_(torch.as_tensor(x.numpy().mean(0)))
                getattr(net, f"std{i}").copy_(torch.as_tensor(x.numpy().std(0)).clamp(min=1e-6))
            views = [None if v is None else torch.as_tensor(np.asarray(v, np.float32)) for v in views or [None] * len(xs)]
            fixed = net.prepare(xs) if all(v is None for v in views) else None  # no views: the same every epoch
            val_prepared = self._prepare(val[0]) if val is not None else None
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        # Cosine decay to 0 over the step budget: large early steps, a settled end, few epochs.
        per_epoch = -(-len(y_t) // cfg.batch_size)
        steps = cfg.epochs * per_epoch
        if cap := cfg.step_cap():  # the default schedule's budget (HeadConfig.step_cap)
            steps = min(max(steps, cfg.min_steps), cap)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k / steps, 1.0))))
        loss_fn = LOSSES[cfg.loss]
        n, best, best_state, bad = len(y_t), -np.inf, None, 0
        self.history, self.steps_run = [], 0
        for epoch in range(-(-steps // per_epoch)):
            net.train()
            with torch.no_grad():
                inputs = fixed or net.prepare([_pick_views(x, v, gen) for x, v in zip(xs, views)])
            perm = torch.randperm(n, generator=gen)
            total, seen = 0.0, 0
            for start in range(0, min(n, (steps - epoch * per_epoch) * cfg.batch_size), cfg.batch_size):
                idx = perm[start:start + cfg.batch_size]
                loss = loss_fn(net.logits([x[idx] for x in inputs]), y_t[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                self.steps_run += 1
                total, seen = total + loss.item() * len(idx), seen + len(idx)
            record = {"epoch": epoch + 1, "train_loss": total / seen}
            if val is not None:
                record["val_score"] = self._score(val_prepared, val[1], scorer)
                if record["val_score"] > best:
                    best, bad, self.best_epoch = record["val_score"], 0, epoch + 1
                    best_state = {k: v.clone() for k, v in net.state_dict().items()}
                else:
                    bad += 1
            self.history.append(record)
            if val is not None and bad >= cfg.patience:
                break
        if best_state is not None:
            net.load_state_dict(best_state)
        else:
            self.best_epoch = len(self.history)
        net.eval()
        self.fit_seconds = time.perf_counter() - t0
        self.fit_cpu_seconds = time.process_time() - c0  # = wall time on an idle core (one thread)
        return self

    def predict_proba(self, xs: list[np.ndarray]) -> np.ndarray:
        """Probabilities [n, num_labels] from raw cached features (one array per encoder)."""
        if self.net is None:
            raise RuntimeError("Head.predict_proba before fit (or load)")
        with torch.no_grad():
            return self._predict_prepared(self._prepare(xs))

    def _prepare(self, xs: list[np.ndarray]) -> list[torch.Tensor]:
        xs = [torch.as_tensor(np.asarray(x, np.float32)) for x in xs]
        if [x.shape[1] for x in xs] != self.net.dims:
            raise ValueError(f"feature widths {[x.shape[1] for x in xs]} differ from the head's {self.net.dims}")
        _check(xs, torch.zeros(len(xs[0])), "prediction")
        return self.net.prepare(xs)

    @torch.no_grad()
    def _score(self, inputs: list[torch.Tensor], y: np.ndarray, scorer) -> float:
        """The epoch's validation score: scorer(y, probs), or minus the config's loss on these rows."""
        if scorer is not None:
            return float(scorer(y, self._predict_prepared(inputs)))
        self.net.eval()
        logits = self.net.logits(inputs)
        return -float(LOSSES[self.cfg.loss](logits, torch.as_tensor(np.asarray(y, np.float32))))

    @torch.no_grad()
    def _predict_prepared(self, inputs: list[torch.Tensor], batch_size: int = 8192) -> np.ndarray:
        self.net.eval()
        out = [torch.sigmoid(self.net.logits([x[s:s + batch_size] for x in inputs])) for s in range(0, len(inputs[0]), batch_size)]
        return torch.cat(out).numpy() if out else np.zeros((0, self.net.num_labels), np.float32)

    def save(self, run_dir: str | Path, replacing=None) -> None:
        """head.safetensors + head.json. `replacing(path)`: a context manager yielding a temporary
        path that it renames into place (the caller's, e.g. featcache.outputs.replacing, so a kill
        leaves whole files); None writes them in place."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        meta = {"config": asdict(self.cfg), "dims": self.net.dims, "num_labels": self.net.num_labels,
                "best_epoch": self.best_epoch, "history": self.history}
        writes = [("head.safetensors", lambda p: save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, str(p))),
                  ("head.json", lambda p: p.write_text(json.dumps(meta, indent=1)))]
        for name, write in writes:
            if replacing is None:
                write(run_dir / name)
            else:
                with replacing(run_dir / name) as tmp:
                    write(tmp)

    @classmethod
    def load(cls, run_dir: str | Path) -> Head:
        run_dir = Path(run_dir)
        try:
            meta = json.loads((run_dir / "head.json").read_text())
            names = {f.name for f in fields(HeadConfig)}
            head = cls(HeadConfig(**{k: v for k, v in meta["config"].items() if k in names}))
            head.net = HeadNet(meta["dims"], meta["num_labels"], head.cfg)
            head.net.load_state_dict(load_file(str(run_dir / "head.safetensors")))
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as e:  # damaged or foreign files
            raise ValueError(f"{run_dir}: cannot load the head ({type(e).__name__}: {e})") from None
        head.net.eval()
        head.best_epoch, head.history = meta.get("best_epoch", -1), meta.get("history", [])
        return head


def _pick_views(x: torch.Tensor, views: torch.Tensor | None, gen: torch.Generator) -> torch.Tensor:
    """Each row: the clean vector or one of its K augmented views, uniformly."""
    if views is None:
        return x
    pick = torch.randint(0, len(views) + 1, (len(x),), generator=gen)
    rows = torch.nonzero(pick > 0).squeeze(1)
    x = x.clone()
    x[rows] = views[pick[rows] - 1, rows]
    return x


def _check(xs: list[torch.Tensor], y: torch.Tensor, what: str) -> None:
    if not xs:
        raise ValueError("a head needs at least one feature array")
    if what == "training" and len(y) == 0:
        raise ValueError("no training rows")
    if any(len(x) != len(y) for x in xs):
        raise ValueError(f"{what} rows differ: features {[len(x) for x in xs]}, targets {len(y)}")
    if any(not torch.isfinite(x.sum()) for x in xs):  # one sum: ~20x faster than isfinite(x).all()
        raise ValueError(f"{what} features contain NaN or inf")
