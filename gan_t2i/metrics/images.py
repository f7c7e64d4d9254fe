"""The two image formats metrics accept, and conversions between them.

* uint8 ``[N, H, W, 3]`` (NumPy or torch): what the image store holds and `viz.to_uint8` returns.
* floating ``[N, 3, H, W]`` in [-1, 1]: what the generator returns.

The dtype decides which layout is meant, so a batch is never guessed from its shape alone.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from gan_t2i.utils import GanT2IError
from gan_t2i.viz import to_uint8

Images = np.ndarray | torch.Tensor


def is_uint8(images: Images) -> bool:
    """True for a uint8 batch (NumPy or torch)."""
    if isinstance(images, torch.Tensor):
        return images.dtype == torch.uint8
    return np.asarray(images).dtype == np.uint8


def _check_uint8(images: Images) -> None:
    if images.ndim != 4 or images.shape[-1] != 3:
        raise GanT2IError(f"uint8 images must be [N, H, W, 3], got shape {tuple(images.shape)}")


def _check_float(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise GanT2IError(f"float images must be [N, 3, H, W] in [-1, 1], got {tuple(images.shape)}")


def to_float_images(images: Images, device: torch.device | str = "cpu") -> torch.Tensor:
    """Either format -> float32 [N, 3, H, W] in [-1, 1] on `device`."""
    if is_uint8(images):
        _check_uint8(images)
        # np.array copies: store images are read-only memory maps, which torch will not wrap.
        x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.array(images))
        x = x.to(device).permute(0, 3, 1, 2).float()  # [N, 3, H, W]
        return x / 127.5 - 1.0
    x = torch.as_tensor(images)
    if not x.is_floating_point():
        raise GanT2IError(f"images must be uint8 or floating point, got {x.dtype}")
    _check_float(x)
    return x.detach().to(device=device, dtype=torch.float32)


def to_uint8_images(images: Images) -> np.ndarray:
    """Either format -> uint8 NumPy [N, H, W, 3] (float images are rounded as a PNG would be)."""
    if is_uint8(images):
        _check_uint8(images)
        return images.cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    x = torch.as_tensor(images)
    _check_float(x)
    return to_uint8(x)


def batches(images: Images, batch_size: int) -> Iterator[Images]:
    """Consecutive slices of at most `batch_size` images (memory-mapped arrays stay lazy)."""
    for start in range(0, len(images), batch_size):
        yield images[start:start + batch_size]


def resize_square(x: torch.Tensor, side: int) -> torch.Tensor:
    """Resize [N, C, H, W] to side x side: area averaging down, bilinear up."""
    if x.shape[-2:] == (side, side):
        return x
    if x.shape[-1] > side:
        return F.interpolate(x, size=(side, side), mode="area")
    return F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
