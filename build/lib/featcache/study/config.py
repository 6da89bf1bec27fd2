"""The study's options: a benchmark (BenchConfig), a report (ReportConfig) and the demo
(DemoConfig). Frozen, checked when made, importable without torch (the command line builds its
options from these fields)."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

from featcache.options import check_fields, option
from featcache.workspace import runs_field

THREADS_HELP = ("torch threads. 1 by default: while another process holds a core, two OpenMP threads spin-wait and "
                "batch-1 latency swings 10x; on an idle machine try all cores.")


@dataclass(frozen=True)
class BenchConfig:
    encoders: str = option("all", "'all' (the aliases), 'none' or comma-separated encoder names (timm:/hf: too).")
    heads: str = option("all", "'all', 'none' or comma-separated runs: directories or ids under --runs (fitted heads, "
                               "end-to-end models, exports).")
    device: str = option("cpu", "cpu or cuda[:N] (cpu by default: the study's small devices).",
                         pattern=(r"cpu|cuda(:\d+)?", "cpu, cuda or cuda:N"))
    threads: int = option(1, THREADS_HELP, range=(1, 1024))
    batch_sizes: tuple[int, ...] = option((1, 32), "Throughput is measured at each batch size.", range=(1, 65536))
    # Seconds per timed cell: adaptive_autorange stops once IQR/median < 10% (>= 4 samples, >= min_run_time)
    # or at max_run_time; a call slower than that still runs twice (the first is the discarded warm-up).
    min_run_time: float = option(0.5, "Seconds of timing per cell at least (then until IQR/median < 10%)...",
                                 range=(0.001, None))
    max_run_time: float = option(2.0, "...or at most this many (a slower call still runs twice: warm-up + 1).",
                                 range=(0.001, None))
    runs: Path = runs_field()

    def __post_init__(self):
        check_fields(self)

    def header(self) -> dict:
        import torch  # only when measuring

        dev = (torch.cuda.get_device_name(self.device) if self.device.startswith("cuda")
               else f"{platform.machine()} {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} logical cores")
        return {"device": f"{self.device} ({dev})", "dtype": "float32", "torch": torch.__version__,
                "threads": self.threads, "batch_sizes": list(self.batch_sizes),
                "run_time_s": [self.min_run_time, self.max_run_time],
                "load_avg_1m": os.getloadavg()[0],  # other processes inflate latency and IQR: take the header first
                "units": {"size": "MB (10^6 bytes) of safetensors weights; exports: their files on disk",
                          "latency": "ms per batch of 1", "throughput": "items/s at batch N",
                          "compute": "GFLOPs/item (FlopCounterMode, batch 1; not counted for exports)",
                          "f1": "exports: validation sample-F1 of the exported model (its tuned thresholds; "
                                "tuned_out_of_fold: thresholds re-tuned on held-out halves)"}}


@dataclass(frozen=True)
class ReportConfig:
    budget_mb: float = option(100.0, "Size budget: the best model at most this large is named.", range=(0.001, None))
    fp16: bool = option(False, "Sizes of the weights saved in fp16 (half the fp32 file) instead of fp32.")
    threads: int = option(1, "torch threads for rows measured now (see benchmark --help).", range=(1, 1024))
    runs: Path = runs_field()

    def __post_init__(self):
        check_fields(self)

    @property
    def size_label(self) -> str:
        return f"size (MB, {'fp16' if self.fp16 else 'fp32'} safetensors)"


@dataclass(frozen=True)
class DemoConfig:
    out: Path = option(Path("demo_out"), "Everything the demo writes goes here.")
    data: Path | None = option(None, "Dataset (default: generate one under --out/data).")
    n_train: int = option(2000, "Generated labelled rows (without --data).", range=(1, None))
    n_test: int = option(400, "Generated rows to predict (without --data).", range=(0, None))
    data_seed: int = option(0, "The generated data's seed.", range=(0, None), cli=False)
    image_encoder: str = option("efficientnet_lite0", "Image encoder (offline weights by default).")
    text_encoder: str = option("minilm_l6", "Text encoder (offline weights by default).")
    seeds: int = option(3, "Head seeds per configuration.", range=(1, 1000))
    pretrained: bool = option(True, "Pretrained encoders (--random-init: tests; the numbers mean nothing).",
                              flag="--pretrained/--random-init")
    batch_sizes: tuple[int, ...] = option((1, 16), "Throughput batch sizes.", range=(1, 65536), cli=False)
    budget_mb: float = option(100.0, "Size budget of the best model.", range=(0.001, None), cli=False)

    def __post_init__(self):
        check_fields(self)
