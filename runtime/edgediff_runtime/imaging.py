"""Image output without heavy dependencies: a pure-zlib PNG encoder, sample grids and the parity curve.

The grid writer needs numpy only (works on a bare device). The parity plot is drawn with
``PIL.ImageDraw`` when Pillow is importable (no matplotlib).
"""

from __future__ import annotations

import io
import math
import os
import struct
import zlib

import numpy as np

from edgediff_runtime._atomic import write_bytes
from edgediff_runtime.errors import RuntimeStageError


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes for a uint8 image [H, W] (grey) or [H, W, 3] (RGB) (PNG spec, filter type 0)."""
    if image.dtype != np.uint8:
        raise ValueError("encode_png needs uint8")
    if image.ndim == 2:
        color, channels = 0, 1
    elif image.ndim == 3 and image.shape[2] == 3:
        color, channels = 2, 3
    else:
        raise ValueError(f"encode_png needs [H, W] or [H, W, 3], got {image.shape}")
    h, w = image.shape[:2]
    rows = np.ascontiguousarray(image).reshape(h, w * channels)
    raw = b"".join(b"\x00" + rows[y].tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + tag + data + crc

    header = struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] float images [N, C, H, W] to uint8 [N, H, W] (C = 1) or [N, H, W, 3] (C = 3).

    Other channel counts show channel 0.
    """
    x = np.clip((np.asarray(images, dtype=np.float32) + 1.0) * 127.5, 0, 255).round().astype(np.uint8)
    if x.shape[1] == 3:
        return x.transpose(0, 2, 3, 1)
    return x[:, 0]


def make_grid(images: np.ndarray, ncol: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile uint8 images [N, H, W(, 3)] into one image with ``pad`` pixels of black between tiles."""
    n = images.shape[0]
    ncol = ncol or max(1, math.ceil(math.sqrt(n)))
    nrow = math.ceil(n / ncol)
    h, w = images.shape[1:3]
    shape = (nrow * (h + pad) + pad, ncol * (w + pad) + pad, *images.shape[3:])
    grid = np.zeros(shape, dtype=np.uint8)
    for k in range(n):
        r, c = divmod(k, ncol)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[y : y + h, x : x + w] = images[k]
    return grid


MIN_TILE_PX = 64  # a 16x16 digit is shown at least 4x
MIN_GRID_PX = 512


def readable_scale(tile_width: int, grid_width: int) -> int:
    """Nearest-neighbour repeat factor that shows a tile >= 64 px and the grid >= 512 px wide."""
    return max(1, math.ceil(MIN_TILE_PX / max(tile_width, 1)), math.ceil(MIN_GRID_PX / max(grid_width, 1)))


def save_grid(
    path: str | os.PathLike[str], images: np.ndarray, scale: int | None = None, pad: int = 1
) -> int:
    """Write [-1, 1] images [N, C, H, W] as one PNG grid, atomically; returns the pixel repeat used.

    ``scale`` repeats pixels; ``None`` picks :func:`readable_scale` (small images upscaled);
    ``pad``: black pixels between tiles (0 writes a single image as it is).
    """
    grid = make_grid(to_uint8(images), pad=pad)
    if scale is None:
        scale = readable_scale(images.shape[-1], grid.shape[1])
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    write_bytes(path, encode_png(grid))
    return scale


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (1, 2 or 5 x 10^k apart) covering [lo, hi]."""
    span = hi - lo
    raw = span / max(count - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    v = first
    while v <= hi + 1e-9 * step:
        ticks.append(round(v, 12))
        v += step
    return ticks


def save_gif(path: str | os.PathLike[str], video: np.ndarray, scale: int = 1, fps: int = 8) -> None:
    """Write one [-1, 1] video [C, F, H, W] as an animated GIF (Pillow), atomically."""
    try:
        from PIL import Image
    except ImportError:
        raise RuntimeStageError("video output needs Pillow; pip install pillow, or use --save-npy") from None
    frames = to_uint8(np.moveaxis(np.asarray(video), 1, 0))  # [F, H, W(, 3)]
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    images = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=1000 // fps, loop=0)
    write_bytes(path, buf.getvalue())


def video_paths(out: str | os.PathLike[str], n: int) -> list[str]:
    """One GIF per sample: ``out`` itself for one sample, ``<stem>_<i>.gif`` beside it otherwise."""
    out = os.fspath(out)
    if n == 1:
        return [out]
    stem = out[: -len(".gif")] if out.lower().endswith(".gif") else out
    return [f"{stem}_{i}.gif" for i in range(n)]


def plot_parity(path: str | os.PathLike[str], report: dict) -> None:
    """Per-step curve of a parity report (docs/design.md section 4): PSNR (dB) and log10 max abs error."""
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        raise RuntimeStageError("--plot needs Pillow; pip install pillow or drop --plot") from None
    per_step = report["level2"]["per_step"]
    tol = report["tolerances"]
    width, height = 760, 560
    left, right = 70, width - 30  # room for y tick labels on the left, a margin on the right
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    steps = [p["step"] for p in per_step]
    cap = 160.0  # identical latents have infinite PSNR: drawn at the cap
    psnr = [cap if p["psnr"] is None else min(p["psnr"], cap) for p in per_step]
    err = [math.log10(max(p["max_abs"], 1e-12)) for p in per_step]
    half = (height - 40) // 2
    panels = [
        ("PSNR per step (dB), higher is better", psnr, tol.get("latent_psnr_min"), (30, 90, 200), 40, half),
        (
            "log10 max |runtime - pytorch| per step, lower is better",
            err,
            math.log10(tol["latent_max_abs"]) if tol.get("latent_max_abs") else None,
            (200, 60, 30),
            half + 50,
            height - 50,
        ),
    ]
    s_max = max(steps) if steps else 1
    for title, values, limit, color, top, bottom in panels:
        lo = min(values + ([limit] if limit is not None else []))
        hi = max(values + ([limit] if limit is not None else []))
        if hi - lo < 1e-9:
            lo, hi = lo - 1, hi + 1
        pad = 0.08 * (hi - lo)  # the curve and the tolerance line sit inside the frame, not on it
        lo, hi = lo - pad, hi + pad

        def xy(s, v, lo=lo, hi=hi, top=top, bottom=bottom) -> tuple[float, float]:
            x = left + 10 + (right - left - 20) * (s / s_max if s_max else 0.5)
            y = bottom - (bottom - top) * (v - lo) / (hi - lo)
            return x, y

        draw.rectangle([left, top, right, bottom], outline="black")
        draw.text((left, top - 16), title, fill="black")
        for tick in _nice_ticks(lo, hi):
            y = xy(0, tick)[1]
            draw.line([left - 5, y, left, y], fill="black")
            draw.line([left + 1, y, right - 1, y], fill=(235, 235, 235))
            draw.text((8, y - 6), f"{tick:.4g}", fill="black")
        for tick in _nice_ticks(0, s_max, count=min(s_max + 1, 11)) if s_max else [0]:
            x = xy(tick, lo)[0]
            draw.line([x, bottom, x, bottom + 5], fill="black")
            draw.text((x - 4, bottom + 7), f"{tick:g}", fill="black")
        if limit is not None:
            y = xy(0, limit)[1]
            for x0 in range(left + 2, right - 2, 12):  # dashed
                draw.line([x0, y, min(x0 + 6, right - 2), y], fill=(110, 110, 110), width=1)
            draw.text((right - 130, y - 14), f"tolerance {limit:.3g}", fill=(90, 90, 90))
        points = [xy(s, v) for s, v in zip(steps, values)]
        if len(points) > 1:
            draw.line(points, fill=color, width=2)
        for px, py in points:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)
    verdict = "PASS" if report["passed"] else "FAIL"
    footer = f"{report['bundle']}: {verdict}   x axis: sampler step (0 = noisiest)"
    draw.text((left, height - 20), footer, fill="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    write_bytes(path, buf.getvalue())
