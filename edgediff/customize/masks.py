"""Masks: loading and checking, resizing to attention token grids, and subject localization.

`M_S` marks the subject in the subject image, `M_C` the editable region of the condition/target
image (1 = filled with the subject); both are boolean `(H, W)` on the model's sample grid.
A localizer turns cross-attention maps into a mask (the paper's Subject Localization Module is a
detector + segmenter; `CrossAttentionLocalizer` is the built-in, detector-free one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from edgediff.customize.errors import CustomizeError


def read_mask(path: Path, what: str) -> Tensor:
    """A mask file (PNG: pixels > 127 are in the mask; .npy: nonzero) as a bool (H, W) tensor."""
    path = Path(path)
    if not path.is_file():
        raise CustomizeError(f"{what} not found: {path}")
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path)
        except (OSError, ValueError) as exc:
            raise CustomizeError(f"{what} {path} is not a readable .npy array ({exc})") from exc
        if arr.ndim != 2:
            raise CustomizeError(f"{what} {path} must be a 2-D (H, W) array, got shape {arr.shape}")
        return torch.from_numpy(np.asarray(arr) != 0)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L"))
    except (OSError, UnidentifiedImageError) as exc:
        raise CustomizeError(f"{what} {path} is not an image or .npy mask ({exc})") from exc
    return torch.from_numpy(arr > 127)


def check_mask(mask: Tensor, image_hw: tuple[int, int], what: str) -> Tensor:
    """A bool (H, W) mask of the image's size and not empty (one-line errors otherwise)."""
    if mask.ndim != 2:
        raise CustomizeError(f"{what} must be 2-D (H, W), got shape {tuple(mask.shape)}")
    if tuple(mask.shape) != tuple(image_hw):
        raise CustomizeError(
            f"{what} is {mask.shape[0]}x{mask.shape[1]} but its image is {image_hw[0]}x{image_hw[1]}; "
            "give a mask of the image's size"
        )
    mask = mask.bool()
    if not mask.any():
        raise CustomizeError(f"{what} is empty (no pixel set); mark the subject region with nonzero pixels")
    return mask


def resize_mask(mask: Tensor, hw: tuple[int, int]) -> Tensor:
    """Resize a bool (H, W) mask to `hw`: nearest when enlarging, "any pixel under the cell" (max
    pooling) when shrinking, so a small region never vanishes on a coarse grid."""
    h, w = hw
    if tuple(mask.shape) == (h, w):
        return mask.bool()
    m = mask.float()[None, None]
    if h <= mask.shape[0] and w <= mask.shape[1]:
        out = F.adaptive_max_pool2d(m, (h, w))
    else:
        out = F.interpolate(m, size=(h, w), mode="nearest")
    return out[0, 0] > 0.5


def token_grid(image_hw: tuple[int, int], n_tokens: int) -> tuple[int, int]:
    """The (h, w) grid of `n_tokens` attention tokens of an image of size `image_hw` (same aspect)."""
    H, W = image_hw
    scale = math.sqrt(H * W / n_tokens)
    h, w = round(H / scale), round(W / scale)
    if h * w != n_tokens:
        raise CustomizeError(f"{n_tokens} attention tokens do not form a grid of a {H}x{W} image")
    return h, w


def mask_to_tokens(mask: Tensor, n_tokens: int) -> Tensor:
    """A bool (H, W) mask resized to a layer's token grid and flattened row-major to (n_tokens,)."""
    return resize_mask(mask, token_grid(tuple(mask.shape), n_tokens)).reshape(-1)


def dilate(mask: Tensor, size: int = 3) -> Tensor:
    """Binary dilation with a `size` x `size` square."""
    m = F.max_pool2d(mask.float()[None, None], size, stride=1, padding=size // 2)
    return m[0, 0] > 0.5


class Localizer(Protocol):
    """Subject localization: cross-attention maps (tokens, H, W) and the image (C, H, W) it was
    drawn on -> a bool (H, W) mask. A detector + segmenter (Grounding-DINO + SAM in the paper)
    plugs in here by segmenting the image and ignoring the maps."""

    def __call__(self, maps: Tensor, image: Tensor | None = None) -> Tensor: ...


@dataclass(frozen=True)
class CrossAttentionLocalizer:
    """The mask of condition token `token`: its cross-attention map min-max normalised, the top
    `top` fraction of pixels set, then dilated with a `dilation` x `dilation` square."""

    token: int = 0
    top: float = 0.3
    dilation: int = 3

    def __call__(self, maps: Tensor, image: Tensor | None = None) -> Tensor:
        if not 0 <= self.token < maps.shape[0]:
            raise CustomizeError(
                f"--token {self.token} is out of range: the conditioning has {maps.shape[0]} tokens"
            )
        m = maps[self.token].float()
        m = (m - m.min()) / (m.max() - m.min()).clamp_min(1e-12)
        k = max(1, round(self.top * m.numel()))
        threshold = m.reshape(-1).topk(k).values[-1]
        return dilate(m >= threshold, self.dilation)
