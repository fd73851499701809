"""Tiny diffusers models (built from configs, random weights) and their example inputs."""

import torch
from diffusers import DiTTransformer2DModel, LatteTransformer3DModel, UNet2DConditionModel

from edgediff.quant import CalibrationData
from tests.edgediff.models import tiny

CIFAR10_CONFIG = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    layers_per_block=2,
    block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
)


def cond_unet() -> UNet2DConditionModel:
    return tiny.cond_unet(block_out_channels=(32, 64), cross_attention_dim=32, attention_head_dim=8)


def dit() -> DiTTransformer2DModel:
    return tiny.dit(learned_sigma=False)


def latte() -> LatteTransformer3DModel:
    """docs/reference-benchmark.md Q6: 8 frames x 1 channel x 16x16, patch 2, heads 4 x dim 16, 2 layers."""
    return tiny.latte(attention_head_dim=16, cross_attention_dim=64)


def calib_for(kind: str, n: int = 2, num_steps: int = 1) -> CalibrationData:
    """Random inputs for the tiny models (one step index per sample, cycling)."""
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 1000, (n,), generator=g)
    step = torch.arange(n) % num_steps
    if kind == "cond":
        x = torch.randn(n, 4, 8, 8, generator=g)
        cond = {"encoder_hidden_states": torch.randn(n, 3, 32, generator=g)}
    elif kind == "dit":
        x = torch.randn(n, 4, 8, 8, generator=g)
        cond = {"class_labels": torch.randint(0, 10, (n,), generator=g)}
    elif kind == "latte":
        x = torch.randn(n, 1, 8, 16, 16, generator=g)
        cond = {"encoder_hidden_states": torch.randn(n, 1, 16, generator=g)}
    else:
        raise ValueError(kind)
    return CalibrationData(x=x, t=t, step=step, num_steps=num_steps, cond=cond)
