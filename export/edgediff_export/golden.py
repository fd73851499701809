"""Golden references recorded from PyTorch at export time (docs/design.md sections 3-4).

The quantized (or FP) PyTorch model is sampled from seeded noise with the bundle's sampler; every
step's latent and the final output are kept so the device can check parity without torch. For a
quantized model the FP model it came from is sampled from the same noise too (level 3).
Also collects the per-layer output ranges used by the `ort` placement's output Q/DQ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from edgediff.quant import quant_layers
from edgediff.sampling import ddim_sample, seeded_noise


@dataclass
class GoldenRun:
    noise: np.ndarray
    timesteps: np.ndarray
    latents: np.ndarray
    final: np.ndarray
    fp_final: np.ndarray | None


def record_golden(
    model: nn.Module,
    scheduler_config: dict,
    sample_shape: tuple[int, int, int],
    steps: int,
    samples: int,
    seed: int,
    set_step=None,
    fp_model: nn.Module | None = None,
) -> GoldenRun:
    noise = seeded_noise(samples, sample_shape, seed)
    res = ddim_sample(model, scheduler_config, noise, steps, set_step=set_step, keep_trajectory=True)
    fp_final = None
    if fp_model is not None:
        fp_final = ddim_sample(fp_model, scheduler_config, noise, steps).images.numpy()
    return GoldenRun(
        noise=noise.numpy(),
        timesteps=np.asarray(res.timesteps, dtype=np.int64),
        latents=torch.stack(res.trajectory).numpy(),
        final=res.images.numpy(),
        fp_final=fp_final,
    )


@torch.no_grad()
def layer_output_ranges(
    model: nn.Module,
    scheduler_config: dict,
    sample_shape: tuple[int, int, int],
    steps: int,
    samples: int = 32,
    seed: int = 1,
    set_step=None,
) -> dict[str, tuple[float, float]]:
    """Min/max of every quantized layer's output over seeded trajectories of all `steps`."""
    ranges: dict[str, tuple[float, float]] = {}

    def make_hook(name: str):
        def hook(_module, _args, out):
            lo, hi = float(out.min()), float(out.max())
            old = ranges.get(name, (lo, hi))
            ranges[name] = (min(old[0], lo), max(old[1], hi))

        return hook

    handles = [layer.register_forward_hook(make_hook(n)) for n, layer in quant_layers(model).items()]
    try:
        ddim_sample(
            model, scheduler_config, seeded_noise(samples, sample_shape, seed), steps, set_step=set_step
        )
    finally:
        for h in handles:
            h.remove()
    return ranges
