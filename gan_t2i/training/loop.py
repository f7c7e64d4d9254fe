"""The training loop: orchestrates data, the loss phases, optimizers, EMA, ticks and snapshots.

Everything that decides the trajectory (weights, optimizer moments, EMA, kimg, sampler position,
RNG states) is in the checkpoint, so a run killed at any point and resumed from its last
checkpoint ends with the same weights as the same run left alone.
"""

from __future__ import annotations

import copy
import logging
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from gan_t2i import shard
from gan_t2i.logger import RunLogger
from gan_t2i.networks import Discriminator, Generator
from gan_t2i.training import distributed
from gan_t2i.training.checkpoint import (
    all_finite,
    code_version,
    copy_checkpoint,
    load_state_strict,
    prune_snapshots,
    rng_state,
    save_checkpoint,
    set_rng_state,
    snapshot_name,
)
from gan_t2i.training.data import Tokens, TrainData
from gan_t2i.training.ema import ema_beta, update_ema
from gan_t2i.training.loss import GANLoss, mismatched
from gan_t2i.utils import GanT2IError
from gan_t2i.viz import caption_grid, to_uint8

log = logging.getLogger(__name__)


@dataclass
class LoopSettings:
    """Plain settings of the loop (from the `train` config group)."""

    total_kimg: float
    batch_size: int
    tick_kimg: float = 1.0
    snapshot_kimg: float = 10.0
    keep_snapshots: int = 3
    eval_every_kimg: float = 0.0
    ema_kimg: float = 1.0
    ema_rampup: float | None = 0.05
    r1_interval: int = 16
    seed: int = 0
    channels_last: bool = True
    max_nonfinite: int = 5
    sample_z: int = 6
    workers: int = 0
    progress: bool = True


@dataclass
class Progress:
    """Counters that travel in the checkpoint."""

    cur_nimg: int = 0
    step: int = 0
    nonfinite_total: int = 0
    nonfinite_run: int = 0
    last_tick_nimg: int = 0
    last_snapshot_nimg: int = 0
    last_eval_nimg: int = 0


@dataclass
class _TickStats:
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    start: float = field(default_factory=time.perf_counter)
    data_wait: float = 0.0
    nimg: int = 0

    def add(self, stats: dict[str, torch.Tensor]) -> None:
        for k, v in stats.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.detach().float()
            self.counts[k] = self.counts.get(k, 0) + 1

    def means(self) -> dict[str, float]:
        return {k: float(v) / self.counts[k] for k, v in self.sums.items()}


@dataclass
class _Batch:
    """One iteration's inputs on the device (this rank's samples)."""

    real: torch.Tensor  # [b, 3, R, R] in [-1, 1]
    c: torch.Tensor  # [b, D] caption embeddings
    c_mis: torch.Tensor  # [b, D] captions of other images (matching-aware negatives)
    tokens: Tokens | None
    swapped: tuple[torch.Tensor, torch.Tensor] | None  # ([b, G, D], valid [b, G]) word swaps


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process (CUDA allocator on GPU, max RSS on CPU) in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


class Trainer:
    """Holds the training state and runs it; the loss object runs the phases."""

    def __init__(self, *, G: Generator, D: Discriminator, loss: GANLoss,
                 opt_G: torch.optim.Optimizer, opt_D: torch.optim.Optimizer, data: TrainData,
                 settings: LoopSettings, run_dir: Path, logger: RunLogger, device: torch.device,
                 config: dict[str, Any], rank: int = 0, world_size: int = 1,
                 evaluate: Callable[[Generator, int], list[dict]] | None = None):
        self.G, self.D, self.loss = G, D, loss
        self.G_ema = copy.deepcopy(G).eval().requires_grad_(False)
        self.opt_G, self.opt_D, self.data, self.s = opt_G, opt_D, data, settings
        self.run_dir, self.logger, self.device, self.config = run_dir, logger, device, config
        self.rank, self.world_size, self.evaluate = rank, world_size, evaluate
        self.progress = Progress()
        self.ckpt_dir = run_dir / "checkpoints"
        self.sample_z = torch.randn(settings.sample_z, G.z_dim,
                                    generator=torch.Generator().manual_seed(settings.seed + 1))
        self.fault: Callable[[str, torch.Tensor], torch.Tensor] | None = None  # test hook

    # --- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: state dicts and plain data only."""
        return {
            "G": self.G.state_dict(), "D": self.D.state_dict(), "G_ema": self.G_ema.state_dict(),
            "opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict(),
            "scaler": None,  # bf16 autocast needs no loss scaling
            "augment": self.loss.augment.state_dict(),
            "progress": dict(vars(self.progress)),
            "cur_nimg": self.progress.cur_nimg,
            "sampler_position": self.progress.cur_nimg,
            "rng": rng_state(),
            "config": self.config,
            "code_version": code_version(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint written by `state_dict`."""
        for name, module in (("G", self.G), ("D", self.D), ("G_ema", self.G_ema)):
            load_state_strict(module, state[name], name)
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        self.progress = Progress(**state["progress"])
        set_rng_state(state["rng"])

    # --- one iteration -------------------------------------------------------------------
    def _batch(self, batch: tuple[torch.Tensor, torch.Tensor]) -> _Batch:
        """This rank's reals, captions, mismatched captions (chosen over the global batch), tokens,
        and swapped-caption negatives (when the loss uses them)."""
        images, captions = batch  # images of this rank's slice, captions of the global batch
        b = images.shape[0]
        real = images.to(self.device, non_blocking=True).float().div_(127.5).sub_(1.0)
        if self.s.channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        c_all = self.data.embeddings[captions].to(self.device, non_blocking=True).float()
        c_mis = c_all[mismatched(self.data.caption_image[captions])]
        mine = slice(self.rank * b, (self.rank + 1) * b)
        tokens = self.data.tokens(captions[mine])
        if tokens is not None:
            tokens = (tokens[0].to(self.device), tokens[1].to(self.device))
        swapped = None
        if self.data.swaps is not None and self.loss.s.uses_swaps:
            emb, valid = self.data.swaps(captions[mine])
            swapped = (emb.to(self.device), valid.to(self.device))
        return _Batch(real, c_all[mine], c_mis[mine], tokens, swapped)

    def _finite(self, loss: torch.Tensor, module: nn.Module) -> bool:
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        norms = torch._foreach_norm(grads) if grads else []
        total = loss.detach().float() + sum(n.float() for n in norms)
        return bool(torch.isfinite(total))

    def _hook(self, name: str, loss: torch.Tensor) -> torch.Tensor:
        return self.fault(name, loss) if self.fault is not None else loss

    def _optimize(self, name: str, loss: torch.Tensor, module: nn.Module,
                  opt: torch.optim.Optimizer) -> bool:
        """Backward and optimizer step, unless loss or gradients are non-finite (then False).

        With several ranks, gradients and loss are averaged first, so all ranks decide alike.
        """
        loss = self._hook(name, loss)
        loss.backward()
        if self.world_size > 1:
            loss = distributed.average_gradients(module, loss)
        if not self._finite(loss, module):
            opt.zero_grad(set_to_none=True)
            return False
        opt.step()
        return True

    def step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """One iteration (D then G); returns stats, or None if it was skipped as non-finite."""
        with shard.batch_shard(self.rank, self.world_size):  # per-sample draws of the global batch
            x = self._batch(batch)
            z = shard.randn(x.real.shape[0], self.G.z_dim, device=self.device)
            fakes = self.loss.generate(z, x.c, x.tokens)
            do_r1 = self.s.r1_interval > 0 and self.progress.step % self.s.r1_interval == 0
            self.opt_D.zero_grad(set_to_none=True)
            loss_D, stats = self.loss.d_phase(fakes, x.real, x.c, x.c_mis, do_r1=do_r1,
                                              swapped=x.swapped)
            if not self._optimize("D", loss_D, self.D, self.opt_D):
                return None
            self.opt_G.zero_grad(set_to_none=True)
            loss_G, stats_G = self.loss.g_phase(fakes, x.c, swapped=x.swapped)
            if not self._optimize("G", loss_G, self.G, self.opt_G):
                return None
        return {**stats, **stats_G}

    def _after_step(self, batch_size: int) -> None:
        p = self.progress
        p.cur_nimg += batch_size
        p.step += 1
        beta = ema_beta(batch_size, p.cur_nimg, half_life_kimg=self.s.ema_kimg,
                        rampup=self.s.ema_rampup)
        update_ema(self.G_ema, self.G, beta)

    # --- the loop ------------------------------------------------------------------------
    def run(self) -> Progress:
        """Train until `total_kimg`; ticks, snapshots and evaluations on their schedules."""
        s, p = self.s, self.progress
        total_nimg = int(s.total_kimg * 1000)
        batches = iter(self.data.loader(batch_size=s.batch_size, seed=s.seed,
                                        start=p.cur_nimg, rank=self.rank,
                                        world_size=self.world_size, workers=s.workers,
                                        pin_memory=self.device.type == "cuda"))
        bar = tqdm(total=total_nimg, initial=min(p.cur_nimg, total_nimg), unit="img",
                   unit_scale=True, desc="train", disable=not (s.progress and self.rank == 0),
                   dynamic_ncols=True, smoothing=0.1)
        tick = _TickStats()
        try:
            while p.cur_nimg < total_nimg:
                t0 = time.perf_counter()
                batch = next(batches)
                tick.data_wait += time.perf_counter() - t0
                stats = self.step(batch)
                self._count_nonfinite(stats)
                if stats is not None:
                    tick.add(stats)
                self._after_step(s.batch_size)
                tick.nimg += s.batch_size
                bar.update(s.batch_size)
                bar.set_postfix_str(f"kimg {p.cur_nimg / 1000:.1f}", refresh=False)
                done = p.cur_nimg >= total_nimg
                if done or p.cur_nimg - p.last_tick_nimg >= s.tick_kimg * 1000:
                    self._tick(tick)
                    tick = _TickStats()
                if s.eval_every_kimg > 0 and (  # every rank: the buffers are averaged first
                        done or p.cur_nimg - p.last_eval_nimg >= s.eval_every_kimg * 1000):
                    self._evaluate()
                if done or p.cur_nimg - p.last_snapshot_nimg >= s.snapshot_kimg * 1000:
                    self.snapshot()
        finally:
            bar.close()
        return p

    def _count_nonfinite(self, stats: dict | None) -> None:
        p = self.progress
        if stats is not None:
            p.nonfinite_run = 0
            return
        p.nonfinite_total += 1
        p.nonfinite_run += 1
        log.warning("non-finite loss at kimg %.2f: step skipped (%d in a row, %d in all)",
                    p.cur_nimg / 1000, p.nonfinite_run, p.nonfinite_total)
        if p.nonfinite_run >= self.s.max_nonfinite:
            raise GanT2IError(
                f"{p.nonfinite_run} non-finite steps in a row at kimg {p.cur_nimg / 1000:.2f}: "
                f"stopping; the last good checkpoint in {self.ckpt_dir} is untouched "
                "(lower the learning rates or raise loss.r1_gamma)")

    def _tick(self, tick: _TickStats) -> None:
        p = self.progress
        elapsed = max(time.perf_counter() - tick.start, 1e-9)
        means = distributed.average_scalars(tick.means(), self.device)  # stats are reduced at ticks only
        record = {"kimg": round(p.cur_nimg / 1000, 3), "nimg": p.cur_nimg, "step": p.step,
                  **{k: round(v, 5) for k, v in means.items()},
                  "img_per_s": round(tick.nimg / elapsed, 2),
                  "sec_per_kimg": round(elapsed / max(tick.nimg, 1) * 1000, 3),
                  "data_wait_frac": round(tick.data_wait / elapsed, 4),
                  "nonfinite_total": p.nonfinite_total,
                  "peak_mem_mb": round(peak_memory_mb(self.device), 1),
                  "time": time.time()}
        p.last_tick_nimg = p.cur_nimg
        self.logger.stats(record)

    def _evaluate(self) -> None:
        self.progress.last_eval_nimg = self.progress.cur_nimg
        distributed.average_float_buffers(self.G, self.G_ema)
        if self.rank == 0 and self.evaluate is not None:
            for record in self.evaluate(self.G_ema, self.progress.cur_nimg):
                self.logger.metric(record)

    @torch.no_grad()
    def sample_grid(self) -> Path:
        """Fixed captions x fixed z from G_ema, written to samples/grid-<kimg>.png."""
        G, z, n = self.G_ema, self.sample_z.to(self.device), self.sample_z.shape[0]
        rows = []
        for k, c in enumerate(self.data.sample_embeddings.to(self.device)):
            tokens = None
            if self.data.sample_tokens is not None:  # caption k's tokens, once per z
                tokens = tuple(t[k:k + 1].expand(n, *t.shape[1:]).to(self.device)
                               for t in self.data.sample_tokens)
            images = G(z, c.expand(n, -1), noise_mode="const", tokens=tokens)
            rows.append(to_uint8(images))
        scale = max(1, 64 // G.resolution)
        grid = caption_grid(rows, self.data.sample_texts, scale=scale)
        path = self.run_dir / "samples" / f"grid-{self.progress.cur_nimg // 1000:06d}kimg.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.png")
        grid.save(tmp)
        os.replace(tmp, path)
        return path

    def snapshot(self) -> None:
        """Sample grid, then the checkpoint (last: it must capture the state after the grid)."""
        p = self.progress
        p.last_snapshot_nimg = p.cur_nimg
        distributed.average_float_buffers(self.G, self.G_ema)  # every rank: the running mean of w
        if self.rank != 0:
            return
        grid = self.sample_grid()
        self.logger.image("samples", grid, nimg=p.cur_nimg, caption=f"kimg {p.cur_nimg / 1000:.1f}")
        for name, module in (("G", self.G), ("D", self.D), ("G_ema", self.G_ema)):
            if not all_finite(module):
                raise GanT2IError(f"{name} has non-finite weights at kimg {p.cur_nimg / 1000:.2f}; "
                                  f"not writing a checkpoint (the previous one is intact)")
        last = self.ckpt_dir / "last.pt"
        save_checkpoint(last, self.state_dict())
        copy_checkpoint(last, self.ckpt_dir / snapshot_name(p.cur_nimg))
        prune_snapshots(self.ckpt_dir, self.s.keep_snapshots)
