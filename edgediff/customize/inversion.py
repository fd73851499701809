"""Deterministic DDIM inversion (Song et al. 2021, Eq. 12 run backwards; docs/methods.md 5.4).

Walking the sampler's grid backwards, from alpha-bar at `prev_t` (1 for the last step) up to `t`:

    eps = eps_theta(z_prev, t),  x0 = (z_prev - sqrt(1 - a_prev) eps) / sqrt(a_prev),
    z_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps

(the model is called at the step's own timestep `t` on the less noisy latent, as diffusers'
`DDIMInverseScheduler` and the paper's code; v- and sample-prediction outputs are turned into
`eps` at level `t` first; x0 is not clipped, also where the sampler clips it). `refine` > 0
repeats the step with `eps = eps_theta(z_t, t)` at the current estimate of `z_t` (a fixed-point
iteration, not in the paper), so that the sampler's step from `z_t` lands closer to `z_prev`.
No noise is drawn, so inverting twice gives the same latents.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from edgediff.customize.errors import CustomizeError
from edgediff.models.call import denoise
from edgediff.models.conditioning import Conditioning
from edgediff.sampling import ddim_prev_timesteps, make_ddim


def ddim_grid(scheduler_config: dict, steps: int):
    """The DDIM scheduler of the model's schedule, its `steps` timesteps and where each step lands."""
    scheduler = make_ddim(scheduler_config)
    scheduler.set_timesteps(steps)
    timesteps = [int(t) for t in scheduler.timesteps]
    return scheduler, timesteps, ddim_prev_timesteps(timesteps)


def as_epsilon(out: Tensor, z: Tensor, a_t: Tensor, kind: str) -> Tensor:
    """The noise prediction from a model output at level `a_t` on input `z`: `eps` as is,
    `sqrt(a) v + sqrt(1 - a) z` for v-prediction, `(z - sqrt(a) x0) / sqrt(1 - a)` for sample."""
    if kind == "v_prediction":
        return a_t**0.5 * out + (1 - a_t) ** 0.5 * z
    if kind == "sample":
        return (z - a_t**0.5 * out) / (1 - a_t) ** 0.5
    return out


@torch.no_grad()
def ddim_invert(
    unet: nn.Module,
    scheduler_config: dict,
    x0: Tensor,
    steps: int,
    conditioning: Conditioning | None = None,
    refine: int = 0,
    progress: bool = False,
) -> list[Tensor]:
    """The latents of `x0` (1, C, H, W) along the DDIM grid: `states[i]` is the input of sampler
    step `i` (`states[0]` the inverted noise), `states[steps]` is `x0` itself."""
    scheduler, timesteps, prevs = ddim_grid(scheduler_config, steps)
    kind = scheduler.config.prediction_type
    if kind not in ("epsilon", "v_prediction", "sample"):
        raise CustomizeError(f"DDIM inversion does not support prediction type {kind!r}")
    device = next(unet.parameters()).device
    cond = (conditioning or Conditioning({})).repeat_to(x0.shape[0]).to(device)
    z = x0.to(device)
    states = [z]
    for i in tqdm(reversed(range(steps)), total=steps, desc="inverting", disable=not progress, leave=False):
        t, prev = timesteps[i], prevs[i]
        a_t = scheduler.alphas_cumprod[t].to(device)
        a_prev = scheduler.alphas_cumprod[prev].to(device) if prev >= 0 else scheduler.final_alpha_cumprod
        a_prev = torch.as_tensor(a_prev, device=device)
        tt = torch.full((z.shape[0],), t, device=device, dtype=torch.long)
        z_prev, z_t = z, z
        for _ in range(1 + refine):
            eps = as_epsilon(denoise(unet, z_t, tt, cond.values), z_t, a_t, kind)
            x0_pred = (z_prev - (1 - a_prev) ** 0.5 * eps) / a_prev**0.5
            z_t = a_t**0.5 * x0_pred + (1 - a_t) ** 0.5 * eps
        z = z_t
        states.append(z)
    return states[::-1]
