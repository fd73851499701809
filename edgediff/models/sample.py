"""Sample any loaded model: seeded noise, its conditioning, the DDIM sampler (`edgediff sample`).

`sample_model` is the one seeded-sampling entry of the train stage (`edgediff eval` uses it
too); `write_samples` saves the result as a safetensors file (`samples`: (N, C, H, W) or
(N, C, F, H, W), and the conditions used) and, for 1- or 3-channel images, a PNG grid.
"""

from __future__ import annotations

from pathlib import Path

import torch

from edgediff.models.conditioning import Conditioning, ConditioningRequest, build_conditioning
from edgediff.models.loading import LoadedModel, load_model
from edgediff.sampling import ddim_sample, seeded_noise
from edgediff.utils.atomic import atomic_file


def sample_model(
    loaded: LoadedModel,
    samples: int,
    steps: int,
    seed: int,
    progress: bool = False,
    conditioning: Conditioning | None = None,
    guidance_scale: float | None = None,
) -> torch.Tensor:
    """`samples` seeded DDIM samples of `loaded` (conditioned and guided when given)."""
    noise = seeded_noise(samples, loaded.sample_shape, seed)
    return ddim_sample(
        loaded.unet,
        loaded.scheduler_config,
        noise,
        steps,
        set_step=loaded.set_step,
        progress=progress,
        conditioning=conditioning,
        guidance_scale=guidance_scale,
    ).images


def write_samples(
    model: str | Path,
    samples: int,
    steps: int,
    seed: int,
    out: Path,
    request: ConditioningRequest | None = None,
    grid: Path | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Sample `model` and write `out` (safetensors) and, when asked and possible, a PNG `grid`."""
    from safetensors.torch import save_file

    from edgediff.errors import EdgediffError

    loaded = load_model(model)
    request = request or ConditioningRequest()
    shape = loaded.sample_shape
    if grid is not None and (len(shape) != 3 or shape[0] not in (1, 3)):
        raise EdgediffError(
            f"--grid needs 1- or 3-channel images; {model} makes {shape} samples (drop --grid)"
        )
    cond = build_conditioning(loaded, request, samples, seed=seed, random_default=True)
    images = sample_model(
        loaded, samples, steps, seed, progress, cond, request.guidance if request.guided else None
    )
    tensors = {
        "samples": images.contiguous(),
        **{f"cond.{k}": v.contiguous() for k, v in cond.values.items()},
    }
    with atomic_file(Path(out)) as tmp:
        save_file(tensors, str(tmp))
    if grid is not None:
        from edgediff.reference.grid import save_grid

        save_grid(images[:100], grid)
    return images
