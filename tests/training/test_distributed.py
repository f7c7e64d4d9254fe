"""Data-parallel training: global-batch random draws, rank slices, and torchrun with 2 gloo ranks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT

from gan_t2i import shard
from gan_t2i.prepare import prepare
from gan_t2i.training.checkpoint import load_checkpoint
from gan_t2i.training.data import load_train_data
from gan_t2i.training.distributed import DistEnv, env_from_launcher
from gan_t2i.utils import GanT2IError, read_jsonl


def _draws(rank: int, world: int) -> list[torch.Tensor]:
    torch.manual_seed(0)
    with shard.batch_shard(rank, world):
        return [shard.randn(4, 3), shard.rand(4, 2, 1), shard.randint(-3, 4, 4, 1, 1),
                shard.randn(4, 5, dtype=torch.float64)]


def test_shard_draws_are_slices_of_the_global_batch():
    whole = _draws(0, 1)
    assert whole[0].shape == (4, 3) and whole[2].dtype == torch.int64
    for world in (2, 4):
        b = 4 // world
        torch.manual_seed(0)
        expected = [torch.randn(4, 3), torch.rand(4, 2, 1), torch.randint(-3, 4, (4, 1, 1)),
                    torch.randn(4, 5, dtype=torch.float64)]
        for rank in range(world):
            torch.manual_seed(0)
            with shard.batch_shard(rank, world):
                parts = [shard.randn(b, 3), shard.rand(b, 2, 1), shard.randint(-3, 4, b, 1, 1),
                         shard.randn(b, 5, dtype=torch.float64)]
            for part, full in zip(parts, expected):
                assert torch.equal(part, full[rank * b:(rank + 1) * b])
    assert shard.current() == (0, 1)  # the context is left


def test_shard_rejects_a_rank_outside_the_world():
    with pytest.raises(ValueError, match="outside world size"), shard.batch_shard(2, 2):
        pass


def test_env_from_launcher_reads_torchrun_variables():
    assert env_from_launcher({}) == DistEnv(0, 0, 1)
    env = env_from_launcher({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"})
    assert env == DistEnv(3, 1, 4) and env.enabled


def test_rank_loaders_split_the_global_batch(smoke_data_dir):
    from conftest import plain_config

    cfg = plain_config(["experiment=smoke", f"paths.data_dir={smoke_data_dir}"], Path("unused"))
    prepared = prepare(cfg["data"], cfg["text"], cfg["paths"]["data_dir"], progress=False)
    data = load_train_data(prepared.store, prepared.embeddings, sample_captions=1)
    whole = iter(data.loader(batch_size=8, seed=3, start=16))
    ranks = [iter(data.loader(batch_size=8, seed=3, start=16, rank=r, world_size=2))
             for r in range(2)]
    for _ in range(3):
        images, captions = next(whole)
        parts = [next(r) for r in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), images)
        assert all(torch.equal(p[1], captions) for p in parts)  # every rank sees all captions
        assert parts[0][0].shape[0] == 4
    with pytest.raises(GanT2IError, match="does not split over 3"):
        data.loader(batch_size=8, seed=0, start=0, world_size=3)


# --------------------------------------------------------------------------- torchrun, 2 ranks
def _cmd(data_dir: Path, run: Path, nproc: int) -> list[str]:
    launcher = [sys.executable, "-m", "gan_t2i.train"]
    if nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={nproc}", "-m", "gan_t2i.train"]
    return [*launcher, *_overrides(data_dir), f"hydra.run.dir={run}"]


def _overrides(data_dir: Path) -> list[str]:
    # DiffAugment and style mixing on: every kind of per-sample draw is exercised.
    return ["experiment=smoke", f"paths.data_dir={data_dir}", "progress=false",
            "train.total_kimg=0.192", "train.snapshot_kimg=0.016", "augment=diffaug",
            "loss.style_mixing=0.9"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            "WANDB_MODE": "disabled"}


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["cur_nimg"] == 192
    return {f"{net}.{k}": v for net in ("G", "D", "G_ema") for k, v in state[net].items()}


def test_slurm_preset_composes_with_the_submitit_launcher():
    from hydra import compose, initialize_config_dir

    import gan_t2i.config  # noqa: F401

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True,
                      overrides=["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=4",
                                 "hydra.launcher.tasks_per_node=4", "experiment=coco64"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.timeout_min) == (4, 4, 1440)
    assert launcher.max_num_timeout > 0  # a timed-out job is requeued and resumes


def _children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    return [int(c) for t in tasks.iterdir() for c in (t / "children").read_text().split()]


def _wait_gone(pid: int, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except FileNotFoundError:
            return
        if state == "Z":  # killed; its parent (also killed) will not reap it
            return
        time.sleep(0.05)
    raise AssertionError(f"rank process {pid} still running after SIGKILL")


@pytest.mark.slow
def test_two_gloo_ranks_train_like_one_process_and_resume_after_a_kill(smoke_data_dir, tmp_path):
    one, two, killed = tmp_path / "one", tmp_path / "two", tmp_path / "killed"
    _run(_cmd(smoke_data_dir, one, 1))
    _run(_cmd(smoke_data_dir, two, 2))
    a, b = _weights(one), _weights(two)
    assert a.keys() == b.keys()
    for k in a:  # 24 steps, same global batch of 8: equal up to float summation order
        scale = max(1.0, float(a[k].abs().max()))
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-5 * scale, msg=k)
    # One log, one set of checkpoints and grids: only rank 0 writes.
    stats = read_jsonl(two / "stats.jsonl")
    assert [r["nimg"] for r in stats][-1] == 192 and len(stats) == len(read_jsonl(one / "stats.jsonl"))

    # The cluster path: a Hydra sweep through submitit (its local executor), 2 tasks in one job.
    sweep = tmp_path / "sweep"
    _run([sys.executable, "-m", "gan_t2i.train", "-m", "hydra/launcher=submitit_local",
          "hydra.launcher.tasks_per_node=2", f"hydra.sweep.dir={sweep}",
          *_overrides(smoke_data_dir)])
    (job,) = [d for d in sweep.iterdir() if (d / "checkpoints").is_dir()]
    s = _weights(job)
    for k in a:
        torch.testing.assert_close(s[k], a[k], rtol=0, atol=1e-5 * max(1.0, float(a[k].abs().max())),
                                   msg=k)

    # Kill the launcher and both ranks mid-run, then run the same command again.
    proc = subprocess.Popen(_cmd(smoke_data_dir, killed, 2), cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        stats_file = killed / "stats.jsonl"
        if stats_file.is_file() and len(read_jsonl(stats_file)) >= 5 and \
                list((killed / "checkpoints").glob("snapshot-*")):
            break
        time.sleep(0.05)
    ranks = _children(proc.pid)  # torchrun starts each rank in its own session
    assert len(ranks) == 2, ranks
    for pid in [*ranks, proc.pid]:
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    for pid in ranks:
        _wait_gone(pid)
    before = load_checkpoint(killed / "checkpoints" / "last.pt")["cur_nimg"]
    assert 0 < before < 192, "the kill should land mid-run"
    _run(_cmd(smoke_data_dir, killed, 2))
    c = _weights(killed)
    different = [k for k in b if not torch.equal(b[k], c[k])]
    assert not different, f"2-rank weights differ after resume: {different[:5]}"
