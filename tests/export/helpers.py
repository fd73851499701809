"""Tiny models for the export tests: built from configs, calibrated on random inputs."""

from __future__ import annotations

import copy

import torch
from diffusers import UNet2DModel

from edgediff.quant import CalibrationData, ResidualSpec, calibrate, default_recipe, quantize_
from edgediff.quant.recipe import LayerQuant, Recipe

TINY_UNET = dict(
    sample_size=8,
    in_channels=1,
    out_channels=1,
    layers_per_block=1,
    block_out_channels=(8, 16),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=4,
    attention_head_dim=4,
)
SHAPE = (1, 8, 8)


def tiny_unet(seed: int = 0) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(**TINY_UNET).eval()


def random_calibration(
    n: int = 8, num_steps: int = 4, shape=SHAPE, cond: dict | None = None
) -> CalibrationData:
    g = torch.Generator().manual_seed(0)
    return CalibrationData(
        x=torch.randn(n, *shape, generator=g),
        t=torch.randint(0, 1000, (n,), generator=g),
        step=torch.arange(n) % num_steps,
        num_steps=num_steps,
        cond=cond or {},
    )


def quantized(
    model,
    bits: str = "W8A8",
    a_mode: str = "static",
    num_steps: int = 4,
    residual: bool = False,
    calib: CalibrationData | None = None,
):
    q = copy.deepcopy(model)
    if residual:
        main = LayerQuant.parse(bits, a_mode=a_mode, residual=ResidualSpec(fraction=0.25))
        recipe = Recipe(rules=(("conv_in", LayerQuant(w_bits=8, a_bits=8)), ("*", main)), name="residual")
    else:
        recipe = default_recipe(bits, q, a_mode=a_mode)
    quantize_(q, recipe, num_steps=num_steps if a_mode == "per_step" else None)
    calibrate(q, calib or random_calibration(num_steps=num_steps))
    return q.eval()
