"""Sample grids as PNG (written atomically)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from edgediff.utils.atomic import atomic_file

MIN_TILE_PX = 64  # a 16x16 digit is shown at least 4x
MIN_GRID_PX = 512


def readable_scale(tile_width: int, grid_width: int) -> int:
    """Nearest-neighbour repeat factor that shows a tile >= 64 px and the grid >= 512 px wide."""
    return max(1, math.ceil(MIN_TILE_PX / max(tile_width, 1)), math.ceil(MIN_GRID_PX / max(grid_width, 1)))


def to_grid(
    images: torch.Tensor, ncol: int | None = None, scale: int | None = None, pad: int = 1
) -> np.ndarray:
    """Tile `(N, C, H, W)` images in [-1, 1] into one uint8 array (H', W') or (H', W', 3).

    `scale` repeats pixels (nearest); `None` picks `readable_scale`.
    """
    n, c, h, w = images.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    arr = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    grid = np.zeros((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), dtype=np.uint8)
    for k in range(n):
        r, q = divmod(k, ncol)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        grid[y : y + h, x : x + w] = arr[k].transpose(1, 2, 0)
    if scale is None:
        scale = readable_scale(w, grid.shape[1])
    grid = grid.repeat(scale, 0).repeat(scale, 1)
    return grid[..., 0] if c == 1 else grid


def save_grid(images: torch.Tensor, out: Path, ncol: int | None = None) -> Path:
    with atomic_file(Path(out)) as tmp:
        Image.fromarray(to_grid(images, ncol)).save(tmp, format="PNG")
    return Path(out)
