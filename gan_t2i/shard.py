"""Per-sample random numbers of one global batch, split across data-parallel ranks.

Every rank seeds torch's RNG the same way. For each per-sample random tensor (z, noise inputs,
style-mixing cut-offs, augmentation parameters) every rank draws the values of the whole global
batch and keeps its own contiguous slice. So the random numbers a sample sees do not depend on
the number of processes: N ranks train the same run as one process (up to the order of float
sums), the RNG state in a checkpoint (rank 0's) is every rank's, and a checkpoint resumes on
any world size. Drawing the global batch costs little next to the convolutions.

Outside `batch_shard(...)` (one process, sampling, evaluation) the helpers are plain
`torch.randn` / `torch.rand` / `torch.randint`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

_SHARD: ContextVar[tuple[int, int]] = ContextVar("gan_t2i_batch_shard", default=(0, 1))


@contextmanager
def batch_shard(rank: int, world_size: int) -> Iterator[None]:
    """Inside, per-sample draws of a local batch of b are rows [rank*b, (rank+1)*b) of b*world."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    token = _SHARD.set((rank, world_size))
    try:
        yield
    finally:
        _SHARD.reset(token)


def current() -> tuple[int, int]:
    """(rank, world_size) of the innermost `batch_shard`, (0, 1) outside one."""
    return _SHARD.get()


def _slice(draw, b: int) -> torch.Tensor:
    rank, world = _SHARD.get()
    if world == 1:
        return draw(b)
    return draw(b * world)[rank * b:(rank + 1) * b]


def randn(b: int, *shape: int, device: torch.device | str | None = None,
          dtype: torch.dtype | None = None) -> torch.Tensor:
    """Normal samples [b, *shape] for b local samples."""
    return _slice(lambda n: torch.randn(n, *shape, device=device, dtype=dtype), b)


def rand(b: int, *shape: int, device: torch.device | str | None = None,
         dtype: torch.dtype | None = None) -> torch.Tensor:
    """Uniform [0, 1) samples [b, *shape] for b local samples."""
    return _slice(lambda n: torch.rand(n, *shape, device=device, dtype=dtype), b)


def randint(low: int, high: int, b: int, *shape: int,
            device: torch.device | str | None = None) -> torch.Tensor:
    """Integers in [low, high) [b, *shape] for b local samples."""
    return _slice(lambda n: torch.randint(low, high, (n, *shape), device=device), b)
