"""`python -m gan_t2i.train experiment=shapes_quick`: train a text-conditioned GAN.

The run folder is Hydra's output folder (`hydra.run.dir=...` puts it anywhere); rerunning the
same command continues the run from `checkpoints/last.pt` (`train.resume=auto`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from gan_t2i.cli import task
from gan_t2i.config import to_plain
from gan_t2i.logger import RunLogger
from gan_t2i.networks import Discriminator, Generator
from gan_t2i.prepare import prepare
from gan_t2i.training import distributed
from gan_t2i.training.augment import DiffAugment
from gan_t2i.training.checkpoint import load_checkpoint, load_latest, rng_state, set_rng_state
from gan_t2i.training.data import TrainData, load_train_data
from gan_t2i.training.loop import LoopSettings, Trainer
from gan_t2i.training.loss import GANLoss, LossSettings
from gan_t2i.utils import GanT2IError, flatten, resolve_device, seed_everything, use_bf16

log = logging.getLogger(__name__)


def build_generator(g: dict[str, Any], *, c_dim: int, resolution: int) -> Generator:
    """Generator from the `generator` config group."""
    return Generator(
        c_dim=c_dim, resolution=resolution, z_dim=g["z_dim"], w_dim=g["w_dim"],
        t_dim=g["t_dim"], mapping_layers=g["mapping_layers"], mapping_lr_mul=g["mapping_lr_mul"],
        channel_base=g["channel_base"], channel_max=g["channel_max"],
        grouped_modconv=g["grouped_modconv"],
        attention_resolutions=tuple(g["attention_resolutions"]),
        attention_heads=g["attention_heads"])


def build_discriminator(d: dict[str, Any], *, c_dim: int, resolution: int) -> Discriminator:
    """Discriminator from the `discriminator` config group."""
    return Discriminator(
        c_dim=c_dim, resolution=resolution, channel_base=d["channel_base"],
        channel_max=d["channel_max"], cmap_dim=d["cmap_dim"], projection=d["projection"],
        mbstd_group=d["mbstd_group"], mbstd_channels=d["mbstd_channels"])


def build_optimizer(module: torch.nn.Module, *, lr: float, betas: list[float],
                    device: torch.device) -> torch.optim.Optimizer:
    """Adam (fused on GPU)."""
    fused = device.type == "cuda"
    return torch.optim.Adam(module.parameters(), lr=lr, betas=tuple(betas), eps=1e-8, fused=fused)


class CompiledOrEager:
    """`torch.compile(module)` that falls back to the eager module if its first call fails.

    torch.compile is lazy: a missing compiler or an unsupported op shows up at the first call,
    not when wrapping. Other attributes (D's `features` and `score`, which lazy R1's double
    backward runs, and which compiled graphs do not support) go to the eager module.
    """

    def __init__(self, module: torch.nn.Module, compiled: Callable[..., Any] | None = None):
        self.module = module
        self.compiled = compiled if compiled is not None else torch.compile(module)
        self.checked = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is None:
            return self.module(*args, **kwargs)
        if self.checked:
            return self.compiled(*args, **kwargs)
        try:
            out = self.compiled(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - any backend failure falls back to eager
            log.warning("torch.compile failed on the first call (%s); running eager",
                        str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
            self.compiled = None
            return self.module(*args, **kwargs)
        self.checked = True
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.module, name)


def _maybe_compile(module: torch.nn.Module, enabled: bool) -> Any:
    if not enabled:
        return module
    try:
        return CompiledOrEager(module)
    except Exception as e:  # noqa: BLE001
        log.warning("torch.compile unavailable (%s); running eager", str(e).splitlines()[0])
        return module


def uses_swaps(loss: dict[str, Any]) -> bool:
    """Whether a `loss` config needs swapped-caption negatives."""
    return LossSettings(**loss).uses_swaps


def build_trainer(cfg: dict[str, Any], data: TrainData, run_dir: Path, logger: RunLogger, *,
                  device: torch.device, rank: int = 0, world_size: int = 1) -> Trainer:
    """Networks, optimizers, loss and loop settings from a plain config dict."""
    t, res = cfg["train"], cfg["data"]["resolution"]
    if cfg["generator"]["attention_resolutions"] and data.token_table is None:
        raise GanT2IError("generator.attention_resolutions needs token embeddings: "
                          "set text.tokens=true")
    if uses_swaps(cfg["loss"]) and data.swaps is None:
        raise GanT2IError("loss.swap_weight(_g) > 0 needs swapped captions: set text.swap_groups "
                          "(word groups such as [[red, green, blue], [circle, square]])")
    G = build_generator(cfg["generator"], c_dim=data.c_dim, resolution=res)
    D = build_discriminator(cfg["discriminator"], c_dim=data.c_dim, resolution=res)
    mean = data.embedding_mean()
    if cfg["generator"]["center_text"]:
        G.text_embed.set_statistics(mean)
    if cfg["discriminator"]["center_text"] and D.text_embed is not None:
        D.text_embed.set_statistics(mean)
    fmt = torch.channels_last if t["channels_last"] else torch.contiguous_format
    G, D = G.to(device, memory_format=fmt), D.to(device, memory_format=fmt)
    amp = use_bf16(str(t["amp"]), device)
    # The loss may run compiled wrappers; state dicts and optimizers keep the plain modules.
    loss = GANLoss(_maybe_compile(G, t["compile"]), _maybe_compile(D, t["compile"]),
                   DiffAugment(cfg["augment"]["policy"]), LossSettings(**cfg["loss"]), amp=amp)
    settings = LoopSettings(
        total_kimg=t["total_kimg"], batch_size=t["batch_size"], tick_kimg=t["tick_kimg"],
        snapshot_kimg=t["snapshot_kimg"], keep_snapshots=t["keep_snapshots"],
        eval_every_kimg=t["eval_every_kimg"], ema_kimg=t["ema_kimg"], ema_rampup=t["ema_rampup"],
        r1_interval=cfg["loss"]["r1_interval"], seed=t["seed"], channels_last=t["channels_last"],
        max_nonfinite=t["max_nonfinite"], sample_z=t["sample_z"], workers=t["workers"],
        progress=cfg["progress"])
    return Trainer(G=G, D=D, loss=loss,
                   opt_G=build_optimizer(G, lr=t["g_lr"], betas=t["betas"], device=device),
                   opt_D=build_optimizer(D, lr=t["d_lr"], betas=t["betas"], device=device),
                   data=data, settings=settings, run_dir=run_dir, logger=logger, device=device,
                   config=cfg, rank=rank, world_size=world_size)


def resume(trainer: Trainer, how: str, device: torch.device) -> str | None:
    """Apply `train.resume`: auto (this run's newest checkpoint), none, or a file/run folder."""
    if how in ("none", "", None):
        return None
    if how == "auto":
        found = load_latest(trainer.ckpt_dir, map_location=device)
    else:
        path = Path(how)
        if path.is_dir():
            found = load_latest(path / "checkpoints" if (path / "checkpoints").is_dir() else path,
                                map_location=device)
            if found is None:
                raise GanT2IError(f"train.resume: no readable checkpoint under {path}")
        else:
            found = (load_checkpoint(path, map_location=device), path)
    if found is None:
        return None
    state, path = found
    trainer.load_state_dict(state)
    changed = config_changes(state.get("config") or {}, trainer.config)
    if changed:
        log.warning("resuming %s with settings other than it was trained with: %s%s", path,
                    ", ".join(changed[:8]), f" (+{len(changed) - 8} more)" if len(changed) > 8 else "")
    return str(path)


# Keys that may change between a checkpoint and its continuation without changing the run.
_RESUME_FREE = ("train.resume", "train.total_kimg", "train.workers", "train.num_threads",
                "train.device", "train.eval_every_kimg", "train.snapshot_kimg", "train.tick_kimg",
                "train.keep_snapshots", "logger.", "paths.", "progress", "eval.")


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """'key: old -> new' for settings that differ (schedules, logging and paths left out)."""
    a, b = flatten(old), flatten(new)
    return [f"{key}: {a.get(key)!r} -> {b.get(key)!r}" for key in sorted(set(a) | set(b))
            if a.get(key) != b.get(key)
            and not any(key == f or (f.endswith(".") and key.startswith(f)) for f in _RESUME_FREE)]


def build_evaluate_hook(cfg: dict[str, Any], prepared: Any, device: torch.device
                        ) -> Callable[[Generator, int], list[dict]] | None:
    """`train.eval_every_kimg`: score G_ema with `eval.metrics` without touching the RNG stream."""
    if cfg["train"]["eval_every_kimg"] <= 0 or not cfg["eval"]["metrics"]:
        return None
    from gan_t2i.evaluate import Evaluator, check_metrics, eval_splits

    check_metrics(cfg["eval"]["metrics"])
    if not eval_splits(prepared.store, prepared.embeddings, cfg["eval"]["splits"]):
        log.warning("train.eval_every_kimg: no split of eval.splits=%s in the dataset; "
                    "no evaluation during training (set data.val_annotations for coco)",
                    cfg["eval"]["splits"])
        return None
    attention = bool(cfg["generator"]["attention_resolutions"])
    evaluator = Evaluator(prepared.store, prepared.embeddings, cfg["eval"],
                          cache_dir=Path(cfg["paths"]["data_dir"]) / "eval", device=device,
                          progress=cfg["progress"], tokens=prepared.tokens if attention else None)

    def evaluate(G: Generator, nimg: int) -> list[dict]:
        state = rng_state()  # evaluation (and a first oracle training) must not shift training
        try:
            return [{"kimg": nimg / 1000, **r, "seed": cfg["eval"]["seed"]}
                    for r in evaluator.score(G, cfg["eval"]["metrics"])]
        finally:
            set_rng_state(state)

    return evaluate


def train(cfg: dict[str, Any], run_dir: Path) -> Trainer:
    """Prepare data (reused when built), then train; returns the finished trainer.

    Under `torchrun` every process trains its slice of each global batch; rank 0 prepares the
    data first and alone writes the run folder (which it chooses for all ranks).
    """
    t = cfg["train"]
    if t["num_threads"] > 0:
        torch.set_num_threads(t["num_threads"])
    if t["batch_size"] <= 0:
        raise GanT2IError("train.batch_size must be positive")
    distributed.adopt_submitit_env()
    env = distributed.env_from_launcher()
    if t["batch_size"] % env.world_size:
        raise GanT2IError(f"train.batch_size={t['batch_size']} does not split over "
                          f"{env.world_size} processes")
    device = distributed.init(env, resolve_device(t["device"]))
    distributed.quiet_other_ranks(env)
    run_dir = Path(distributed.broadcast_object(str(run_dir)))
    try:
        if env.rank > 0:
            distributed.barrier()  # rank 0 builds the store and the embeddings first
        prepared = prepare(cfg["data"], cfg["text"], cfg["paths"]["data_dir"],
                           progress=cfg["progress"] and env.rank == 0)
        if env.rank == 0:
            distributed.barrier()
        attention = bool(cfg["generator"]["attention_resolutions"])
        data = load_train_data(prepared.store, prepared.embeddings, xflip=cfg["data"]["xflip"],
                               sample_captions=t["sample_captions"],
                               tokens=prepared.tokens if attention else None,
                               swaps=prepared.swaps if uses_swaps(cfg["loss"]) else None)
        seed_everything(t["seed"])  # the same on every rank: see gan_t2i.shard
        logger = RunLogger(run_dir, mode=cfg["logger"]["mode"], project=cfg["logger"]["project"],
                           name=run_dir.name, config=cfg, tags=cfg["logger"]["tags"],
                           enabled=env.rank == 0)
        trainer = build_trainer(cfg, data, run_dir, logger, device=device, rank=env.rank,
                                world_size=env.world_size)
        trainer.evaluate = build_evaluate_hook(cfg, prepared, device) if env.rank == 0 else None
        resumed = resume(trainer, t["resume"], device)
        if resumed:
            log.info("resumed from %s at kimg %.1f", resumed, trainer.progress.cur_nimg / 1000)
        try:
            trainer.run()
        finally:
            logger.close()
        distributed.shutdown()
    except BaseException:
        if env.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()  # do not leave the others waiting forever
        raise
    return trainer


def report(trainer: Trainer) -> str:
    """Where the results are."""
    grids = sorted((trainer.run_dir / "samples").glob("grid-*.png"))
    lines = [f"run folder: {trainer.run_dir}",
             f"kimg: {trainer.progress.cur_nimg / 1000:.1f}",
             f"checkpoint: {trainer.ckpt_dir / 'last.pt'}"]
    if grids:
        lines.append(f"last sample grid: {grids[-1]}")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
@task
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    run_dir = Path(cfg.paths.output_dir)
    trainer = train(to_plain(cfg), run_dir)
    if trainer.rank == 0:
        print(report(trainer))


if __name__ == "__main__":
    main()
