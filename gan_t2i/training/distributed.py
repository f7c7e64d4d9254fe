"""Data-parallel training under `torchrun` or submitit (nccl on GPU, gloo on CPU).

Gradients are averaged with one all-reduce of a flat buffer per phase (as StyleGAN3 does)
instead of DDP wrappers: the lazy R1 term's double backward, the skipped non-finite steps and
the phases that touch only one network need no special cases, and every rank takes the same
decision from the same reduced numbers. Each rank draws the global batch's random numbers and
keeps its slice (`gan_t2i.shard`), so the run does not depend on the world size.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)

# Rank 0 alone writes snapshots and runs evaluations while the others wait at their next
# collective; the default 30-minute timeout would kill a run during a long evaluation.
TIMEOUT = datetime.timedelta(hours=2)


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: rank, local rank and world size (0, 0, 1 alone)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        """True under a launcher with more than one process."""
        return self.world_size > 1


def adopt_submitit_env() -> None:
    """Inside a submitit job (SLURM, or submitit's local executor) with several tasks, export
    torch's env:// variables (MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK) from the job."""
    if "WORLD_SIZE" in os.environ or not os.environ.get("SUBMITIT_EXECUTOR"):
        return
    from submitit.helpers import TorchDistributedEnvironment

    job = TorchDistributedEnvironment()
    if job.world_size > 1:  # each rank keeps every GPU visible and picks cuda:<local rank>
        job.export(set_cuda_visible_devices=False)


def env_from_launcher(environ: dict[str, str] | None = None) -> DistEnv:
    """Read torchrun's RANK / LOCAL_RANK / WORLD_SIZE (one process when they are absent)."""
    environ = os.environ if environ is None else environ
    world = int(environ.get("WORLD_SIZE", "1"))
    return DistEnv(rank=int(environ.get("RANK", "0")),
                   local_rank=int(environ.get("LOCAL_RANK", "0")), world_size=world)


def init(env: DistEnv, device: torch.device) -> torch.device:
    """Join the process group when launched with several processes; returns this rank's device.

    A CUDA device becomes `cuda:<local rank>` (nccl); anything else uses gloo.
    """
    if not env.enabled:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, timeout=TIMEOUT, **kwargs)
    return device


def shutdown() -> None:
    """Leave the process group (after every rank has finished)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op alone)."""
    if dist.is_initialized():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s value of a picklable object on every rank (the object itself alone)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _average_in_place(tensors: list[torch.Tensor]) -> None:
    """Mean over ranks of each tensor, written back: one flat buffer, one all-reduce."""
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def average_gradients(module: nn.Module, loss: torch.Tensor) -> torch.Tensor:
    """Average the gradients of `module` and the loss over ranks in place; returns the loss.

    Parameters without a gradient have none on every rank (every rank runs the same graph),
    so they stay None and Adam skips them as it would alone.
    """
    loss = loss.detach().float().reshape(1).clone()
    _average_in_place([p.grad for p in module.parameters() if p.grad is not None] + [loss])
    return loss[0]


def average_float_buffers(*modules: nn.Module) -> None:
    """Average floating-point buffers (the running mean of w) over ranks.

    A running mean updated with each rank's batch mean is linear in those means, so averaging
    the ranks' copies at any point gives exactly the value one process would have.
    """
    if not dist.is_initialized():
        return
    buffers = [b for m in modules for b in m.buffers() if b.is_floating_point()]
    if buffers:
        _average_in_place(buffers)


def average_scalars(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Mean over ranks of a dict of numbers with the same keys on every rank."""
    if not dist.is_initialized() or not values:
        return values
    keys = sorted(values)
    flat = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    return dict(zip(keys, flat.tolist()))


def quiet_other_ranks(env: DistEnv) -> None:
    """On ranks other than 0: warnings and errors only, and no log file (rank 0 keeps it)."""
    if env.rank == 0:
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(logging.WARNING)
