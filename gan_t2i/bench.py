"""`python -m gan_t2i.bench [--out DIR] [--device cpu|cuda] [--quick]`: how fast is this machine?

Measures, side by side in one run, the training iteration (img/s of `Trainer.step`, lazy R1
included), sampling from G_ema, caption encoding and embedding look-ups, and the image store
through the training DataLoader. Prints a table and writes the same numbers, with a description of
the machine, to `DIR/bench.json`. Every number is the median of a few timed repeats after a
warm-up; nothing is compared against hard-coded numbers. Needs no prepared dataset: the training
and data sections run on synthetic stores written to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from gan_t2i.training.loop import peak_memory_mb
from gan_t2i.utils import atomic_write_json, configure_cpu, cpu_has_native_bf16, resolve_device

log = logging.getLogger(__name__)

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
EMBED_DIM = 384  # all-MiniLM-L6-v2, the default text model


@dataclass
class BenchSettings:
    """Sizes of one benchmark run (full, or `--quick` for tests)."""

    repeats: int = 3  # timed repeats per measurement; the median is reported
    warmup: int = 1  # untimed runs first (allocator, caches, lazy init)
    train_experiments: tuple[str, ...] = ("shapes_quick", "bench")
    train_resolutions: tuple[int, ...] = (32, 64)
    train_batch: int = 32
    nchw_experiment: str = "bench"  # also timed in NCHW, so the channels_last speed-up shows
    sample_experiment: str = "shapes_quick"
    sample_batches: tuple[int, ...] = (1, 64)
    sample_min_images: int = 64  # images per timed repeat (batch 1 runs this many calls)
    text_captions: int = 512
    lookup_rows: int = 100_000
    lookup_batch: int = 32
    lookup_batches: int = 2000  # look-up batches per timed repeat
    data_images: int = 5000
    data_resolution: int = 64
    data_batch: int = 32
    data_batches: int = 100  # DataLoader batches per timed repeat


# For tests: checks every section end to end in seconds. No warm-up either: these numbers are
# not for reading, and the first steps pay one-off setup.
QUICK = BenchSettings(
    repeats=1, warmup=0, train_experiments=("smoke",), train_resolutions=(16,), train_batch=8,
    nchw_experiment="smoke", sample_experiment="smoke", sample_batches=(1, 8),
    sample_min_images=8, text_captions=32, lookup_rows=2000, lookup_batches=50, data_images=128,
    data_batch=16, data_batches=8)


def _progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --- timing helpers --------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_median(fn: Callable[[], Any], *, repeats: int, warmup: int,
                device: torch.device) -> float:
    """Median wall time of `fn()` in seconds over `repeats` runs, after `warmup` untimed runs."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: the process's max RSS (Linux clear_refs) or the CUDA allocator peak."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # "5" resets the peak RSS (VmHWM, and so getrusage's ru_maxrss) to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # elsewhere the peak stays the process's peak so far


# --- machine ---------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    from gan_t2i.training.checkpoint import code_version

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return {
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "cpu_model": cpu_model(), "cpu_native_bf16": cpu_has_native_bf16(),
        "torch_version": torch.__version__, "device": str(device), "device_name": name,
        "code_version": code_version(), "python": platform.python_version(),
        "platform": platform.platform(), "load_average": _load_average(),
    }


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# --- synthetic inputs ------------------------------------------------------------------------
def shapes_captions(n: int, seed: int = 0) -> list[str]:
    """`n` captions in the style of the shapes dataset (random attributes and templates)."""
    from gan_t2i.data.shapes import make_captions, sample_attributes

    rng = np.random.default_rng(seed)
    return [make_captions(sample_attributes(rng, "train", []), rng, 1)[0] for _ in range(n)]


def write_store_split(folder: Path, *, num_images: int, resolution: int,
                      captions_per_image: int = 5, seed: int = 0) -> Any:
    """A store split of random images and shapes-like captions (store layout); returns it open."""
    from gan_t2i.data.store import StoreSplit

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = np.lib.format.open_memmap(folder / "images.npy", mode="w+", dtype=np.uint8,
                                       shape=(num_images, resolution, resolution, 3))
    for start in range(0, num_images, 1024):  # [n, H, W, 3], in chunks to bound memory
        stop = min(start + 1024, num_images)
        images[start:stop] = rng.integers(0, 256, (stop - start, resolution, resolution, 3),
                                          dtype=np.uint8)
    images.flush()
    del images
    texts = shapes_captions(num_images * captions_per_image, seed)
    image_index = np.repeat(np.arange(num_images), captions_per_image).tolist()
    table = {"text": texts, "image_index": image_index, "ann_id": list(range(len(texts)))}
    (folder / "captions.json").write_text(json.dumps(table), encoding="utf-8")
    meta = [{"id": i, "file_name": f"{i:06d}.png"} for i in range(num_images)]
    (folder / "images.json").write_text(json.dumps(meta), encoding="utf-8")
    return StoreSplit(folder)


def random_embeddings(rows: int, dim: int = EMBED_DIM, seed: int = 0) -> torch.Tensor:
    """Random unit-norm caption embeddings, float16 [rows, dim] (like the embedding cache)."""
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(rows, dim, generator=gen)
    return torch.nn.functional.normalize(table, dim=1).half()


def synthetic_train_data(folder: Path, *, num_images: int, resolution: int,
                         swap_groups: int = 0) -> Any:
    """`TrainData` over a synthetic store split with random embeddings (no dataset needed);
    with `swap_groups`, every caption also has that many random swapped-caption variants."""
    from gan_t2i.data import ImageCaptionDataset
    from gan_t2i.training.data import SwapTable, TrainData

    split = write_store_split(folder, num_images=num_images, resolution=resolution)
    table = random_embeddings(split.num_captions)
    swaps = None
    if swap_groups:
        m = split.num_captions
        swaps = SwapTable(random_embeddings(m * swap_groups, seed=1),
                          torch.arange(m * swap_groups).view(m, swap_groups))
    return TrainData(dataset=ImageCaptionDataset(split), embeddings=table,
                     caption_image=torch.from_numpy(split.caption_image.copy()),
                     sample_texts=split.captions[:2], sample_embeddings=table[:2].float(),
                     swaps=swaps)


def compose_config(overrides: list[str], output_dir: Path) -> dict[str, Any]:
    """A resolved plain config composed from conf/ as the apps do, with its output folder set."""
    from hydra import compose, initialize_config_dir

    from gan_t2i.config import to_plain  # importing registers the schema

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config",
                      overrides=[*overrides, f"paths.output_dir={output_dir}"])
    return to_plain(cfg)


def param_count(module: torch.nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in module.parameters())


# --- training --------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainCase:
    """One timed training configuration."""

    experiment: str
    resolution: int
    channels_last: bool = True
    bf16: bool = False

    @property
    def label(self) -> str:
        """Short description for progress lines."""
        fmt = "channels_last" if self.channels_last else "NCHW"
        return f"{self.experiment} {self.resolution}px {fmt} {'bf16' if self.bf16 else 'fp32'}"


def train_cases(s: BenchSettings, device: torch.device) -> list[TrainCase]:
    """Every experiment x resolution in fp32 channels_last, NCHW for one, bf16 where it is fast."""
    bf16 = device.type == "cuda" or cpu_has_native_bf16()  # emulated bf16 is not worth timing
    cases = []
    for exp in s.train_experiments:
        for res in s.train_resolutions:
            cases.append(TrainCase(exp, res))
            if exp == s.nchw_experiment:
                cases.append(TrainCase(exp, res, channels_last=False))
            if bf16:
                cases.append(TrainCase(exp, res, bf16=True))
    return cases


def _timed_step(trainer: Any, batches: Iterator, *, r1: bool, batch_size: int) -> None:
    """One full iteration as the loop runs it (next batch, step, EMA); `r1`: with lazy R1."""
    # The loop runs R1 when step % r1_interval == 0: place the counter so this step does or not.
    trainer.progress.step = 0 if r1 else 1
    if trainer.step(next(batches)) is None:
        log.warning("bench: a training step was skipped as non-finite")
    trainer._after_step(batch_size)


class _FlopCount(TorchDispatchMode):
    """Adds up torch's FLOP formulas (convolutions, matmuls) of every op that runs.

    torch's FlopCounterMode also tracks modules with hooks that break under the
    `autograd.grad(create_graph=True)` of lazy R1; this counts totals only.
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def step_flops(trainer: Any, batches: Iterator, *, r1: bool, batch_size: int) -> float:
    """Convolution and matmul FLOPs (forward and backward) of one untimed iteration."""
    with _FlopCount() as counter:
        _timed_step(trainer, batches, r1=r1, batch_size=batch_size)
    return float(counter.total)


def conv_peak(device: torch.device, *, channels: int = 128, resolution: int = 32,
              batch_size: int = 32, repeats: int = 5) -> dict[str, Any]:
    """GFLOP/s of one dense 3x3 convolution forward (channels_last, float32): what the
    convolution library reaches on this device at the bench config's widest layer."""
    x = torch.randn(batch_size, channels, resolution, resolution, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(channels, channels, 3, 3, device=device).contiguous(
        memory_format=torch.channels_last)
    flops = 2 * channels * channels * 9 * resolution * resolution * batch_size
    with torch.no_grad():
        t = time_median(lambda: torch.nn.functional.conv2d(x, w, padding=1), repeats=repeats,
                        warmup=2, device=device)
    return {"what": f"3x3 conv {channels}->{channels} ch, {resolution} px, batch {batch_size}, "
                    "forward", "gflop_per_s": flops / t / 1e9}


def build_bench_trainer(case: TrainCase, s: BenchSettings, device: torch.device,
                        run_dir: Path) -> Any:
    """`build_trainer` for one case, composed from its experiment, on synthetic data."""
    from gan_t2i.logger import RunLogger
    from gan_t2i.train import build_trainer, uses_swaps

    cfg = compose_config([
        f"experiment={case.experiment}", f"data.resolution={case.resolution}",
        f"train.batch_size={s.train_batch}", f"train.channels_last={case.channels_last}",
        f"train.amp={'bf16' if case.bf16 else 'off'}", f"train.device={device}",
        "progress=false", "logger.mode=disabled"], run_dir)
    groups = len(cfg["text"]["swap_groups"]) if uses_swaps(cfg["loss"]) else 0
    data = synthetic_train_data(run_dir / "store", num_images=max(64, s.train_batch),
                                resolution=case.resolution, swap_groups=groups)
    return build_trainer(cfg, data, run_dir, RunLogger(run_dir, mode="disabled"), device=device)


def bench_train_case(case: TrainCase, s: BenchSettings, device: torch.device,
                     workdir: Path) -> dict[str, Any]:
    """img/s of a full iteration for one case, lazy R1 share included, plus memory and sizes."""
    reset_peak_memory(device)
    trainer = build_bench_trainer(case, s, device, workdir / case.label.replace(" ", "-"))
    batches = iter(trainer.data.loader(batch_size=s.train_batch, seed=0, start=0))
    interval, bs = trainer.s.r1_interval, s.train_batch
    times = {}
    for kind in ("plain", "r1") if interval > 0 else ("plain",):
        times[kind] = time_median(
            lambda r1=(kind == "r1"): _timed_step(trainer, batches, r1=r1, batch_size=bs),
            repeats=s.repeats, warmup=s.warmup, device=device)
    flops = {kind: step_flops(trainer, batches, r1=kind == "r1", batch_size=bs) for kind in times}
    t_plain, t_r1 = times["plain"], times.get("r1", times["plain"])
    t_step, f_step = _loop_mean(times, interval), _loop_mean(flops, interval)
    return {
        "experiment": case.experiment, "resolution": case.resolution, "batch_size": bs,
        "memory_format": "channels_last" if case.channels_last else "NCHW",
        "precision": "bf16" if case.bf16 else "fp32", "r1_interval": interval,
        "ms_step_plain": t_plain * 1e3, "ms_step_r1": t_r1 * 1e3,
        "img_per_s": bs / t_step, "peak_mem_mb": peak_memory_mb(device),
        "gflop_per_img": f_step / bs / 1e9, "gflop_per_s": f_step / t_step / 1e9,
        "g_params": param_count(trainer.G), "d_params": param_count(trainer.D),
    }


def _loop_mean(per_kind: dict[str, float], interval: int) -> float:
    """The loop's mean iteration from plain and R1 steps: R1 on one step in `interval`."""
    plain = per_kind["plain"]
    if interval <= 0:
        return plain
    return ((interval - 1) * plain + per_kind.get("r1", plain)) / interval


def speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """channels_last over NCHW (fp32) and bf16 over fp32 (channels_last), where both were timed."""
    def find(exp: str, res: int, fmt: str, prec: str) -> dict[str, Any] | None:
        return next((r for r in rows if (r["experiment"], r["resolution"], r["memory_format"],
                                         r["precision"]) == (exp, res, fmt, prec)), None)

    out = []
    for r in rows:
        if (r["memory_format"], r["precision"]) != ("channels_last", "fp32"):
            continue
        for what, base, fast in (
                ("channels_last / NCHW (fp32)", find(r["experiment"], r["resolution"], "NCHW",
                                                     "fp32"), r),
                ("bf16 / fp32 (channels_last)", r, find(r["experiment"], r["resolution"],
                                                        "channels_last", "bf16"))):
            if base is not None and fast is not None:
                out.append({"what": what, "experiment": r["experiment"],
                            "resolution": r["resolution"],
                            "speedup": fast["img_per_s"] / base["img_per_s"]})
    return out


def bench_training(s: BenchSettings, device: torch.device) -> dict[str, Any]:
    """The training section: one row per case, and the speed-ups between them."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="gan_t2i-bench-") as tmp:
        for case in train_cases(s, device):
            _progress(f"training: {case.label}, batch {s.train_batch}")
            rows.append(bench_train_case(case, s, device, Path(tmp)))
    memory = ("CUDA allocator peak" if device.type == "cuda"
              else "process max RSS, reset before each case")
    return {"rows": rows, "speedups": speedups(rows), "peak_mem": memory,
            "conv_peak": conv_peak(device, repeats=max(s.repeats, 2))}


# --- sampling --------------------------------------------------------------------------------
def bench_sampling(s: BenchSettings, device: torch.device) -> dict[str, Any]:
    """Images/s of G_ema (eval, inference_mode, constant noise) at each sampling batch size."""
    from gan_t2i.train import build_generator

    _progress(f"sampling: {s.sample_experiment}, batches {list(s.sample_batches)}")
    with tempfile.TemporaryDirectory(prefix="gan_t2i-bench-") as tmp:
        cfg = compose_config([f"experiment={s.sample_experiment}", "progress=false"], Path(tmp))
    res = cfg["data"]["resolution"]
    fmt = torch.channels_last if cfg["train"]["channels_last"] else torch.contiguous_format
    G_ema = build_generator(cfg["generator"], c_dim=EMBED_DIM, resolution=res)
    G_ema = G_ema.to(device, memory_format=fmt).eval().requires_grad_(False)
    rows = []
    for batch in s.sample_batches:
        t = _sample_seconds(G_ema, batch, s, device)
        rows.append({"experiment": s.sample_experiment, "resolution": res, "batch_size": batch,
                     "img_per_s": batch / t, "ms_per_image": t / batch * 1e3})
    return {"rows": rows}


def _sample_seconds(G: torch.nn.Module, batch: int, s: BenchSettings,
                    device: torch.device) -> float:
    """Median seconds of one G call at `batch` (small batches repeated to fill a timing)."""
    z = torch.randn(batch, G.z_dim, device=device)
    c = random_embeddings(batch).float().to(device)
    calls = max(1, s.sample_min_images // batch)

    def draw() -> None:
        with torch.inference_mode():
            for _ in range(calls):
                G(z, c, noise_mode="const")

    return time_median(draw, repeats=s.repeats, warmup=s.warmup, device=device) / calls


# --- text ------------------------------------------------------------------------------------
def bench_encoder(s: BenchSettings, device: torch.device) -> dict[str, Any]:
    """Captions/s of the bundled sentence encoder; a `skipped` reason when it cannot load."""
    from gan_t2i.config import TextConfig
    from gan_t2i.text import SentenceEncoder

    _progress(f"text: encoding {s.text_captions} captions with minilm")
    captions = shapes_captions(s.text_captions, seed=1)
    try:
        encoder = SentenceEncoder("minilm", device=str(device),
                                  batch_size=TextConfig().batch_size)
    except Exception as err:  # noqa: BLE001 - any load failure skips this row, with its reason
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return {"what": "encode captions (minilm)", "skipped": reason}
    t = time_median(lambda: encoder.encode(captions), repeats=s.repeats, warmup=s.warmup,
                    device=device)
    return {"what": "encode captions (minilm)", "items": len(captions), "per_s": len(captions) / t}


def bench_lookup(s: BenchSettings, device: torch.device) -> dict[str, Any]:
    """Look-ups/s from a float16 table as the loop does: index, copy to the device, to float32."""
    _progress(f"text: embedding look-ups from a [{s.lookup_rows}, {EMBED_DIM}] float16 table")
    table = random_embeddings(s.lookup_rows)
    gen = torch.Generator().manual_seed(0)
    index = torch.randint(0, s.lookup_rows, (s.lookup_batches, s.lookup_batch), generator=gen)

    def lookups() -> None:
        for idx in index:
            table[idx].to(device, non_blocking=True).float()

    t = time_median(lookups, repeats=s.repeats, warmup=s.warmup, device=device)
    n = s.lookup_batches * s.lookup_batch
    return {"what": f"look up embeddings (batch {s.lookup_batch}, fp16 -> fp32)", "items": n,
            "per_s": n / t}


def bench_text(s: BenchSettings, device: torch.device) -> dict[str, Any]:
    """The text section: caption encoding and embedding look-ups."""
    return {"rows": [bench_encoder(s, device), bench_lookup(s, device)]}


# --- data ------------------------------------------------------------------------------------
def bench_data(s: BenchSettings, device: torch.device) -> dict[str, Any]:
    """Images/s from an image store through the Dataset and DataLoader as training reads it."""
    from gan_t2i.data import ImageCaptionDataset
    from gan_t2i.training.data import TrainData

    _progress(f"data: {s.data_images} images at {s.data_resolution}px, batch {s.data_batch}, "
              "one process")
    with tempfile.TemporaryDirectory(prefix="gan_t2i-bench-") as tmp:
        split = write_store_split(Path(tmp) / "train", num_images=s.data_images,
                                  resolution=s.data_resolution)
        data = TrainData(dataset=ImageCaptionDataset(split), embeddings=torch.zeros(0, 1),
                         caption_image=torch.from_numpy(split.caption_image.copy()),
                         sample_texts=[], sample_embeddings=torch.zeros(0, 1))
        t = _read_seconds(data, s)
        del data, split  # close the memory map before the folder goes
    n = s.data_batches * s.data_batch
    return {"rows": [{"resolution": s.data_resolution, "batch_size": s.data_batch, "workers": 0,
                      "num_images": s.data_images, "img_per_s": n / t}]}


def _read_seconds(data: Any, s: BenchSettings) -> float:
    """Median seconds to draw `s.data_batches` batches from the training DataLoader."""
    batches = iter(data.loader(batch_size=s.data_batch, seed=0, start=0, workers=0))

    def read() -> None:
        for _ in range(s.data_batches):
            next(batches)

    return time_median(read, repeats=s.repeats, warmup=s.warmup, device=torch.device("cpu"))


# --- report ----------------------------------------------------------------------------------
SECTIONS: dict[str, Callable[[BenchSettings, torch.device], dict[str, Any]]] = {
    "training": bench_training, "sampling": bench_sampling, "text": bench_text, "data": bench_data,
}

# Columns of the printed table per section: (key, header, format).
COLUMNS: dict[str, list[tuple[str, str, str]]] = {
    "training": [("experiment", "experiment", "s"), ("resolution", "px", "d"),
                 ("batch_size", "batch", "d"), ("memory_format", "format", "s"),
                 ("precision", "prec", "s"), ("img_per_s", "img/s", ".1f"),
                 ("ms_step_plain", "ms/step", ".0f"), ("ms_step_r1", "ms/R1 step", ".0f"),
                 ("gflop_per_img", "GFLOP/img", ".2f"), ("gflop_per_s", "GFLOP/s", ".1f"),
                 ("peak_mem_mb", "peak MiB", ".0f"), ("g_params", "G params", ","),
                 ("d_params", "D params", ",")],
    "speedups": [("what", "speed-up", "s"), ("experiment", "experiment", "s"),
                 ("resolution", "px", "d"), ("speedup", "x", ".2f")],
    "sampling": [("experiment", "experiment", "s"), ("resolution", "px", "d"),
                 ("batch_size", "batch", "d"), ("img_per_s", "img/s", ".1f"),
                 ("ms_per_image", "ms/img", ".2f")],
    "text": [("what", "what", "s"), ("per_s", "per s", ",.0f"), ("skipped", "skipped", "s")],
    "data": [("resolution", "px", "d"), ("batch_size", "batch", "d"),
             ("workers", "workers", "d"), ("img_per_s", "img/s", ",.0f")],
}


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return ""
    return format(value, fmt) if fmt != "s" else str(value)


def format_rows(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """A plain fixed-width table; columns no row has are left out."""
    columns = [c for c in columns if any(c[0] in r for r in rows)]
    cells = [[h for _, h, _ in columns]]
    cells += [[_cell(r.get(k), f) for k, _, f in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
                     for row in cells)


def format_report(report: dict[str, Any]) -> str:
    """The whole report as text: the machine, then one table per section."""
    m = report["machine"]
    lines = [f"gan_t2i bench ({'quick' if report['settings']['quick'] else 'full'}) on "
             f"{m['device_name']} ({m['cpu_count']} cores, {m['torch_threads']} torch threads, "
             f"native bf16: {m['cpu_native_bf16']}), torch {m['torch_version']}, gan_t2i "
             f"{m['code_version']}, load average {m['load_average']}"]
    for name in SECTIONS:
        section = report[name]
        lines += ["", f"== {name} ==", format_rows(section["rows"], COLUMNS[name])]
        if section.get("speedups"):
            lines += ["", format_rows(section["speedups"], COLUMNS["speedups"])]
        if section.get("conv_peak"):
            peak = section["conv_peak"]
            lines += ["", f"convolution library: {peak['gflop_per_s']:.1f} GFLOP/s on one "
                          f"{peak['what']} (GFLOP counts convolutions and matmuls only)"]
    return "\n".join(lines)


def run_bench(settings: BenchSettings, device: torch.device, *, quick: bool) -> dict[str, Any]:
    """Every section, in order; returns the report (machine, settings, sections)."""
    configure_cpu()  # flush denormals, as training does
    report: dict[str, Any] = {"machine": machine_info(device),
                              "settings": {"quick": quick, **asdict(settings)}}
    elapsed = {}
    for name, section in SECTIONS.items():
        start = time.perf_counter()
        report[name] = section(settings, device)
        elapsed[name] = time.perf_counter() - start
    report["elapsed_s"] = elapsed
    report["machine"]["load_average_end"] = _load_average()
    return report


def check_finite(obj: Any, path: str = "") -> None:
    """Raise if any number in the report is NaN or infinite (JSON would carry it silently)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            check_finite(v, f"{path}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_finite(v, f"{path}[{i}]")
    elif isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"bench: non-finite number at {path}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m gan_t2i.bench", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None,
                   help="folder for bench.json (default: outputs/bench/<timestamp>)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where to run (cuda adds bf16 vs fp32 training)")
    p.add_argument("--quick", action="store_true", help="tiny sizes and one repeat (for tests)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table, write `bench.json`; returns the report."""
    args = parse_args(argv)
    out = args.out or Path("outputs/bench") / time.strftime("%Y%m%d-%H%M%S")
    report = run_bench(QUICK if args.quick else BenchSettings(), resolve_device(args.device),
                       quick=args.quick)
    check_finite(report)
    atomic_write_json(out / "bench.json", report)
    print(format_report(report))
    print(f"\nwritten: {out / 'bench.json'}")
    return report


if __name__ == "__main__":
    main()
