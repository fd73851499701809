"""Images in and out of the model's sample space.

PNG (or any PIL image) for 1- or 3-channel models, values [0, 255] -> [-1, 1], resized (bicubic)
to the sample size when it differs; `.npy` arrays (C, H, W) are taken as they are (latent models:
encode with the model's VAE first). Masks are checked against their image's own size, then
resized to the sample grid.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from edgediff.customize.errors import CustomizeError
from edgediff.customize.masks import check_mask, read_mask, resize_mask
from edgediff.utils.atomic import atomic_file

log = logging.getLogger(__name__)


def read_image(path: Path, shape: tuple[int, int, int], what: str) -> tuple[Tensor, tuple[int, int]]:
    """The image as a (C, H, W) tensor of the sample `shape`, and its size as read (H, W)."""
    path = Path(path)
    if not path.is_file():
        raise CustomizeError(f"{what} not found: {path}")
    c, h, w = shape
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path)
        except (OSError, ValueError) as exc:
            raise CustomizeError(f"{what} {path} is not a readable .npy array ({exc})") from exc
        if arr.shape != tuple(shape):
            raise CustomizeError(f"{what} {path} has shape {arr.shape}; the model samples {tuple(shape)}")
        return torch.from_numpy(np.asarray(arr, dtype=np.float32)), (h, w)
    if c not in (1, 3):
        raise CustomizeError(f"the model samples {c}-channel latents; give {what} as a .npy array {shape}")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("L" if c == 1 else "RGB")
            size = (im.height, im.width)
            if size != (h, w):
                log.info("%s %s is %dx%d; resized to %dx%d", what, path, *size, h, w)
                im = im.resize((w, h), Image.BICUBIC)
            arr = np.asarray(im, dtype=np.float32)
    except (OSError, UnidentifiedImageError) as exc:
        raise CustomizeError(f"{what} {path} is not an image ({exc})") from exc
    arr = arr[None] if c == 1 else arr.transpose(2, 0, 1)
    return torch.from_numpy(arr / 127.5 - 1.0), size


def read_image_mask(path: Path, image_hw: tuple[int, int], sample_hw: tuple[int, int], what: str) -> Tensor:
    """A mask file for an image read at `image_hw`, checked, resized to the sample grid."""
    mask = check_mask(read_mask(path, what), image_hw, what)
    return resize_mask(mask, sample_hw)


def write_image(image: Tensor, out: Path) -> Path:
    """Write a (C, H, W) sample: `.npy` as is, else a PNG of a 1- or 3-channel image in [-1, 1]."""
    out = Path(out)
    if out.suffix.lower() == ".npy":
        with atomic_file(out) as tmp, open(tmp, "wb") as f:
            np.save(f, image.numpy())
        return out
    if image.shape[0] not in (1, 3):
        raise CustomizeError(f"a {image.shape[0]}-channel sample cannot be a PNG; use --out OUT.npy")
    from PIL import Image

    arr = ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    arr = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
    with atomic_file(out) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
    return out
