"""Sample grids as PNG (written atomically)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from edgediff.utils.atomic import atomic_file


def to_grid(images: torch.Tensor, ncol: int | None = None, scale: int = 2, pad: int = 1) -> np.ndarray:
    """Tile `(N, C, H, W)` images in [-1, 1] into one uint8 array (H', W') or (H', W', 3)."""
    n, c, h, w = images.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    arr = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    grid = np.zeros((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), dtype=np.uint8)
    for k in range(n):
        r, q = divmod(k, ncol)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        grid[y : y + h, x : x + w] = arr[k].transpose(1, 2, 0)
    grid = grid.repeat(scale, 0).repeat(scale, 1)
    return grid[..., 0] if c == 1 else grid


def save_grid(images: torch.Tensor, out: Path, ncol: int | None = None) -> Path:
    with atomic_file(Path(out)) as tmp:
        Image.fromarray(to_grid(images, ncol)).save(tmp, format="PNG")
    return Path(out)
