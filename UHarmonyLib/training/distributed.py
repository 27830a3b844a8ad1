"""Data-parallel training over processes started by torchrun, with torch's DistributedDataParallel.

`torchrun --nproc-per-node G [--nnodes N ...] -m UHarmonyLib train ...` starts the processes
and sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address; `train` joins the group
they form (NCCL on CUDA, one GPU per process; gloo on the CPU). A process started without
them trains alone.

Every rank makes the same draws of a step from (seed, step) and cuts only its slice of the
global batch (`--batch` must be a multiple of the process count), so the global batch is
the single-process one whatever the world size. The batch Dice of the segmentation loss
does not split into per-rank terms, so each rank gathers every rank's logits and computes
the single-process loss on the whole batch, with only its own slice in its autograd graph:
its gradient is its slice's part of the whole-batch gradient. DDP averages the ranks'
gradients, so the loss is multiplied by the world size before the backward pass, and the
sum is the single-process gradient. A step is the single-process step up to float
rounding, and a checkpoint continues under any world size. Rank 0 alone validates and
writes checkpoints and the bundle; the others wait for it at the next collective.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from UHarmonyLib.errors import InputError, UHarmonyError

T = TypeVar("T")
TIMEOUT = timedelta(hours=2)  # how long ranks wait for rank 0's validation or bundle before giving up


class World:
    """This process's place among the training processes (rank 0 of 1 when started alone)."""

    def __init__(self, rank: int = 0, size: int = 1, local_rank: int = 0) -> None:
        self.rank, self.size, self.local_rank = rank, size, local_rank
        self.device = torch.device("cpu")

    @classmethod
    def from_env(cls) -> World:
        """As torchrun describes it (RANK, WORLD_SIZE, LOCAL_RANK); alone without them."""
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def share(self, batch_size: int) -> slice:
        """This rank's slice of a global batch."""
        per = batch_size // self.size
        return slice(self.rank * per, (self.rank + 1) * per)

    def join(self, device: torch.device, batch_size: int) -> torch.device:
        """Join the process group; returns this rank's device (its own GPU on CUDA)."""
        if batch_size % self.size:
            raise InputError(f"--batch {batch_size} does not split over {self.size} processes: use a multiple of it")
        if device.type not in ("cpu", "cuda"):
            raise InputError(f"--device {device.type}: distributed training runs on CUDA or the CPU")
        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
        self.device = device
        return device

    def leave(self) -> None:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()

    def wrap(self, net: torch.nn.Module) -> torch.nn.Module:
        """DDP around `net`: rank 0's weights and buffers reach every rank now, gradients are averaged each step."""
        return DistributedDataParallel(net, device_ids=[self.device] if self.device.type == "cuda" else None)

    def gather_live(self, local: torch.Tensor) -> torch.Tensor:
        """Every rank's `local` along dim 0 in rank order; only this rank's part keeps its autograd graph."""
        parts = [torch.empty_like(local) for _ in range(self.size)]
        dist.all_gather(parts, local.detach().contiguous())
        parts[self.rank] = local
        return torch.cat(parts)

    def any(self, flag: bool) -> bool:
        """Whether any rank says so (all ranks must ask at the same point)."""
        value = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def barrier(self) -> None:
        """Wait until every rank is here (the others, for rank 0's checkpoint before they exit)."""
        dist.barrier()

    def gather_objects(self, obj: T) -> list[T]:
        """Every rank's `obj`, in rank order ([obj] alone)."""
        if not self.active:
            return [obj]
        found: list[Any] = [None] * self.size
        dist.all_gather_object(found, obj)
        return found

    def from_main(self, make: Callable[[], T]) -> T:
        """`make()` run by rank 0 and sent to every rank; a one-line error of rank 0's is raised on every rank."""
        if not self.active:
            return make()
        box: list[Any] = [None]
        if self.main:
            try:
                box[0] = make()
            except UHarmonyError as e:
                box[0] = e
        dist.broadcast_object_list(box, src=0)
        if isinstance(box[0], UHarmonyError):
            raise box[0]
        result: T = box[0]
        return result
