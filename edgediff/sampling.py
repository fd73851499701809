"""The PyTorch reference sampler: deterministic DDIM through diffusers' `DDIMScheduler`.

Each DDIM step goes from `timesteps[i]` to the next timestep of the grid, `timesteps[i+1]` (the
final step to alpha-bar = 1). diffusers' `DDIMScheduler.step` instead goes to `t - T // S`, which is
the same point whenever `S` divides `T` (1, 2, 4, 5, 8, 10, 20, 25, 50, ... steps of 1000) but falls
off the trailing grid otherwise (16, 32, 256 steps): each step then lands at a noise level the next
call does not assume, and the error accumulates (on the reference model FD 66.9 at 256 steps with
diffusers' rule, 20.9 with this one, 20.4 at 250 steps). Where the two agree the step is
diffusers' own, bit for bit.

The DDIM settings come from the model's own scheduler config, as a diffusers user gets them
from `DDIMScheduler.from_config(pipe.scheduler.config)`: `timestep_spacing` (SD's `leading`
stays `leading`) and `set_alpha_to_one` (SD's `False` makes the last step land on alpha-bar_0).
A config that does not record them gets edgediff's defaults, `trailing` and `True`
(`ddim_settings`); the bundled reference records exactly these.

Conditioned models get their conditions as a `Conditioning` (by condition name); with a
guidance scale `w` every step calls the model once on the batch `[cond; null]` and uses
`eps = eps_null + w (eps_cond - eps_null)` (classifier-free guidance, Ho & Salimans 2022, Eq. 6)
on the model output. Learned-sigma outputs keep their first `in_channels` channels; video latents
`(B, C, F, H, W)` go through unchanged (`edgediff.models.call.denoise`).

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

from edgediff.models.call import denoise
from edgediff.models.conditioning import Conditioning, guided_batch

DEFAULT_SPACING = "trailing"
DEFAULT_SET_ALPHA_TO_ONE = True


@dataclass(frozen=True)
class DDIMSettings:
    """The two DDIM choices a scheduler config may leave open, resolved (see the module doc)."""

    timestep_spacing: str
    set_alpha_to_one: bool


def ddim_settings(scheduler_config: dict) -> DDIMSettings:
    """`timestep_spacing` and `set_alpha_to_one` as the config records them, else edgediff's defaults."""
    cfg = dict(scheduler_config)
    return DDIMSettings(
        timestep_spacing=str(cfg.get("timestep_spacing") or DEFAULT_SPACING),
        set_alpha_to_one=bool(cfg.get("set_alpha_to_one", DEFAULT_SET_ALPHA_TO_ONE)),
    )


def make_ddim(scheduler_config: dict, spacing: str | None = None) -> DDIMScheduler:
    """A DDIM scheduler on the model's schedule; `spacing` overrides the config's timestep spacing."""
    cfg = {k: v for k, v in dict(scheduler_config).items() if not k.startswith("_")}
    settings = ddim_settings(cfg)
    cfg.update(
        timestep_spacing=spacing or settings.timestep_spacing, set_alpha_to_one=settings.set_alpha_to_one
    )
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
    spacing: str | None = None,
    conditioning: Conditioning | None = None,
    guidance_scale: float | None = None,
) -> SampleResult:
    """Run `num_steps` DDIM steps from `noise` (N, C, H, W) or (N, C, F, H, W); the samples are
    clamped to the config's `clip_sample_range` when it clips (the reference: [-1, 1]).

    `conditioning` (one row per sample, or one row for all) goes to every model call;
    `guidance_scale` w (not None, not 1) applies classifier-free guidance with its null rows.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    cond = (conditioning or Conditioning({})).repeat_to(noise.shape[0])
    guided = guidance_scale is not None and guidance_scale != 1.0
    if guided:
        cond.require_null()
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
    for c, chunk in enumerate(chunks):
        x = chunk.to(device)
        rows = cond.rows(slice(c * batch_size, c * batch_size + x.shape[0])).to(device)
        kwargs = guided_batch(rows) if guided else rows.values
        for i, t in enumerate(timesteps):
            if set_step is not None:
                set_step(i)
            if guided:
                tt = torch.full((2 * x.shape[0],), t, device=device, dtype=torch.long)
                eps_cond, eps_null = denoise(unet, torch.cat([x, x]), tt, kwargs).chunk(2)
                model_out = cfg_combine(eps_cond, eps_null, float(guidance_scale))
            else:
                tt = torch.full((x.shape[0],), t, device=device, dtype=torch.long)
                model_out = denoise(unet, x, tt, kwargs)
            x = ddim_step(scheduler, model_out, t, prev_timesteps[i], x, eta)
            if keep_trajectory:
                trajectory[i].append(x.detach().cpu())
            bar.update(1)
        outputs.append(x.detach().cpu())
    bar.close()
    images = torch.cat(outputs)
    if scheduler.config.clip_sample:  # pixel-space models; latents (SD: clip_sample False) stay as they are
        bound = float(scheduler.config.clip_sample_range)
        images = images.clamp(-bound, bound)
    return SampleResult(
        images=images,
        trajectory=[torch.cat(t) for t in trajectory] if keep_trajectory else [],
        timesteps=timesteps,
    )


def cfg_combine(out_cond: torch.Tensor, out_null: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on the model output: `null + w (cond - null)`."""
    return out_null + scale * (out_cond - out_null)


def seeded_noise(n: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Initial noise `(n, *shape)` from a dedicated generator, identical across processes."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((n, *shape), generator=generator)
