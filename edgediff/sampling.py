"""The PyTorch reference sampler: deterministic DDIM through diffusers' `DDIMScheduler`.

The sampler tells the model which step it is at through `set_step(i)` before each UNet call,
where `i = 0 .. num_steps-1` is the position in the loop (0 = first, noisiest call). Per-step
activation quantizers (METHODS.md 6.3) read that index; they never count calls. The ONNX
runtime's numpy sampler uses the same convention.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from diffusers import DDIMScheduler
from tqdm.auto import tqdm

DEFAULT_SPACING = "trailing"


def make_ddim(scheduler_config: dict, spacing: str = DEFAULT_SPACING) -> DDIMScheduler:
    """A DDIM scheduler on the training schedule (clip x0 to [-1, 1], final alpha = 1)."""
    cfg = {k: v for k, v in dict(scheduler_config).items() if not k.startswith("_")}
    cfg.update(timestep_spacing=spacing, set_alpha_to_one=True)
    return DDIMScheduler.from_config(cfg)


@dataclass
class SampleResult:
    """Final samples and, when requested, the latent after every step."""

    images: torch.Tensor
    trajectory: list[torch.Tensor] = field(default_factory=list)
    timesteps: list[int] = field(default_factory=list)


@torch.no_grad()
def ddim_sample(
    unet: torch.nn.Module,
    scheduler_config: dict,
    noise: torch.Tensor,
    num_steps: int,
    *,
    eta: float = 0.0,
    batch_size: int = 500,
    set_step: Callable[[int], None] | None = None,
    keep_trajectory: bool = False,
    progress: bool = False,
    spacing: str = DEFAULT_SPACING,
) -> SampleResult:
    """Run `num_steps` DDIM steps from `noise` (N, C, H, W); returns samples in [-1, 1]."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    scheduler = make_ddim(scheduler_config, spacing)
    scheduler.set_timesteps(num_steps)
    timesteps = [int(t) for t in scheduler.timesteps]
    device = next(unet.parameters()).device
    outputs: list[torch.Tensor] = []
    trajectory: list[list[torch.Tensor]] = [[] for _ in timesteps] if keep_trajectory else []
    chunks = list(torch.split(noise, batch_size))
    bar = tqdm(total=len(chunks) * num_steps, desc="sampling", disable=not progress, leave=False)
    for chunk in chunks:
        x = chunk.to(device)
        for i, t in enumerate(timesteps):
            if set_step is not None:
                set_step(i)
            tt = torch.full((x.shape[0],), t, device=device, dtype=torch.long)
            model_out = unet(x, tt).sample
            x = scheduler.step(model_out, t, x, eta=eta).prev_sample
            if keep_trajectory:
                trajectory[i].append(x.detach().cpu())
            bar.update(1)
        outputs.append(x.detach().cpu())
    bar.close()
    return SampleResult(
        images=torch.cat(outputs).clamp(-1.0, 1.0),
        trajectory=[torch.cat(t) for t in trajectory] if keep_trajectory else [],
        timesteps=timesteps,
    )


def seeded_noise(n: int, shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """Initial noise `(n, *shape)` from a dedicated generator, identical across processes."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((n, *shape), generator=generator)
