"""Images and masks of `edgediff-run customize`, numpy only (Pillow for PNG files, imported lazily).

The same rules as the PyTorch command (edgediff/customize/images.py, masks.py): images are PNG
(values [0, 255] -> [-1, 1], bicubic-resized to the sample size when they differ) or `.npy`
(C, H, W) as they are; masks are PNG (pixels > 127) or `.npy` (nonzero), of their image's size,
not empty, then resized to the sample grid: "any pixel under the cell" (adaptive max pooling)
when shrinking, nearest when enlarging.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from edgediff_runtime.errors import RuntimeStageError

log = logging.getLogger(__name__)


def _pil(what: str):
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise RuntimeStageError(
            f"reading {what} as an image needs Pillow; pip install pillow, or pass a .npy array"
        ) from None
    return Image, UnidentifiedImageError


def read_image(path: Path, shape: tuple[int, ...], what: str) -> tuple[np.ndarray, tuple[int, int]]:
    """The image as float32 (C, H, W) of the sample `shape`, and its size as read (H, W)."""
    path = Path(path)
    if not path.is_file():
        raise RuntimeStageError(f"{what} not found: {path}")
    c, h, w = shape
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise RuntimeStageError(f"{what} {path} is not a readable .npy array ({exc})") from None
        if arr.shape != tuple(shape):
            raise RuntimeStageError(f"{what} {path} has shape {arr.shape}; the model samples {tuple(shape)}")
        return arr.astype(np.float32), (h, w)
    if c not in (1, 3):
        raise RuntimeStageError(f"the model samples {c}-channel latents; give {what} as a .npy array {shape}")
    image_cls, unidentified = _pil(what)
    try:
        with image_cls.open(path) as im:
            im = im.convert("L" if c == 1 else "RGB")
            size = (im.height, im.width)
            if size != (h, w):
                log.info("%s %s is %dx%d; resized to %dx%d", what, path, *size, h, w)
                im = im.resize((w, h), image_cls.BICUBIC)
            arr = np.asarray(im, dtype=np.float32)
    except (OSError, unidentified) as exc:
        raise RuntimeStageError(f"{what} {path} is not an image ({exc})") from None
    arr = arr[None] if c == 1 else arr.transpose(2, 0, 1)
    return (arr / np.float32(127.5) - np.float32(1.0)).astype(np.float32), size


def read_mask(path: Path, image_hw: tuple[int, int], sample_hw: tuple[int, int], what: str) -> np.ndarray:
    """A mask file for an image read at `image_hw`: checked, resized to the sample grid, bool (H, W)."""
    path = Path(path)
    if not path.is_file():
        raise RuntimeStageError(f"{what} not found: {path}")
    if path.suffix.lower() == ".npy":
        try:
            mask = np.load(path, allow_pickle=False) != 0
        except (OSError, ValueError) as exc:
            raise RuntimeStageError(f"{what} {path} is not a readable .npy array ({exc})") from None
    else:
        image_cls, unidentified = _pil(what)
        try:
            with image_cls.open(path) as im:
                mask = np.asarray(im.convert("L")) > 127
        except (OSError, unidentified) as exc:
            raise RuntimeStageError(f"{what} {path} is not an image or .npy mask ({exc})") from None
    if mask.ndim != 2:
        raise RuntimeStageError(f"{what} must be 2-D (H, W), got shape {mask.shape}")
    if tuple(mask.shape) != tuple(image_hw):
        raise RuntimeStageError(
            f"{what} is {mask.shape[0]}x{mask.shape[1]} but its image is {image_hw[0]}x{image_hw[1]}; "
            "give a mask of the image's size"
        )
    if not mask.any():
        raise RuntimeStageError(f"{what} is empty (no pixel set); mark the region with nonzero pixels")
    return resize_mask(mask, sample_hw)


def resize_mask(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Bool (H, W) -> `hw`: adaptive max pooling when shrinking (cell i covers rows
    floor(i H / h) .. ceil((i + 1) H / h) - 1), nearest (row floor(i H / h)) when enlarging."""
    mask = np.asarray(mask, dtype=bool)
    (H, W), (h, w) = mask.shape, hw
    if (H, W) == (h, w):
        return mask.copy()
    if h <= H and w <= W:
        out = np.zeros((h, w), dtype=bool)
        for i in range(h):
            r0, r1 = (i * H) // h, math.ceil((i + 1) * H / h)
            for j in range(w):
                c0, c1 = (j * W) // w, math.ceil((j + 1) * W / w)
                out[i, j] = mask[r0:r1, c0:c1].any()
        return out
    rows = (np.arange(h) * H) // h
    cols = (np.arange(w) * W) // w
    return mask[rows][:, cols]


def write_image(image: np.ndarray, out: Path) -> Path:
    """Write a (C, H, W) sample at its own size, atomically: `.npy` as is, else a PNG of a 1- or
    3-channel image in [-1, 1]."""
    from edgediff_runtime._atomic import atomic_path, write_bytes
    from edgediff_runtime.imaging import encode_png, to_uint8

    out = Path(out)
    if out.suffix.lower() == ".npy":
        with atomic_path(out) as tmp, tmp.open("wb") as fh:
            np.save(fh, np.asarray(image, dtype=np.float32))
        return out
    if image.shape[0] not in (1, 3):
        raise RuntimeStageError(f"a {image.shape[0]}-channel sample cannot be a PNG; use --out OUT.npy")
    write_bytes(out, encode_png(to_uint8(image[None])[0]))
    return out
