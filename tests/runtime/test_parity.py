"""Parity metrics (docs/design.md section 4) and the report on the tiny bundle."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edgediff_runtime.backends.ort import OrtBackend
from edgediff_runtime.bundle import load_bundle
from edgediff_runtime.errors import RuntimeStageError
from edgediff_runtime.golden import load_golden
from edgediff_runtime.imaging import encode_png, make_grid, to_uint8
from edgediff_runtime.parity import format_report, max_abs, psnr, run_parity


def test_psnr_and_max_abs():
    a = np.zeros((2, 2), np.float32)
    assert psnr(a, a) == math.inf
    b = a + 0.02  # mse 4e-4 -> 10 log10(4 / 4e-4) = 40 dB with data range 2
    assert psnr(a, b) == pytest.approx(40.0, abs=1e-4)
    assert psnr(a, b, data_range=1.0) == pytest.approx(40.0 - 20 * math.log10(2), abs=1e-4)
    assert max_abs(a, b) == pytest.approx(0.02)


def test_report_on_tiny_bundle(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    report = run_parity(bundle, OrtBackend(bundle.model_path, threads=1))
    json.dumps(report, allow_nan=False)  # standard JSON
    assert report["passed"]
    steps = report["level2"]["per_step"]
    assert [s["step"] for s in steps] == list(range(5))
    assert all(s["max_abs"] < 1e-4 for s in steps)
    assert report["level3"]["psnr_vs_fp"] < 60  # the step-scaled model is not the FP model
    assert "PASS" in format_report(report)


def test_stochastic_sampler_needs_step_noise(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    bundle.manifest.sampler.eta = 0.5
    with pytest.raises(RuntimeStageError, match="is stochastic but the golden file has no step_noise"):
        run_parity(bundle, OrtBackend(bundle.model_path), load_golden(bundle))


def test_png_encoder_round_trips_through_pillow(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    rgb = rng.integers(0, 256, (4, 3, 3), dtype=np.uint8)
    for img in (grey, rgb):
        (tmp_path / "x.png").write_bytes(encode_png(img))
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "x.png")), img)
    tiles = to_uint8(np.stack([np.full((3, 2, 2), -1.0), np.full((3, 2, 2), 1.0)]))
    assert tiles.shape == (2, 2, 2, 3) and tiles[0].max() == 0 and tiles[1].min() == 255
    assert make_grid(tiles).shape == (4, 7, 3)
