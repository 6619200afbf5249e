"""Data-parallel training across processes started by ``torchrun`` (or spawned in tests).

``torchrun --nproc-per-node N -m depthflow.cli.fit ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous variables; :func:`setup` then joins the process group
(NCCL on CUDA, gloo on CPU) and every rank takes ``batch_size / N`` images of each global
batch. Gradients are averaged by ``DistributedDataParallel``; rank 0 alone evaluates and
writes files.
"""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist

from depthflow.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owner: bool = False           # this call initialised the process group

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def setup(device: str) -> tuple[DistInfo, str]:
    """Join the process group described by the environment; return the rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), device
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    owner = False
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl" and not torch.cuda.is_available():
            raise ConfigError("distributed run on CUDA requested but CUDA is not available")
        dist.init_process_group(backend=backend)
        owner = True
    if device.startswith("cuda"):
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    return DistInfo(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local,
                    owner=owner), device


def teardown(info: DistInfo) -> None:
    if info.owner and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.active:
        dist.barrier()


def all_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of a tensor over ranks (a copy; identity on one process)."""
    if not info.active:
        return value
    out = value.detach().clone()
    dist.all_reduce(out)
    return out / info.world


def broadcast_object(obj, info: DistInfo):
    """Rank 0's Python object on every rank."""
    if not info.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
