"""Pictures: captioned sample grids."""

from __future__ import annotations

import textwrap

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images in [-1, 1], [N, 3, H, W] -> uint8 [N, H, W, 3]."""
    x = (images.detach().float().clamp(-1, 1) + 1) * 127.5
    return x.round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def caption_grid(rows: list[np.ndarray], captions: list[str], *, scale: int = 1, pad: int = 2,
                 font_size: int = 12) -> Image.Image:
    """One row of images per caption, the caption printed above its row.

    Args:
        rows: per caption, uint8 images [n, H, W, 3] (same n, H, W for every row).
        captions: one text per row.
        scale: nearest-neighbour upscaling so small images stay readable.
    """
    n, h, w, _ = rows[0].shape
    h, w = h * scale, w * scale
    width = n * w + (n + 1) * pad
    font = _font(font_size)
    chars = max(8, int(width / (font_size * 0.55)))
    texts = [textwrap.wrap(c, chars)[:2] or [""] for c in captions]
    line_h = font_size + 3
    height = sum(len(t) * line_h + h + 2 * pad for t in texts) + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    y = pad
    for images, lines in zip(rows, texts):
        for line in lines:
            draw.text((pad, y), line, fill=(0, 0, 0), font=font)
            y += line_h
        y += pad
        for i, image in enumerate(images):
            tile = Image.fromarray(image)
            if scale != 1:
                tile = tile.resize((w, h), Image.NEAREST)
            canvas.paste(tile, (pad + i * (w + pad), y))
        y += h + pad
    return canvas
