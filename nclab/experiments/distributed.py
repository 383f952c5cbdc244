"""torch.distributed for the trainer: one process per device under torchrun, or one plain process.

Under ``torchrun`` (RANK, WORLD_SIZE, LOCAL_RANK set) the process group is created here with gloo on
CPU and nccl on CUDA; a group the caller already created (e.g. with mp.spawn) is used as it is.
Multi-node works the same way (torchrun --nnodes); process 0 alone writes the run directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    created: bool = False  # the group was created here (destroy it at the end)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.active:
            dist.all_reduce(t)
        return t

    def any(self, flag: bool) -> bool:
        """True on every process when ``flag`` is True on any (e.g. a Ctrl-C seen by one process)."""
        if not self.active:
            return flag
        t = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def broadcast(self, obj):
        """Process 0's Python object, on every process."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def close(self, synchronize: bool = True) -> None:
        """Leave the process group this process created. ``synchronize`` (the normal end of a run): wait for
        every process first, since gloo aborts a process ("terminate called without an active exception") whose
        peer tears the group down while its last collective is still in flight. Not after an error on this
        process alone: the others may never arrive."""
        if self.created and dist.is_initialized():
            try:
                if synchronize:
                    dist.barrier()
            finally:
                dist.destroy_process_group()


def setup(device: str) -> Dist:
    """Join (or create, under torchrun) the process group; the device of this process."""
    want_cuda = device.startswith("cuda")
    if want_cuda and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available (torch.cuda.is_available() is "
                         "False); use device cpu")
    created = False
    if not (dist.is_available() and dist.is_initialized()) and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if not dist.is_available():
            raise ValueError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        dist.init_process_group("nccl" if want_cuda else "gloo")
        created = True
    if not (dist.is_available() and dist.is_initialized()):
        return Dist(device=torch.device(device))
    rank, world = dist.get_rank(), dist.get_world_size()
    if want_cuda:
        local = int(os.environ.get("LOCAL_RANK", rank % torch.cuda.device_count()))
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    return Dist(rank, world, dev, created)
