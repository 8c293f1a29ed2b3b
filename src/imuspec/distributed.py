"""The torchrun process group, shared by training and evaluation: torchrun sets the environment, one process runs
the same code as world size 1. Work is sharded as ``range(n)[rank::world]`` and gathered back in index order."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def init_distributed() -> torch.device:
    """Join the torchrun group when there is one (NCCL on GPUs, gloo on CPUs); the device of this process."""
    cuda = torch.cuda.is_available()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def gather(items: list) -> list:
    """Everyone's ``items`` concatenated in rank order (a no-op on one process)."""
    if not dist.is_initialized():
        return items
    out: list = [None] * world()
    dist.all_gather_object(out, items)
    return [x for part in out for x in part]


def unshard(items: list, n: int) -> list:
    """Undo ``range(n)[rank::world]`` sharding after :func:`gather`: items back in index order."""
    order = [i for r in range(world()) for i in range(r, n, world())]
    out: list = [None] * n
    for i, x in zip(order, items):
        out[i] = x
    return out


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
