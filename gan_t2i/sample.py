"""`python -m gan_t2i.sample run=<run folder> prompts='["a large red circle in the top left"]'`.

Draws images from a checkpoint's G_ema. Modes: `grid` (a row per prompt), `interpolate` (a GIF and
a filmstrip walking through the prompts), `truncation_sweep` (a row per psi), `style_mix`
(StyleGAN's coarse/fine style-mixing figure). Every PNG carries its provenance in PNG text chunks;
`from_image=<png>` reads them, regenerates the image and compares it pixel for pixel.

Reproducibility: an image is a function of (checkpoint, text model, prompt, image seed, truncation
and its centre, noise_mode, batch_size, device). The z of image j comes from its own generator
seeded with `seed + j`; prompts are encoded one at a time; and the generator always runs on batches
of exactly `batch_size` rows (the last one padded), because CPU and GPU kernels pick their summation
order by batch shape: measured here, batches of 1, 3 or 17 differ from one of 40 by up to 2e-5,
enough to flip uint8 pixels. With a fixed shape, a row's result does not depend on its neighbours.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from enum import Enum
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
import torch.nn.functional as F
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from gan_t2i.cli import task
from gan_t2i.config import to_plain
from gan_t2i.networks import Generator
from gan_t2i.text import SentenceEncoder
from gan_t2i.training.checkpoint import code_version, kimg_of, load_checkpoint, load_latest, load_state_strict
from gan_t2i.utils import (
    GanT2IError,
    atomic_path,
    atomic_write_json,
    file_hash,
    resolve_device,
    stable_hash,
    text_hash,
)
from gan_t2i.viz import caption_grid, to_uint8

log = logging.getLogger(__name__)

PROVENANCE_FORMAT = "gan_t2i.sample/1"
CENTERS = ("caption", "global")


# --------------------------------------------------------------------------------------------
# Config


class Mode(str, Enum):
    """What `python -m gan_t2i.sample` draws."""

    grid = "grid"
    interpolate = "interpolate"
    truncation_sweep = "truncation_sweep"
    style_mix = "style_mix"


class NoiseMode(str, Enum):
    """Per-pixel noise: the checkpoint's fixed noise, none, or fresh (not reproducible)."""

    const = "const"
    none = "none"
    random = "random"


@dataclass
class SampleConfig:
    """`conf/sample.yaml`: the sampling app's own keys (not the training config)."""

    run: str | None = None  # run folder: <run>/checkpoints/last.pt, else its newest snapshot
    checkpoint: str | None = None  # or one checkpoint file
    prompts: Any = None  # list of captions (a single string is one caption)
    prompts_file: str | None = None  # or a text file, one caption per line
    n: int = 8  # images per prompt
    seed: int = 0  # image j of a prompt uses seed + j
    truncation: float = 1.0  # psi
    truncation_center: str = "caption"  # caption (per-caption mean w) | global (mapping.w_avg)
    center_samples: int = 256  # z samples behind each per-caption mean w
    truncation_values: list[float] = field(default_factory=lambda: [1.0, 0.8, 0.6, 0.4])
    mode: Mode = Mode.grid
    frames: int = 16  # interpolate: frames per segment between two prompts
    duration: int = 80  # interpolate: milliseconds per GIF frame
    style_mix_cutoff: int | None = None  # style_mix: ws taken from the row source (default half)
    save_individual: bool = False  # grid: also one PNG + JSON sidecar per image
    device: str = "auto"
    noise_mode: NoiseMode = NoiseMode.const
    text_model: str | None = None  # default: the text model the checkpoint was trained with
    batch_size: int = 64  # generator batch (part of what decides the pixels, see the docstring)
    scale: int | None = None  # upscaling of grid tiles (default: readable captions)
    from_image: str | None = None  # regenerate this PNG from its provenance and compare
    out: str = "outputs/samples/${now:%Y-%m-%d_%H-%M-%S}"


def register_sample_config() -> None:
    """Register the schema that `conf/sample.yaml` extends (a typo fails at compose time)."""
    ConfigStore.instance().store(name="sample_schema", node=SampleConfig)


register_sample_config()
MODES = tuple(m.value for m in Mode)
NOISE_MODES = tuple(m.value for m in NoiseMode)


@dataclass
class Request:
    """What to draw: everything besides the model that decides the pixels."""

    prompts: list[str]
    mode: str = "grid"
    n: int = 8
    seed: int = 0
    truncation: float = 1.0
    truncation_center: str = "caption"
    center_samples: int = 256
    truncation_values: list[float] = field(default_factory=lambda: [1.0, 0.8, 0.6, 0.4])
    frames: int = 16
    duration: int = 80
    style_mix_cutoff: int | None = None
    noise_mode: str = "const"
    batch_size: int = 64
    scale: int | None = None
    save_individual: bool = False

    def __post_init__(self) -> None:
        for name, value, choices in (("mode", self.mode, MODES),
                                     ("truncation_center", self.truncation_center, CENTERS),
                                     ("noise_mode", self.noise_mode, NOISE_MODES)):
            if value not in choices:
                raise GanT2IError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        for name in ("n", "frames", "batch_size", "center_samples", "duration"):
            if getattr(self, name) < 1:
                raise GanT2IError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.mode == "truncation_sweep" and not self.truncation_values:
            raise GanT2IError("truncation_sweep needs truncation_values, e.g. [1.0,0.7,0.4]")
        check_prompts(self.prompts)


def check_prompts(prompts: list[str]) -> None:
    """Refuse no prompts and empty (or whitespace) prompts with one clear line."""
    if not prompts:
        raise GanT2IError('no prompts: pass prompts=["a red circle", ...] or prompts_file=<txt>')
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise GanT2IError(f"prompt {i + 1} of {len(prompts)} is empty ({prompt!r})")


def read_prompts(prompts: Any = None, prompts_file: str | Path | None = None) -> list[str]:
    """Prompts from the command line (a list or one string) or a file (one per line)."""
    if prompts is not None and prompts_file is not None:
        raise GanT2IError("pass prompts=[...] or prompts_file=<txt>, not both")
    if prompts_file is not None:
        path = Path(prompts_file)
        if not path.is_file():
            raise GanT2IError(f"prompts_file not found: {path}")
        lines = path.read_text(encoding="utf-8").splitlines()
        prompts = [line.strip() for line in lines if line.strip()]
        if not prompts:
            raise GanT2IError(f"prompts_file {path} has no prompts")
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = [str(p) if p is not None else "" for p in (prompts or [])]
    check_prompts(prompts)
    return prompts


# --------------------------------------------------------------------------------------------
# Loading


@dataclass
class Sampler:
    """A checkpoint's G_ema, the text encoder it was trained with, and where both came from."""

    G: Generator
    encoder: SentenceEncoder
    source: dict[str, Any]  # provenance of the model side (checkpoint, hash, kimg, text model...)

    @property
    def max_tokens(self) -> int | None:
        """Token embeddings per prompt for a cross-attention generator (None: pooled only)."""
        return self.G.max_tokens if isinstance(self.G, TokenConditioned) else None


class TokenConditioned:
    """A cross-attention generator behind the pooled-only interface the drawing code uses.

    Caption rows are packed as `[pooled (D) | token embeddings (T x D) | mask (T)]`, so every
    function that repeats, slices or batches caption rows carries the tokens along unchanged;
    `map` reads the pooled part and `synthesis` unpacks the tokens for the attention layers.
    """

    def __init__(self, G: Generator, max_tokens: int):
        self.G, self.max_tokens = G, max_tokens

    def __getattr__(self, name: str) -> Any:
        return getattr(self.G, name)

    def pack(self, pooled: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[P, D], [P, T, D], [P, T] -> packed rows [P, D + T*D + T]."""
        return torch.cat([pooled, tokens.flatten(1), mask.to(pooled.dtype)], dim=1)

    def unpack(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Packed rows -> (pooled [N, D], tokens [N, T, D], mask [N, T] bool)."""
        d, t = self.G.c_dim, self.max_tokens
        tokens = c[:, d:d + t * d].reshape(c.shape[0], t, d)
        return c[:, :d], tokens, c[:, d + t * d:] > 0.5

    def map(self, z: torch.Tensor, c: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.G.map(z, c[:, :self.G.c_dim], **kwargs)

    def caption_mean_w(self, c: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.G.caption_mean_w(c[:, :self.G.c_dim], **kwargs)

    def synthesis(self, ws: torch.Tensor, c: torch.Tensor, *, noise_mode: str = "random"
                  ) -> torch.Tensor:
        pooled, tokens, mask = self.unpack(c)
        return self.G.synthesis(ws, pooled, noise_mode=noise_mode, tokens=(tokens, mask))

    def lerp_caption(self, a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
        """Pooled embeddings as `lerp_caption`; tokens position by position (the attention
        normalises each token, so a padded zero only fades its partner); masks united."""
        if t in (0.0, 1.0):
            return a if t == 0.0 else b
        (pa, ta, ma), (pb, tb, mb) = self.unpack(a[None]), self.unpack(b[None])
        return self.pack(lerp_caption(pa[0], pb[0], t)[None], torch.lerp(ta, tb, t),
                         ma | mb)[0]


def find_checkpoint(run: str | Path | None, checkpoint: str | Path | None
                    ) -> tuple[dict[str, Any], Path]:
    """Load `checkpoint`, or a run folder's newest readable one (last.pt, then snapshots)."""
    if run is not None and checkpoint is not None:
        raise GanT2IError("pass run=<run folder> or checkpoint=<file>, not both")
    if checkpoint is not None:
        return load_checkpoint(checkpoint, map_location="cpu"), Path(checkpoint)
    if run is None:
        raise GanT2IError("no checkpoint: pass run=<run folder> or checkpoint=<file.pt>")
    run = Path(run)
    if not run.is_dir():
        raise GanT2IError(f"run folder not found: {run}")
    folder = run / "checkpoints" if (run / "checkpoints").is_dir() else run
    found = load_latest(folder, map_location="cpu")
    if found is None:
        raise GanT2IError(f"no readable checkpoint under {folder}")
    return found


def load_generator(*, run: str | Path | None = None, checkpoint: str | Path | None = None,
                   device: str | torch.device = "cpu") -> tuple[Generator, dict[str, Any]]:
    """Build G_ema from a checkpoint's config and load its weights; returns (G, provenance)."""
    state, path = find_checkpoint(run, checkpoint)
    return generator_from_checkpoint(state, path, device=device)


def generator_from_checkpoint(state: Any, path: Path, *, device: str | torch.device = "cpu"
                              ) -> tuple[Generator, dict[str, Any]]:
    """G_ema of an already loaded checkpoint (read from `path`); returns (G, provenance)."""
    from gan_t2i.train import build_generator  # the one place config becomes a Generator

    if not isinstance(state, dict) or "G_ema" not in state or "config" not in state:
        raise GanT2IError(f"{path} is not a gan_t2i training checkpoint (no G_ema or config)")
    cfg, weights = state["config"], state["G_ema"]
    try:
        c_dim = int(weights["text_embed.mean"].shape[0])
        G = build_generator(cfg["generator"], c_dim=c_dim, resolution=cfg["data"]["resolution"])
    except (KeyError, TypeError, ValueError) as e:
        raise GanT2IError(f"cannot build the generator of {path}: {type(e).__name__}: {e}") from None
    load_state_strict(G, weights, "G_ema")
    G = G.eval().requires_grad_(False).to(resolve_device(str(device)),
                                          memory_format=torch.channels_last)
    source = {"checkpoint": str(path.resolve()), "checkpoint_hash": file_hash(path),
              "kimg": kimg_of(state), "code_version": state.get("code_version"),
              "text_model": cfg["text"]["model"], "text_max_length": cfg["text"].get("max_length"),
              "text_max_tokens": cfg["text"].get("max_tokens", 32)}
    return G, source


def load_text_encoder(model: str, *, max_length: int | None = None,
                      device: str | torch.device = "cpu") -> SentenceEncoder:
    """The frozen sentence encoder (one prompt per forward pass, see `encode_prompts`)."""
    return SentenceEncoder(model, device=str(device), batch_size=1, max_length=max_length)


def load_sampler(*, run: str | Path | None = None, checkpoint: str | Path | None = None,
                 text_model: str | None = None, device: str = "auto",
                 encoder: SentenceEncoder | None = None) -> Sampler:
    """G_ema and its text encoder (an already loaded `encoder` is reused)."""
    resolved = resolve_device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise GanT2IError(f"device={device}: CUDA is not available; use device=cpu")
    G, source = load_generator(run=run, checkpoint=checkpoint, device=resolved)
    if any(block.attention is not None for block in G.blocks):
        G = TokenConditioned(G, source["text_max_tokens"])
    model = text_model or source["text_model"]
    if encoder is None:
        encoder = load_text_encoder(model, max_length=source["text_max_length"], device=resolved)
    if encoder.dim != G.c_dim:
        raise GanT2IError(f"text model {model!r} gives {encoder.dim}-d embeddings; this generator "
                          f"was trained on {G.c_dim}-d ones ({source['text_model']!r})")
    source.update(text_model=model, text_identity=stable_hash(encoder.identity),
                  sampler_version=code_version(), torch=torch.__version__,
                  device=device_name(resolved))
    return Sampler(G=G, encoder=encoder, source=source)


def device_name(device: torch.device) -> str:
    """'cpu', or 'cuda (<GPU name>)': pixels may differ between devices."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


# --------------------------------------------------------------------------------------------
# Drawing


def encode_prompts(encoder: SentenceEncoder, prompts: list[str],
                   G: Generator | TokenConditioned | None = None) -> torch.Tensor:
    """Caption rows [P, D], one prompt per forward pass; over-long prompts warn.

    For a cross-attention generator (`TokenConditioned`), rows also pack the prompt's token
    embeddings (as prepare caches them: `max_tokens` per prompt, float16-rounded).
    """
    check_prompts(prompts)
    for prompt, cut in zip(prompts, encoder.count_truncated(prompts)):
        if cut:
            log.warning("prompt longer than the text model's %d tokens is truncated: %.60r...",
                        encoder.max_length, prompt)
    # Training saw the float16 embedding cache; rounding the same way also absorbs float noise.
    def f16(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x).half().float()

    # One at a time: padding to a batch's longest prompt changes the floats of the others.
    if not isinstance(G, TokenConditioned):
        return f16(np.concatenate([encoder.encode([p]) for p in prompts]))
    parts = [encoder.encode_tokens([p], pad_to=G.max_tokens) for p in prompts]
    return G.pack(f16(np.concatenate([q[0] for q in parts])),
                  f16(np.concatenate([q[1] for q in parts])),
                  torch.from_numpy(np.concatenate([q[2] for q in parts])))


def make_z(seeds: list[int], z_dim: int) -> torch.Tensor:
    """z [len(seeds), z_dim]: row i from its own CPU generator seeded with seeds[i]."""
    rows = [torch.randn(z_dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(rows) if rows else torch.zeros(0, z_dim)


def run_fixed_batches(fn: Callable[..., torch.Tensor], *inputs: torch.Tensor, batch_size: int
                      ) -> torch.Tensor:
    """`fn` over batches of exactly `batch_size` rows (the last one padded with its first row).

    Kernels choose their summation order by batch shape; a fixed shape makes every row's result
    independent of the other rows and of how many there are.
    """
    outs = []
    for start in range(0, inputs[0].shape[0], batch_size):
        chunk = [x[start:start + batch_size] for x in inputs]
        real = chunk[0].shape[0]
        if real < batch_size:
            chunk = [torch.cat([x, x[:1].expand(batch_size - real, *x.shape[1:])]) for x in chunk]
        outs.append(fn(*chunk)[:real])
    return torch.cat(outs)


def truncation_centers(G: Generator, c: torch.Tensor, *, center: str, num_samples: int = 256
                       ) -> torch.Tensor:
    """Truncation centre per caption [P, w_dim]: its own mean w, or the global `w_avg`."""
    if center == "global":
        return G.mapping.w_avg.expand(c.shape[0], -1)
    return G.caption_mean_w(c, num_samples=num_samples, seed=0)


def map_w(G: Generator, z: torch.Tensor, c: torch.Tensor, centers: torch.Tensor | None, *,
          psi: float, batch_size: int) -> torch.Tensor:
    """z [N, z_dim], c [N, D] -> w [N, w_dim], truncated toward `centers` [N, w_dim]."""
    if psi == 1.0 or centers is None:
        return run_fixed_batches(lambda z_, c_: G.map(z_, c_), z, c, batch_size=batch_size)
    return run_fixed_batches(lambda z_, c_, m_: G.map(z_, c_, psi=psi, w_center=m_), z, c,
                             centers, batch_size=batch_size)


def synthesize(G: Generator, ws: torch.Tensor, c: torch.Tensor, *, noise_mode: str,
               batch_size: int) -> np.ndarray:
    """ws [N, num_ws, w_dim], c [N, D] -> uint8 images [N, H, W, 3]."""
    def one_batch(ws_: torch.Tensor, c_: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(to_uint8(G.synthesis(ws_, c_, noise_mode=noise_mode)))

    return run_fixed_batches(one_batch, ws, c, batch_size=batch_size).numpy()


def broadcast_ws(G: Generator, w: torch.Tensor) -> torch.Tensor:
    """w [N, w_dim] -> ws [N, num_ws, w_dim] (the same w at every layer)."""
    return w.unsqueeze(1).repeat(1, G.num_ws, 1)


def draw(G: Generator, z: torch.Tensor, c: torch.Tensor, centers: torch.Tensor | None, *,
         psi: float, noise_mode: str, batch_size: int) -> np.ndarray:
    """One image per row of z [N, z_dim] and c [N, D] (centres [N, w_dim]) -> uint8 [N, H, W, 3]."""
    device = G.mapping.w_avg.device
    z, c = z.to(device), c.to(device)
    centers = None if centers is None else centers.to(device)
    w = map_w(G, z, c, centers, psi=psi, batch_size=batch_size)
    return synthesize(G, broadcast_ws(G, w), c, noise_mode=noise_mode, batch_size=batch_size)


@contextlib.contextmanager
def inference() -> Iterator[None]:
    """inference_mode, with cuDNN restricted to deterministic algorithms."""
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        with torch.inference_mode():
            yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def image_seeds(seed: int, n: int) -> list[int]:
    """Seeds of the n images of a prompt: image j uses seed + j."""
    return [seed + j for j in range(n)]


def sample_images(G: Generator, c: torch.Tensor, seeds: list[int], *, psi: float = 1.0,
                  center: str = "caption", noise_mode: str = "const", batch_size: int = 64,
                  center_samples: int = 256) -> np.ndarray:
    """Captions c [P, D] x seeds -> uint8 images [P, n, H, W, 3]."""
    p, n = c.shape[0], len(seeds)
    with inference():
        c = c.to(G.mapping.w_avg.device)
        centers = None
        if psi != 1.0:  # one centre per caption, shared by its n images
            centers = truncation_centers(G, c, center=center, num_samples=center_samples)
            centers = centers.repeat_interleave(n, dim=0)
        z = make_z(seeds, G.z_dim).repeat(p, 1)  # [P * n, z_dim], prompt-major
        images = draw(G, z, c.repeat_interleave(n, dim=0), centers, psi=psi,
                      noise_mode=noise_mode, batch_size=batch_size)
    return images.reshape(p, n, *images.shape[1:])


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between two vectors (exactly a at t=0 and b at t=1)."""
    if t == 0.0:
        return a
    if t == 1.0:
        return b
    cos = torch.dot(a / a.norm(), b / b.norm()).clamp(-1.0, 1.0)
    omega = torch.arccos(cos)
    if float(omega) < 1e-6:
        return torch.lerp(a, b, t)
    so = torch.sin(omega)
    return torch.sin((1.0 - t) * omega) / so * a + torch.sin(t * omega) / so * b


def lerp_caption(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Linear interpolation of two caption embeddings, renormalised to unit norm."""
    if t in (0.0, 1.0):
        return a if t == 0.0 else b
    return F.normalize(torch.lerp(a, b, t), dim=0)


def interpolation_keyframes(prompts: list[str], seed: int) -> tuple[list[str], list[int]]:
    """Keyframes of the walk: the prompts in order (one prompt: twice), keyframe k uses seed + k."""
    keys = prompts if len(prompts) > 1 else prompts * 2
    return keys, image_seeds(seed, len(keys))


def interpolation_frames(G: Generator, c_keys: torch.Tensor, seeds: list[int], *, frames: int,
                         psi: float = 1.0, center: str = "caption", noise_mode: str = "const",
                         batch_size: int = 64, center_samples: int = 256) -> np.ndarray:
    """Walk through keyframes c_keys [K, D]: `frames` per segment plus the last keyframe.

    Captions are interpolated linearly (then renormalised), z by slerp; returns uint8
    [frames * (K - 1) + 1, H, W, 3].
    """
    zk = make_z(seeds, G.z_dim)
    caption_lerp = G.lerp_caption if isinstance(G, TokenConditioned) else lerp_caption
    z_rows, c_rows = [], []
    for k in range(len(seeds) - 1):
        for i in range(frames):
            t = i / frames
            z_rows.append(slerp(zk[k], zk[k + 1], t))
            c_rows.append(caption_lerp(c_keys[k], c_keys[k + 1], t))
    z_rows.append(zk[-1])
    c_rows.append(c_keys[-1])
    with inference():
        c = torch.stack(c_rows).to(G.mapping.w_avg.device)  # [F, D]
        centers = None
        if psi != 1.0:
            centers = truncation_centers(G, c, center=center, num_samples=center_samples)
        return draw(G, torch.stack(z_rows), c, centers, psi=psi, noise_mode=noise_mode,
                    batch_size=batch_size)


def style_mix_images(G: Generator, c: torch.Tensor, row_seeds: list[int], col_seeds: list[int],
                     *, cutoff: int, psi: float = 1.0, center: str = "caption",
                     noise_mode: str = "const", batch_size: int = 64, center_samples: int = 256
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One caption c [1, D]: row sources, column sources and mixes [R, C, H, W, 3].

    A mix takes the coarse styles (ws[:cutoff]) from its row source and the fine ones from its
    column source.
    """
    if not 0 < cutoff < G.num_ws:
        raise GanT2IError(f"style_mix_cutoff must be in 1..{G.num_ws - 1}, got {cutoff}")
    r, k = len(row_seeds), len(col_seeds)
    device = G.mapping.w_avg.device
    with inference():
        c1 = c[:1].to(device)
        z = make_z(row_seeds + col_seeds, G.z_dim).to(device)
        centers = None
        if psi != 1.0:  # both sources share the caption, so one centre
            centers = truncation_centers(G, c1, center=center, num_samples=center_samples)
            centers = centers.expand(r + k, -1)
        w = map_w(G, z, c1.expand(r + k, -1), centers, psi=psi, batch_size=batch_size)
        ws = broadcast_ws(G, w)  # [R + C, num_ws, w_dim]
        mixed = torch.cat([ws[:r, None, :cutoff].expand(r, k, -1, -1),
                           ws[None, r:, cutoff:].expand(r, k, -1, -1)], dim=2)
        all_ws = torch.cat([ws, mixed.reshape(r * k, G.num_ws, -1)])
        images = synthesize(G, all_ws, c1.expand(all_ws.shape[0], -1), noise_mode=noise_mode,
                            batch_size=batch_size)
    return images[:r], images[r:r + k], images[r + k:].reshape(r, k, *images.shape[1:])


# --------------------------------------------------------------------------------------------
# Rendering: requests -> named images with provenance


@dataclass
class Output:
    """One file to write: its name in `out`, the image (or GIF frames), its role's provenance."""

    name: str
    image: Image.Image
    fields: dict[str, Any]
    frames: list[Image.Image] | None = None  # GIF frames, `image` is then the first one


def grid_scale(resolution: int, columns: int) -> int:
    """Integer upscaling so tiles are >= 64 px and the grid >= 320 px wide (readable text)."""
    s = max(1, math.ceil(64 / resolution), math.ceil(320 / (columns * resolution)))
    return min(s, max(1, 256 // resolution))  # tiles no larger than 256 px from upscaling


def slugify(prompt: str, limit: int = 48) -> str:
    """File-name slug of a prompt, with a short hash so different prompts never collide."""
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:limit].rstrip("-")
    return f"{slug or 'prompt'}-{text_hash(prompt, 6)}"


def render_grid(G: Generator, c: torch.Tensor, request: Request) -> list[Output]:
    """One row per prompt, the prompt above its row; optionally every image alone."""
    seeds = image_seeds(request.seed, request.n)
    images = sample_images(G, c, seeds, psi=request.truncation, center=request.truncation_center,
                           noise_mode=request.noise_mode, batch_size=request.batch_size,
                           center_samples=request.center_samples)
    scale = request.scale or grid_scale(G.resolution, request.n)
    grid = caption_grid(list(images), request.prompts, scale=scale)
    outputs = [Output("grid.png", grid, {"role": "grid", "seeds": seeds, "scale": scale})]
    if request.save_individual:
        for p, prompt in enumerate(request.prompts):
            for j, s in enumerate(seeds):
                outputs.append(individual_output(prompt, p, s, images[p, j]))
    return outputs


def individual_output(prompt: str, prompt_index: int, seed: int, image: np.ndarray) -> Output:
    """One image at the generator's resolution, named by its prompt and seed."""
    return Output(f"individual/{slugify(prompt)}-seed{seed}.png", Image.fromarray(image),
                  {"role": "individual", "prompt": prompt, "prompt_index": prompt_index,
                   "image_seed": seed})


def render_interpolation(G: Generator, c: torch.Tensor, request: Request) -> list[Output]:
    """An animated GIF walking through the prompts, and a filmstrip (a row per segment)."""
    keys, seeds = interpolation_keyframes(request.prompts, request.seed)
    c_keys = c if len(request.prompts) > 1 else c.repeat(2, 1)
    frames = interpolation_frames(G, c_keys, seeds, frames=request.frames, psi=request.truncation,
                                  center=request.truncation_center, noise_mode=request.noise_mode,
                                  batch_size=request.batch_size, center_samples=request.center_samples)
    f = request.frames
    rows = [frames[k * f:k * f + f + 1] for k in range(len(keys) - 1)]
    labels = [f"{keys[k]} -> {keys[k + 1]}" for k in range(len(keys) - 1)]
    scale = request.scale or grid_scale(G.resolution, f + 1)
    strip = caption_grid(rows, labels, scale=scale)
    size = (G.resolution * scale, G.resolution * scale)
    gif = [Image.fromarray(x).resize(size, Image.NEAREST) for x in frames]
    role = {"keyframes": keys, "seeds": seeds, "scale": scale}
    return [Output("filmstrip.png", strip, {"role": "filmstrip", **role}),
            Output("interpolation.gif", gif[0], {"role": "animation", **role}, frames=gif)]


def render_truncation_sweep(G: Generator, c: torch.Tensor, request: Request) -> list[Output]:
    """The first prompt: one row per truncation value, n columns (the same seeds in every row)."""
    seeds = image_seeds(request.seed, request.n)
    rows = [sample_images(G, c[:1], seeds, psi=float(psi), center=request.truncation_center,
                          noise_mode=request.noise_mode, batch_size=request.batch_size,
                          center_samples=request.center_samples)[0]
            for psi in request.truncation_values]
    labels = [f"psi {float(v):g}: {request.prompts[0]}" for v in request.truncation_values]
    scale = request.scale or grid_scale(G.resolution, request.n)
    grid = caption_grid(rows, labels, scale=scale)
    return [Output("truncation_sweep.png", grid,
                   {"role": "truncation_sweep", "seeds": seeds, "scale": scale})]


def render_style_mix(G: Generator, c: torch.Tensor, request: Request) -> list[Output]:
    """StyleGAN's figure: first row column sources, first column row sources, mixes inside."""
    cutoff = request.style_mix_cutoff or G.num_ws // 2
    row_seeds = image_seeds(request.seed, request.n)
    col_seeds = image_seeds(request.seed + request.n, request.n)
    rows_src, cols_src, mixed = style_mix_images(
        G, c[:1], row_seeds, col_seeds, cutoff=cutoff, psi=request.truncation,
        center=request.truncation_center, noise_mode=request.noise_mode,
        batch_size=request.batch_size, center_samples=request.center_samples)
    blank = np.full_like(rows_src[:1], 255)
    grid_rows = [np.concatenate([blank, cols_src])]
    grid_rows += [np.concatenate([rows_src[i:i + 1], mixed[i]]) for i in range(len(row_seeds))]
    labels = [f"ws 0-{cutoff - 1} from rows, {cutoff}-{G.num_ws - 1} from columns: "
              f"{request.prompts[0]}"]
    labels += [f"row seed {s}" for s in row_seeds]
    scale = request.scale or grid_scale(G.resolution, request.n + 1)
    grid = caption_grid(grid_rows, labels, scale=scale)
    return [Output("style_mix.png", grid, {"role": "style_mix", "row_seeds": row_seeds,
                                           "col_seeds": col_seeds, "style_mix_cutoff": cutoff,
                                           "scale": scale})]


RENDERERS: dict[str, Callable[[Generator, torch.Tensor, Request], list[Output]]] = {
    "grid": render_grid,
    "interpolate": render_interpolation,
    "truncation_sweep": render_truncation_sweep,
    "style_mix": render_style_mix,
}


def render(sampler: Sampler, request: Request) -> list[Output]:
    """Encode the prompts and draw what `request.mode` asks for."""
    if request.mode in ("truncation_sweep", "style_mix") and len(request.prompts) > 1:
        log.warning("%s uses the first prompt only (%d given)", request.mode, len(request.prompts))
    if request.noise_mode == "random":
        log.warning("noise_mode=random: the images cannot be regenerated exactly")
    prompts = request.prompts[:1] if request.mode in ("truncation_sweep", "style_mix") \
        else request.prompts
    c = encode_prompts(sampler.encoder, prompts, sampler.G)
    return RENDERERS[request.mode](sampler.G, c, request)


# --------------------------------------------------------------------------------------------
# Provenance


def provenance(request: Request, source: dict[str, Any], role_fields: dict[str, Any]
               ) -> dict[str, Any]:
    """Everything needed to regenerate one output file, as plain JSON-able data."""
    req = {k: v for k, v in asdict(request).items() if k != "save_individual"}
    return {"format": PROVENANCE_FORMAT, **req, **source, **role_fields}


def write_png_with_provenance(path: Path, image: Image.Image, record: dict[str, Any]) -> Path:
    """Write a PNG atomically with one text chunk per provenance field (values as JSON)."""
    info = PngInfo()
    info.add_text("Software", f"gan_t2i {record.get('sampler_version', '')}".strip())
    for key, value in record.items():
        info.add_text(key, json.dumps(value, ensure_ascii=False))  # non-Latin-1 -> iTXt
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    return path


def write_gif(path: Path, frames: list[Image.Image], record: dict[str, Any]) -> Path:
    """Write an animated GIF atomically; its comment holds the provenance as JSON."""
    with atomic_path(path) as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:],
                       duration=int(record["duration"]), loop=0,
                       comment=json.dumps(record).encode("utf-8"))
    return path


def read_provenance(path: str | Path) -> dict[str, Any]:
    """The provenance fields of a PNG written by this module."""
    path = Path(path)
    if not path.is_file():
        raise GanT2IError(f"from_image: no such file: {path}")
    try:
        with Image.open(path) as im:
            text = dict(getattr(im, "text", {}) or {})
    except OSError as e:
        raise GanT2IError(f"from_image: cannot read {path}: {e}") from None
    if "format" not in text:
        hint = " (a GIF keeps it as a comment: use the filmstrip PNG)" if path.suffix == ".gif" \
            else " (was it written by gan_t2i.sample?)"
        raise GanT2IError(f"{path} carries no gan_t2i provenance{hint}")
    record = {}
    for key, value in text.items():
        if key == "Software":
            continue
        try:
            record[key] = json.loads(value)
        except json.JSONDecodeError:
            record[key] = value
    if record.get("format") != PROVENANCE_FORMAT:
        raise GanT2IError(f"{path}: unknown provenance format {record.get('format')!r}")
    return record


def write_outputs(outputs: list[Output], request: Request, source: dict[str, Any], out: Path
                  ) -> list[Path]:
    """Write every output (PNG + JSON sidecar for individual images, GIF) under `out`."""
    paths = []
    for o in outputs:
        record = provenance(request, source, o.fields)
        path = out / o.name
        if o.frames is not None:
            paths.append(write_gif(path, o.frames, record))
            continue
        paths.append(write_png_with_provenance(path, o.image, record))
        if o.fields["role"] == "individual":
            atomic_write_json(path.with_suffix(".json"), record)
    return paths


def sample(sampler: Sampler, request: Request, out: str | Path) -> list[Path]:
    """Draw `request` with `sampler` and write the files under `out`; returns their paths."""
    return write_outputs(render(sampler, request), request, sampler.source, Path(out))


# --------------------------------------------------------------------------------------------
# from_image: regenerate and compare


@dataclass
class Reproduction:
    """Result of `from_image`: the regenerated file and what (if anything) no longer matches."""

    path: Path
    identical: bool
    notes: list[str]

    def summary(self) -> str:
        """Lines to print: the path, then 'identical' or what differs."""
        lines = [str(self.path)]
        if self.identical:
            extra = f" ({'; '.join(self.notes)})" if self.notes else ""
            lines.append(f"identical{extra}")
        else:
            lines.extend(self.notes)
        return "\n".join(lines)


def request_from_provenance(record: dict[str, Any]) -> Request:
    """The request that produced a file, from its provenance."""
    names = {f.name for f in fields(Request)}
    return Request(**{k: v for k, v in record.items() if k in names})


def regenerate_output(sampler: Sampler, request: Request, record: dict[str, Any]) -> Output:
    """Draw again the one output a provenance record describes."""
    role = record.get("role")
    if role == "individual":
        c = encode_prompts(sampler.encoder, [record["prompt"]], sampler.G)
        image = sample_images(sampler.G, c, [record["image_seed"]], psi=request.truncation,
                              center=request.truncation_center, noise_mode=request.noise_mode,
                              batch_size=request.batch_size,
                              center_samples=request.center_samples)[0, 0]
        return individual_output(record["prompt"], record["prompt_index"], record["image_seed"],
                                 image)
    found = [o for o in render(sampler, replace(request, save_individual=False))
             if o.fields["role"] == role]
    if not found:
        raise GanT2IError(f"from_image: cannot regenerate an image of role {role!r}")
    return found[0]


def compare_source(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between the model side then and now (checkpoint hash, versions, device)."""
    labels = {"checkpoint_hash": "checkpoint hash", "text_identity": "text model",
              "sampler_version": "sampler code version", "torch": "torch version",
              "device": "device"}
    return [f"{label} differs: saved {saved.get(key)}, now {now.get(key)}"
            for key, label in labels.items() if saved.get(key) != now.get(key)]


def compare_pixels(saved: np.ndarray, new: np.ndarray) -> str | None:
    """None when equal, else one line of difference statistics."""
    if saved.shape != new.shape:
        return (f"image size differs: saved {saved.shape[1]}x{saved.shape[0]}, "
                f"now {new.shape[1]}x{new.shape[0]}")
    diff = np.abs(saved.astype(np.int16) - new.astype(np.int16))
    count = int(np.count_nonzero(diff))
    if count == 0:
        return None
    return (f"pixels differ: {count} of {diff.size} values ({100 * count / diff.size:.2f}%), "
            f"max |diff| {int(diff.max())}, mean |diff| {float(diff.mean()):.3f}")


def load_rgb(path: Path) -> np.ndarray:
    """A PNG's pixels as uint8 [H, W, 3]."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def reproduce(png: str | Path, out: str | Path, *, checkpoint: str | Path | None = None,
              run: str | Path | None = None, device: str = "auto",
              encoder: SentenceEncoder | None = None) -> Reproduction:
    """Regenerate a PNG written by this module from its provenance, write it, compare pixels.

    `checkpoint` / `run` point at another copy of the checkpoint (default: the recorded path).
    """
    png = Path(png)
    record = read_provenance(png)
    if checkpoint is None and run is None:
        checkpoint = record["checkpoint"]
        if not Path(checkpoint).is_file():
            raise GanT2IError(f"the checkpoint this image was drawn from is gone: {checkpoint} "
                              f"(hash {record.get('checkpoint_hash')}); pass checkpoint=<a copy>")
    request = request_from_provenance(record)
    sampler = load_sampler(run=run, checkpoint=checkpoint, text_model=record.get("text_model"),
                           device=device, encoder=encoder)
    output = regenerate_output(sampler, request, record)
    path = Path(out) / png.name
    if path.resolve() == png.resolve():
        raise GanT2IError(f"out={out} would overwrite the image itself; choose another out")
    write_png_with_provenance(path, output.image, provenance(request, sampler.source, output.fields))
    notes = compare_source(record, sampler.source)
    pixels = compare_pixels(load_rgb(png), load_rgb(path))
    if pixels is not None:
        notes.append(pixels)
    return Reproduction(path=path, identical=pixels is None, notes=notes)


# --------------------------------------------------------------------------------------------
# Entry point


def request_from_config(cfg: dict[str, Any]) -> Request:
    """A validated Request from the plain sample config."""
    prompts = read_prompts(cfg["prompts"], cfg["prompts_file"])
    return Request(prompts=prompts, mode=cfg["mode"], n=cfg["n"], seed=cfg["seed"],
                   truncation=float(cfg["truncation"]), truncation_center=cfg["truncation_center"],
                   center_samples=cfg["center_samples"],
                   truncation_values=[float(v) for v in cfg["truncation_values"]],
                   frames=cfg["frames"], duration=cfg["duration"],
                   style_mix_cutoff=cfg["style_mix_cutoff"], noise_mode=cfg["noise_mode"],
                   batch_size=cfg["batch_size"], scale=cfg["scale"],
                   save_individual=cfg["save_individual"])


@hydra.main(version_base="1.3", config_path="../conf", config_name="sample")
@task
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    c = to_plain(cfg)
    if c["from_image"]:
        result = reproduce(c["from_image"], c["out"], checkpoint=c["checkpoint"], run=c["run"],
                           device=c["device"])
        print(result.summary())
        return
    request = request_from_config(c)  # bad prompts fail before anything loads
    sampler = load_sampler(run=c["run"], checkpoint=c["checkpoint"], text_model=c["text_model"],
                           device=c["device"])
    for path in sample(sampler, request, c["out"]):
        print(path)


if __name__ == "__main__":
    main()
