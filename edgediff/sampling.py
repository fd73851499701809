"""The PyTorch reference sampler: deterministic DDIM through diffusers' `DDIMScheduler`.

Each DDIM step goes from `timesteps[i]` to the next timestep of the grid, `timesteps[i+1]` (the
final step to alpha-bar = 1). diffusers' `DDIMScheduler.step` instead goes to `t - T // S`, which is
the same point whenever `S` divides `T` (1, 2, 4, 5, 8, 10, 20, 25, 50, ... steps of 1000) but falls
off the trailing grid otherwise (16, 32, 256 steps): each step then lands at a noise level the next
call does not assume, and the error accumulates (on the reference model FD 66.9 at 256 steps with
diffusers' rule, 20.9 with this one, 20.4 at 250 steps). Where the two agree the step is
diffusers' own, bit for bit.

The sampler tells the model which step it is at through `set_step(i)` before each UNet call,
where `i = 0 .. num_steps-1` is the position in the loop (0 = first, noisiest call). Per-step
activation quantizers (docs/methods.md 6.3) read that index; they never count calls. The ONNX
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


def ddim_prev_timesteps(timesteps: list[int]) -> list[int]:
    """The timestep each DDIM step lands on: the next one of the grid, -1 (alpha-bar = 1) after the last."""
    return [int(t) for t in timesteps[1:]] + [-1]


def ddim_step(
    scheduler: DDIMScheduler,
    model_out: torch.Tensor,
    t: int,
    prev_t: int,
    x: torch.Tensor,
    eta: float = 0.0,
    variance_noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One DDIM step (Song et al. 2021, Eq. 12) from `t` to `prev_t` (< 0: alpha-bar = 1).

    Calls diffusers' `scheduler.step` when its own target `t - T // S` is `prev_t`; otherwise the
    same arithmetic (prediction type, x0 clipping, eta) with alpha-bar at `prev_t`.
    """
    cfg = scheduler.config
    own_prev = t - cfg.num_train_timesteps // scheduler.num_inference_steps
    if own_prev == prev_t or (prev_t < 0 and own_prev < 0):
        return scheduler.step(model_out, t, x, eta=eta, variance_noise=variance_noise).prev_sample
    a_t = scheduler.alphas_cumprod[t].to(x.device)
    a_prev = scheduler.alphas_cumprod[prev_t].to(x.device) if prev_t >= 0 else scheduler.final_alpha_cumprod
    a_prev = torch.as_tensor(a_prev, device=x.device)
    b_t = 1 - a_t
    if cfg.prediction_type == "epsilon":
        x0, eps = (x - b_t**0.5 * model_out) / a_t**0.5, model_out
    elif cfg.prediction_type == "sample":
        x0, eps = model_out, (x - a_t**0.5 * model_out) / b_t**0.5
    elif cfg.prediction_type == "v_prediction":
        x0, eps = a_t**0.5 * x - b_t**0.5 * model_out, a_t**0.5 * model_out + b_t**0.5 * x
    else:
        raise ValueError(f"prediction type {cfg.prediction_type!r} is not supported by DDIM")
    if cfg.clip_sample:
        x0 = x0.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)
    variance = (1 - a_prev) / b_t * (1 - a_t / a_prev)
    std = eta * variance**0.5
    prev = a_prev**0.5 * x0 + (1 - a_prev - std**2) ** 0.5 * eps
    if eta > 0:
        prev = prev + std * (torch.randn_like(x) if variance_noise is None else variance_noise)
    return prev


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
    prev_timesteps = ddim_prev_timesteps(timesteps)
    device = next(unet.parameters()).device
    outputs: list[torch.Tensor] = []
    trajectory: list[list[torch.Tensor]] = [[] for _ in timesteps] if keep_trajectory else []
    chunks = list(torch.split(noise, batch_size))
    bar = tqdm(
        total=len(chunks) * num_steps, desc="sampling", disable=None if progress else True, leave=False
    )
    for chunk in chunks:
        x = chunk.to(device)
        for i, t in enumerate(timesteps):
            if set_step is not None:
                set_step(i)
            tt = torch.full((x.shape[0],), t, device=device, dtype=torch.long)
            model_out = unet(x, tt).sample
            x = ddim_step(scheduler, model_out, t, prev_timesteps[i], x, eta)
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
