"""Label-conditioned DDIM with classifier-free guidance for canvas32's own evaluation.

The step is the project's (`edgediff.sampling.ddim_step` on the trailing grid); only the loop is
here: each step evaluates the UNet on the condition and on the null condition in one batch and
combines them as `v = v_null + w (v_cond - v_null)` (Ho & Salimans 2022, Eq. 6; `w = 1` is the
plain conditional model). A shared conditioned sampler in `edgediff.sampling` supersedes this loop.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from tqdm.auto import tqdm

from edgediff.models.label_table import LabelTable
from edgediff.sampling import ddim_prev_timesteps, ddim_step, make_ddim


def guided(v_cond: torch.Tensor, v_null: torch.Tensor, guidance: float) -> torch.Tensor:
    """Classifier-free guidance: `v_null + w (v_cond - v_null)`."""
    return v_null + guidance * (v_cond - v_null)


@torch.no_grad()
def cfg_ddim_sample(
    unet: UNet2DConditionModel,
    table: LabelTable,
    scheduler_config: dict,
    noise: torch.Tensor,
    labels: torch.Tensor,
    num_steps: int,
    guidance: float = 3.0,
    batch_size: int = 250,
    progress: bool = False,
) -> torch.Tensor:
    """Deterministic DDIM from `noise (N, 1, H, W)` conditioned on `labels (N, 2)`; returns [-1, 1]."""
    scheduler = make_ddim(scheduler_config)
    scheduler.set_timesteps(num_steps)
    timesteps = [int(t) for t in scheduler.timesteps]
    prev_timesteps = ddim_prev_timesteps(timesteps)
    outputs = []
    chunks = list(zip(noise.split(batch_size), labels.split(batch_size), strict=True))
    bar = tqdm(total=len(chunks) * num_steps, desc="sampling (cfg)", disable=not progress, leave=False)
    for x, lab in chunks:
        n = x.shape[0]
        context = torch.cat([table.encode(lab), table.null_condition(n)])
        for t, prev_t in zip(timesteps, prev_timesteps, strict=True):
            tt = torch.full((2 * n,), t, dtype=torch.long)
            v_cond, v_null = unet(torch.cat([x, x]), tt, encoder_hidden_states=context).sample.chunk(2)
            x = ddim_step(scheduler, guided(v_cond, v_null, guidance), t, prev_t, x)
            bar.update(1)
        outputs.append(x)
    bar.close()
    return torch.cat(outputs).clamp(-1.0, 1.0)
