"""Data-parallel training under torchrun: every process sees the same global batches (same
seed, same shuffle) and computes on its own slice of each; DistributedDataParallel averages
the gradients, weighted so the update equals one process's on the whole batch.

    torchrun --nproc_per_node 2 -m deepr train mnist_convnet --batch-size 128

gloo on the CPU, nccl on CUDA (one GPU per process, by LOCAL_RANK). Rank 0 alone writes
the run's files and shows progress. Without torchrun's environment nothing changes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["Distributed", "from_environment"]


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: str) -> str:
        """Each process's own GPU when training on CUDA."""
        return f"cuda:{self.local_rank}" if self.enabled and device.startswith("cuda") else device

    def start(self, device: str) -> None:
        if self.enabled and not dist.is_initialized():
            backend = "nccl" if device.startswith("cuda") else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(self.local_rank)
            dist.init_process_group(backend=backend)

    def stop(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()

    def wrap(self, model: nn.Module) -> nn.Module:
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model)

    def shard(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """This process's contiguous slice of a global batch, and the factor its mean loss is
        scaled by so the averaged gradient is the whole batch's mean (slices may differ by one row)."""
        if not self.enabled:
            return x, y, 1.0
        bounds = torch.linspace(0, len(x), self.world_size + 1).round().long().tolist()
        lo, hi = bounds[self.rank], bounds[self.rank + 1]
        return x[lo:hi], y[lo:hi], (hi - lo) * self.world_size / len(x)

    def sum(self, *values: float) -> list[float]:
        """Totals over all processes (for the epoch's loss and accuracy)."""
        if not self.enabled:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(tensor)
        return tensor.tolist()


def from_environment() -> Distributed:
    """The process's place in a torchrun launch (RANK, WORLD_SIZE, LOCAL_RANK), or a single process."""
    return Distributed(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )
