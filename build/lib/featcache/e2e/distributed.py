"""One process, or one rank of a `torchrun --nproc_per_node N` job: its device and threads, and
the few collective steps end to end needs (rank 0 names the run, validation logits are gathered,
the epoch's loss is summed). Every helper is a no-op for a single process.

Plain torch.distributed: DistributedDataParallel on gloo (CPU) or nccl (GPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Proc:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes the run directory."""
        return self.rank == 0


def start_processes(device: str = "auto", threads: int | None = None) -> Proc:
    """One process, or this rank of a torchrun job (WORLD_SIZE set): gloo on CPU, nccl on GPU."""
    world, rank, local = (int(os.environ.get(k, d)) for k, d in (("WORLD_SIZE", 1), ("RANK", 0), ("LOCAL_RANK", 0)))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(f"cuda:{local}" if device == "cuda" else device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    # Processes on one machine share its cores. With <= 2 cores per process, one thread: measured
    # here, while another process held a core, 2 OpenMP threads spin-waited to 13 s/step against
    # 2.8 s/step with one (efficientnet_lite0 + minilm_l6, batch 16, 224 px).
    per_process = (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))
    torch.set_num_threads(threads or (per_process if per_process > 2 else 1))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Proc(rank, world, dev)


def default_workers(proc: Proc) -> int:
    """DataLoader workers per process: none when the processes already hold every core."""
    return 0 if (os.cpu_count() or 1) <= 2 * proc.world else 1


def parallel(model: nn.Module, proc: Proc) -> nn.Module:
    """What the training step calls: the model, or its DistributedDataParallel wrapper (which
    broadcasts rank 0's weights now and averages gradients in backward)."""
    if proc.world == 1:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[proc.device.index] if proc.device.type == "cuda" else None)


def gather(obj, proc: Proc) -> list:
    """Every rank's obj, in rank order, on every rank."""
    if proc.world == 1:
        return [obj]
    out = [None] * proc.world
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj, proc: Proc):
    """Rank 0's obj on every rank."""
    if proc.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sum_over_ranks(values: list[float], proc: Proc) -> list[float]:
    sums = torch.tensor(values, dtype=torch.float64)
    if proc.world > 1:
        dist.all_reduce(sums)
    return sums.tolist()


def barrier(proc: Proc) -> None:
    if proc.world > 1:
        dist.barrier()


def stop_processes(proc: Proc) -> None:
    """Wait for every rank (rank 0 may still be writing), then leave the process group."""
    if proc.world > 1:
        dist.barrier()
        dist.destroy_process_group()
