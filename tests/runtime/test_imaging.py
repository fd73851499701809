"""Readable image outputs: grid upscaling and the parity plot's ticks, margins and tolerance lines."""

from __future__ import annotations

import numpy as np
import pytest

from edgediff_runtime.imaging import _nice_ticks, plot_parity, readable_scale

PIL = pytest.importorskip("PIL.Image")


def test_readable_scale_shows_a_16px_digit_at_4x_and_the_grid_at_512px():
    assert readable_scale(16, 4 * 17 + 1) == 8  # 69 px wide grid: ceil(512 / 69) = 8 > 64 / 16 = 4
    assert readable_scale(16, 10 * 17 + 1) == 4  # 171 px: ceil(512 / 171) = 3 < 4, the tile rule wins
    assert readable_scale(512, 1027) == 1  # large images are left alone
    assert readable_scale(8, 19) == 27


def test_nice_ticks_are_round_and_cover_the_range():
    # step = the first of 1, 2, 5, 10 x 10^k at least span / (count - 1); ticks from ceil(lo / step)
    assert _nice_ticks(0, 19, 11) == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]  # 1.9 -> 2
    assert _nice_ticks(38.4, 61.6) == [40, 50, 60]  # 23.2 / 4 = 5.8 -> 10
    assert _nice_ticks(-4.2, -1.8) == [-4, -3, -2]  # 0.6 -> 1 (0.5 is too small)
    assert _nice_ticks(0.0, 0.9) == [0.0, 0.5]  # 0.225 -> 0.5


def test_parity_plot_tolerance_line_is_inside_the_axes(tmp_path):
    """The tolerance equals the worst value: it must still be drawn inside the frame, not on it."""
    per_step = [{"step": i, "psnr": 40.0 + i, "max_abs": 1e-3 / (i + 1)} for i in range(10)]
    report = {
        "level2": {"per_step": per_step},
        "tolerances": {"latent_psnr_min": 40.0, "latent_max_abs": 1e-3},
        "passed": True,
        "bundle": "t",
    }
    plot_parity(tmp_path / "p.png", report)
    img = np.asarray(PIL.open(tmp_path / "p.png").convert("RGB")).astype(int)
    black_rows = [y for y in range(img.shape[0]) if (img[y].sum(axis=1) == 0).sum() > 400]  # frame edges
    gray = np.all(img == (110, 110, 110), axis=2)
    dashed_rows = [y for y in range(img.shape[0]) if gray[y].sum() > 100]
    assert len(black_rows) >= 4 and dashed_rows  # two frames (top and bottom edges) and two dashed lines
    for y in dashed_rows:
        assert min(abs(y - b) for b in black_rows) >= 5, (y, black_rows)
    tick_marks = [y for y in range(img.shape[0]) if (img[y, 60:70].sum(axis=1) == 0).sum() >= 5]
    half = img.shape[0] // 2  # y-axis tick marks left of the frame, at least two in each panel
    assert sum(y < half for y in tick_marks) >= 2 and sum(y > half for y in tick_marks) >= 2
