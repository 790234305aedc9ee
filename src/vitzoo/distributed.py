"""The process group torchrun describes, joined and left in one place: `with distributed(device) as ctx:`."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: str) -> str:
        """The device of this rank: cuda -> cuda:LOCAL_RANK when distributed, else `device` as given."""
        return f"cuda:{self.local_rank}" if str(device).startswith("cuda") and self.world_size > 1 else str(device)


@contextlib.contextmanager
def distributed(device: str = "cpu") -> Iterator[DistContext]:
    """Join the process group torchrun describes (gloo on CPU, NCCL on CUDA) for the block; a plain run is rank 0 of 1.

    On leaving, every rank waits for the others before the group is torn down (a gloo rank that leaves while another
    still talks to it aborts the process); a rank leaving on an error does not wait, or it would hang on ranks that
    never arrive. A group the caller had already joined is the caller's: it is left open.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        yield DistContext()
        return
    joined = dist.is_initialized()
    if not joined:
        dist.init_process_group(backend="nccl" if str(device).startswith("cuda") else "gloo")
    ctx = DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    try:
        yield ctx
    except BaseException:
        if not joined:
            dist.destroy_process_group()
        raise
    if not joined:
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_(tensor: torch.Tensor, ctx: DistContext, op=None) -> torch.Tensor:
    """Sum (or `op`) `tensor` across the ranks in place; a no-op on one process."""
    if ctx.world_size > 1:
        if dist.get_backend() == "nccl" and tensor.device.type != "cuda":  # NCCL reduces GPU tensors only
            on_gpu = tensor.to(f"cuda:{ctx.local_rank}")
            dist.all_reduce(on_gpu, op=op or dist.ReduceOp.SUM)
            tensor.copy_(on_gpu)
        else:
            dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM)
    return tensor


def barrier(ctx: DistContext) -> None:
    if ctx.world_size > 1:
        dist.barrier()
