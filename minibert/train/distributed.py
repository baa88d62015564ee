"""Data parallel pretraining under torchrun: join the process group, sum numbers over the ranks.

``torchrun --nproc_per_node N -m minibert pretrain ...`` starts N processes with ``WORLD_SIZE``, ``RANK``
and ``LOCAL_RANK`` in their environment; without torchrun the run is one process and every function here
is a no-op.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from minibert.train.common import select_device


def setup(device_name: str | None) -> tuple[int, int, torch.device, bool]:
    """(rank, world_size, device, created_group): join torchrun's process group when WORLD_SIZE > 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    device = select_device(device_name, local_rank if world_size > 1 else 0)
    created = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        created = True
    return rank, world_size, device, created


def all_reduce_sum(values: dict, world_size: int, device) -> dict:
    """Sum each value over the ranks (a no-op for one process)."""
    if world_size == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def broadcast_int(value: int, world_size: int, device) -> int:
    """Rank 0's ``value`` on every rank."""
    if world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.broadcast(t, 0)
    return int(t.item())
