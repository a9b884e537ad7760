"""Data-parallel curvature products with torch.distributed (launched with torchrun).

Every rank holds a shard of the split — :func:`shard` takes examples rank, rank + W,
rank + 2W, … of W ranks — and ``curvature_operator(..., distributed=True)`` sums the
per-shard sums with an all-reduce and divides by the total count, so every rank gets
the same A v. The algorithms then run identically on every rank (same seed, same
products); rank 0 writes the result. Example::

    torchrun --nproc-per-node 4 -m hspec spectrum --model m.pt ... --out s.zarr
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor


def init_from_env(device: torch.device | str | None = None) -> tuple[int, int]:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR …):
    NCCL for CUDA devices, Gloo otherwise. Returns (rank, world size); (0, 1) when not
    launched by torchrun."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return 0, 1
    if not dist.is_initialized():
        cuda = device is not None and torch.device(device).type == "cuda"
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size()


def local_device(device: str) -> torch.device:
    """``cuda`` becomes this rank's GPU (LOCAL_RANK); other devices are kept."""
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(device)


def shard(inputs: Tensor, targets: Tensor, rank: int, world_size: int) -> tuple[Tensor, Tensor]:
    """This rank's examples: indices rank, rank + world_size, …"""
    return inputs[rank::world_size], targets[rank::world_size]
