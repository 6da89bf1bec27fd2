"""How a built encoder runs over batches: the backend (torch or OpenVINO) and the precision.

    compute = choose("auto", "auto", "cpu")   # the fastest path this machine has
    run, compute = runner(encoder, compute, "cpu", key)   # batch -> float32 features [B, D]

torch: channels-last images; bf16 or fp16 through autocast. OpenVINO: the whole encoder module
(normalisation and pooling included) is converted once with `openvino.convert_model` and kept as
IR in the model cache (`$FEATCACHE_HOME/openvino`, default ~/.cache/featcache), keyed by what
changes it; it is compiled with the precision as OpenVINO's inference precision. A module that
does not convert falls back to torch, says why, and the failure is remembered so the next run
names torch from the start (and its cache fingerprint says torch).

`auto` is not guessed from CPU flags (an AVX512-BF16 CPU without AMX runs bf16 slower than fp32,
an AMX one 2-6x faster): `fastest(...)` times each path this machine can run on a few real
batches, keeps those whose features stay within one fp16 step of torch fp32's (the cache stores
fp16), and featcache.encoders.planner remembers the winner per machine and model. bf16 is timed only where
a bf16 matmul is not emulated (`bf16_matmul_ratio`: an AVX2 CPU emulates it at ~0.01x fp32, where
one batch would take minutes); OpenVINO bf16 is refused where OpenVINO has no bf16 (it would
silently run fp32).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featcache.encoders.planner import cpus, home

BACKENDS = ("auto", "torch", "openvino")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Compute:
    backend: str  # "torch" | "openvino"
    precision: str  # "fp32" | "bf16" | "fp16"

    @property
    def is_reference(self) -> bool:
        """torch fp32: the path every cache was built with before backends existed."""
        return (self.backend, self.precision) == ("torch", "fp32")

    def __str__(self) -> str:
        return f"{self.backend} {self.precision}"


@functools.cache
def bf16_matmul_ratio(n: int = 256) -> float:
    """bf16 over fp32 matmul speed on one thread, measured on a small product (~40 ms where bf16
    is emulated, under 1 ms elsewhere): a gate that keeps emulated bf16 out of the timing."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        speed = {}
        for dtype in (torch.float32, torch.bfloat16):
            a = torch.randn(n, n, generator=torch.Generator().manual_seed(0)).to(dtype)  # not the global generator
            a @ a  # kernel selection
            t0, k = time.perf_counter(), 0
            while k < 3 or time.perf_counter() - t0 < 0.01:
                a @ a
                k += 1
            speed[dtype] = k / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return speed[torch.bfloat16] / speed[torch.float32]


EMULATED = 0.25  # a bf16 matmul under a quarter of fp32's speed is emulated (measured ~0.01x on AVX2)


def openvino_bf16() -> bool:
    """Whether OpenVINO's CPU plugin runs bf16 here (else it silently runs f32)."""
    return "BF16" in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def resolve_device(device: str) -> str:
    """`auto`: cuda when this machine has an NVIDIA GPU torch can use, else cpu. The device file is
    looked at first, so a CPU machine decides without importing torch (a warm cache stays quick).
    A GPU this machine does not have is refused in one line."""
    if device.startswith("cuda"):
        import torch

        index = int(device.partition(":")[2] or 0)
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPUs; use --device cpu")
    if device != "auto":
        return device
    if not Path("/dev/nvidiactl").exists():
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def choose(backend: str = "auto", precision: str = "auto", device: str = "cpu") -> Compute:
    """Validate the options in one place and resolve `auto`; ValueError says what to use instead."""
    if backend not in BACKENDS:
        raise ValueError(f"--backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    cuda = device.startswith("cuda")
    if cuda:
        if backend == "openvino":
            raise ValueError("--backend openvino runs on the CPU: use --device cpu, or --backend torch on a GPU")
        if precision == "auto":
            import torch

            precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp16"
        return Compute("torch", precision)
    if precision == "fp16":
        raise ValueError("--precision fp16 is for GPUs; on a CPU use fp32, or bf16 where the CPU has it natively")
    if backend == "auto":
        backend = "openvino" if openvino_installed() else "torch"
    elif backend == "openvino" and not openvino_installed():
        raise ValueError("--backend openvino: openvino is not installed (pip install openvino, or "
                         "pip install -e '.[openvino]'); --backend torch works without it")
    if precision == "auto":  # provisional: extract times the paths (fastest) before computing anything
        precision = "fp32"
    elif precision == "bf16" and backend == "openvino" and not openvino_bf16():
        raise ValueError("--precision bf16: OpenVINO has no bf16 on this CPU and would run fp32 instead; "
                         "use --precision fp32 (or auto)")
    return Compute(backend, precision)


def candidates(backend: str = "auto", precision: str = "auto", device: str = "cpu") -> list[Compute]:
    """The paths `auto` options leave open, the choice's default first."""
    cuda = device.startswith("cuda")
    backends = [backend] if backend != "auto" else (["openvino"] if openvino_installed() and not cuda else []) + ["torch"]
    if precision != "auto":
        precisions = [precision]
    elif cuda:
        precisions = ["bf16", "fp16"]  # autocast; fp32 on a GPU is never the fastest
    else:
        precisions = ["fp32", "bf16"]
    return [Compute(b, p) for b in backends for p in precisions]


def model_dir() -> Path:
    return home() / "openvino"


def model_key(what: dict) -> str:
    """A converted model is keyed by what changes it (encoder, weights, preprocessing, fine-tuning)
    and by the converter's version."""
    from importlib.metadata import PackageNotFoundError, version

    def v(lib):
        try:
            return version(lib)
        except PackageNotFoundError:  # torch only: the key still names the model
            return None

    blob = json.dumps({**what, "openvino": v("openvino"), "torch": v("torch")}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def failed_before(key: str) -> str | None:
    """Why this model did not convert last time, or None."""
    marker = model_dir() / f"{key}.failed"
    return marker.read_text() if marker.exists() else None


def runner(encoder, compute: Compute, device: str, key: str, threads: int | None = None, say=print):
    """(a runner, the compute actually used). OpenVINO falls back to torch, with a message, when the
    module does not convert. A runner: `run(batch) -> float32 CPU tensor [B, D]`, or
    `run.submit(batch, done)` which calls `done(features as numpy)` once they are ready (at once on
    torch; from OpenVINO's own thread there), and `run.wait()` until every submitted batch is done."""
    if compute.backend == "openvino":
        try:
            return OpenVinoRunner(encoder, compute, key, threads), compute
        except Exception as e:  # a converter's failure can be any exception type
            lines = [line.strip("- ") for line in str(e).splitlines() if line.strip("- ")]
            reason = f"{type(e).__name__}: {lines[-1][:300] if lines else ''}"  # the converter's summary is last
            marker = model_dir() / f"{key}.failed"
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(reason)
            say(f"{encoder.cfg.name}: does not convert to OpenVINO ({reason}); running it on torch {compute.precision} "
                f"(remembered in {marker}: delete it to try again)")
            compute = Compute("torch", compute.precision)
    return TorchRunner(encoder, compute, device, say), compute


PLAN_BATCHES = 3  # full timed batches per path at most, after its untimed parity batch
PARITY_ITEMS = 8  # the untimed batch (features compared with torch fp32's), then timed first
ABANDON = 1.5  # a path this much slower than the best so far is dropped after its first timed piece


def fastest(encoder, items: list, paths: list[Compute], device: str, key: str, model: dict, batch_size: int = 32,
            threads: int | None = None, say=print):
    """(runner, compute) of the fastest of `paths` on this machine, timed once on `items` (real
    photos or captions) and remembered by featcache.encoders.planner. A path must give features within one
    fp16 step (at the features' scale) of torch fp32's on the same batch: the cache stores fp16,
    so a path that moves a feature further changes what is stored. One path: no timing."""
    from featcache.encoders import planner

    if len(paths) == 1:
        return runner(encoder, paths[0], device, key, threads, say)
    unit = "caption" if encoder.cfg.is_text else "img"
    n = threads or planner.cpus()
    what = {**model, "device": device, "batch_size": batch_size, "paths": [str(p) for p in paths]}
    built: dict = {}  # the timed runners: the winner's is used as it is (an OpenVINO compile saved)
    choice, measured = planner.planned("extract", what, n, lambda: _time_paths(encoder, items, paths, device, key,
                                                                              batch_size, threads, say, built), say)
    if measured:
        say(planner.rates_line(f"extract {encoder.cfg.name}", choice, unit))
    if choice["path"] in built:
        return built[choice["path"]], Compute(*choice["path"].split())
    return runner(encoder, Compute(*choice["path"].split()), device, key, threads, say)


def _time_paths(encoder, items, paths, device, key, batch_size, threads, say, built: dict) -> dict:
    """The planning pass: every open path built, checked against torch fp32 and timed (`built`
    keeps the runners). Its `seconds` leave out OpenVINO's conversion, which a run that names
    --backend openvino pays as well."""
    import torch

    t_plan = time.perf_counter()
    torch.set_num_threads(threads or cpus())
    check = encoder.collate(items[:PARITY_ITEMS])
    # the parity batch is timed first: a clearly slower path is dropped before any full batch
    pieces = [check] + [encoder.collate(items[i:i + batch_size]) for i in range(0, len(items), batch_size)][:PLAN_BATCHES]
    reference_path, rejected = str(Compute("torch", "fp32")), {}
    with torch.inference_mode():
        # torch fp32's own runner gives the reference when it is a path (its warm-up, too); else the
        # module as built, on the CPU, before a runner moves it (a GPU's convolutions may run TF32)
        reference = None if reference_path in map(str, paths) else encoder(check).float().numpy()
        built.update(_build(encoder, paths, device, key, threads, say, rejected))
        if reference is None:
            reference = built[reference_path](_to(check, device)).float().cpu().numpy()
    converted = sum(getattr(run, "converted_in", 0.0) for run in built.values())
    step = float(np.spacing(np.float16(np.abs(reference).max())))  # one fp16 step at the features' scale
    rates, best = {}, 0.0
    for path, run in list(built.items()):
        if path != reference_path and (why := _parity(run, check, reference, step, device)):
            rejected[path] = why
            del built[path]
            continue
        rates[path] = _rate(run, pieces, device, best)
        best = max(best, rates[path])
    seconds = round(time.perf_counter() - t_plan - converted, 2)
    if not rates:  # nothing passed: the reference path itself
        return {"path": "torch fp32", "rates": {}, "rejected": rejected, "seconds": seconds}
    for path in [p for p in built if p != max(rates, key=rates.get)]:
        del built[path]  # a loser's compiled model is not kept alive
    return {"path": max(rates, key=rates.get), "rates": rates, "rejected": rejected, "seconds": seconds,
            **({"convert_seconds": round(converted, 2)} if converted else {})}


def _build(encoder, paths, device, key, threads, say, rejected: dict) -> dict:
    """str(path) -> runner for each path that can run here; why the others cannot, in `rejected`.
    OpenVINO's first: it converts the module before torch's runner makes it channels-last."""
    built, emulated = {}, None
    for path in sorted(paths, key=lambda p: p.backend != "openvino"):
        if path.precision == "bf16" and not device.startswith("cuda"):
            emulated = bf16_matmul_ratio() if emulated is None else emulated
            if emulated < EMULATED:
                rejected[str(path)] = f"emulated ({emulated:.2f}x fp32 matmul)"
                continue
            if path.backend == "openvino" and not openvino_bf16():
                rejected[str(path)] = "OpenVINO has no bf16 here"
                continue
        run, used = runner(encoder, path, device, key, threads, say)
        if used != path:
            rejected[str(path)] = "does not convert"
            continue
        built[str(path)] = run
    return built


def _parity(run, check, reference, step: float, device: str) -> str | None:
    """Why a path's features on the parity batch are not torch fp32's (None when they are); the
    pass is also the path's warm-up (kernel selection, OpenVINO's first inference)."""
    import torch

    with torch.inference_mode():
        gap = float(np.abs(run(_to(check, device)).numpy() - reference).max())
    return f"features {gap:.1e} from fp32's (> one fp16 step, {step:.1e})" if gap > step else None


def _rate(run, pieces: list, device: str, best: float) -> float:
    """Items per second over the pieces; stops after the first piece that leaves the path
    ABANDON times slower than `best` (the fastest path so far): its rank is clear by then."""
    import torch

    # a piece too small to busy every OpenVINO request would understate its rate: skipped
    pieces = [x for i, x in enumerate(pieces) if i or _items(x) >= getattr(run, "fill", 0)]
    done, t0 = 0, time.perf_counter()
    with torch.inference_mode():
        for x in pieces:
            run(_to(x, device))
            done += _items(x)
            if done / (time.perf_counter() - t0) * ABANDON < best:
                break
    return done / (time.perf_counter() - t0)


def _items(batch) -> int:
    return len(batch["input_ids"]) if isinstance(batch, dict) else len(batch)


def _to(batch, device: str):
    if not device.startswith("cuda"):
        return batch
    return {k: v.to(device) for k, v in batch.items()} if isinstance(batch, dict) else batch.to(device)


class TorchRunner:
    def __init__(self, encoder, compute: Compute, device: str, say=print):
        import torch

        if compute.precision == "bf16" and not device.startswith("cuda") and bf16_matmul_ratio() < EMULATED:
            say("bf16 on this CPU is emulated (a bf16 matmul runs at "
                f"{bf16_matmul_ratio():.2f}x fp32): expect it much slower than fp32")
        self.encoder = encoder.to(device)
        if not encoder.cfg.is_text:
            self.encoder = encoder.to_channels_last()
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(compute.precision)
        self.device_type = "cuda" if device.startswith("cuda") else "cpu"

    def __call__(self, batch):
        import torch

        with torch.autocast(self.device_type, self.dtype) if self.dtype else contextlib.nullcontext():
            return self.encoder(batch).float().cpu()

    def submit(self, batch, done) -> None:
        done(self(batch).numpy())

    def wait(self) -> None:
        pass


class OpenVinoRunner:
    """The converted encoder compiled for THROUGHPUT: one stream per few cores, each with its own
    threads. A batch is cut into small parts that go to whichever stream is free, and a
    submitted batch runs while the next one is read: a stream whose core the decoding worker takes
    delays only its own parts, where one stream over all cores would stall at every barrier."""

    def __init__(self, encoder, compute: Compute, key: str, threads: int | None = None):
        import openvino as ov

        path = model_dir() / f"{key}.xml"
        self.converted_in = 0.0  # seconds spent converting (the planner reports them apart)
        if not path.exists():
            t0 = time.perf_counter()
            _convert(encoder, path)
            self.converted_in = time.perf_counter() - t0
        config = {"INFERENCE_PRECISION_HINT": "bf16" if compute.precision == "bf16" else "f32",
                  "PERFORMANCE_HINT": "THROUGHPUT"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        compiled = _core().compile_model(str(path), "CPU", config)
        self.queue = ov.AsyncInferQueue(compiled, compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.queue.set_callback(self._finished)
        # Measured on 2 cores (docs/experiments.md): parts of 4 photos beat 2, 8 and 16 (135 against
        # 128, 123 and 122 images/s); for captions 8 to 32 are alike.
        self.part = 16 if encoder.cfg.is_text else 4
        self.fill = self.part * len(self.queue)  # items that keep every request busy (the planner times no fewer)

    @staticmethod
    def _finished(request, userdata) -> None:
        parts, i, done = userdata
        parts[i] = request.get_output_tensor(0).data.copy()
        if all(p is not None for p in parts):
            done(np.concatenate(parts))

    def submit(self, batch, done) -> None:
        arrays = {k: v.numpy() for k, v in batch.items()} if isinstance(batch, dict) else {0: batch.numpy()}
        n = len(next(iter(arrays.values())))
        starts = range(0, n, self.part)
        parts = [None] * len(starts)
        for i, a in enumerate(starts):
            self.queue.start_async({k: v[a:a + self.part] for k, v in arrays.items()}, (parts, i, done))

    def wait(self) -> None:
        self.queue.wait_all()

    def __call__(self, batch):
        import torch

        out = []
        self.submit(batch, out.append)
        self.wait()
        return torch.from_numpy(out[0])


@functools.cache
def _core():
    """One OpenVINO Core per process: several in one process have been seen to crash it."""
    import openvino as ov

    return ov.Core()


def telemetry_off() -> None:
    """Decline OpenVINO's usage telemetry (the converter's, NNCF's) in this process: it sends from
    child processes, and a Ctrl-C during a conversion printed their tracebacks."""
    try:
        from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
    except ImportError:
        return
    OptInChecker.check = lambda self, *args, **kwargs: ConsentCheckResult.DECLINED


def _convert(encoder, path: Path) -> None:
    """Convert once; written beside and renamed, so a concurrent or killed run never reads half a model."""
    import openvino as ov
    import torch
    from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder

    path.parent.mkdir(parents=True, exist_ok=True)
    telemetry_off()
    module, example = _traceable(encoder)
    with torch.no_grad(), _quiet_tracer():
        # OpenVINO's own tracing, minus torch.jit.trace's check (two more forward passes and a
        # re-trace: over half of a conversion); the converted model is compared with torch's
        # features instead, by the planner's parity batch and tests/test_backends.py
        decoder = TorchScriptPythonDecoder(module, example_input=example, trace_kwargs={"check_trace": False})
        model = ov.convert_model(decoder, example_input=example)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.xml")
    ov.save_model(model, str(tmp), compress_to_fp16=False)  # the weights stay fp32; precision is a compile choice
    os.replace(tmp.with_suffix(".bin"), path.with_suffix(".bin"))
    os.replace(tmp, path)


def _traceable(encoder):
    """(module, example input) to trace. A text encoder takes one dict, while the tracer feeds
    keyword inputs; its example pads one caption, so the attention mask is traced with zeros."""
    import torch

    if not encoder.cfg.is_text:
        return encoder, encoder.example_batch(2)

    class Keywords(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask):
            return self.encoder({"input_ids": input_ids, "attention_mask": attention_mask})
    return Keywords(), dict(encoder.collate(["a dog", "a man riding a horse on top of a green field near a red bus"]))


@contextlib.contextmanager
def _quiet_tracer():
    """Tracing warns about shape-dependent Python branches inside transformers; the converted
    graph is checked against torch in tests/test_backends.py, so the warnings only add noise."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
