"""Golden references recorded from PyTorch at export time (docs/design.md sections 3-4).

The quantized (or FP) PyTorch model is sampled from seeded noise with the bundle's sampler; every
step's latent and the final output are kept so the device can check parity without torch. For a
quantized model the FP model it came from is sampled from the same noise too (level 3).
Also collects the per-layer output ranges used by the `ort` placement's output Q/DQ.

`guided_ddim` is the PyTorch DDIM loop of the export stage: it runs the bundle's `SamplerSpec`
(the model's scheduler config, spacing, steps offset and final alpha as recorded), passes the
conditioning kwargs of the model's signature, batches classifier-free guidance as
[null; cond] in one call (Ho & Salimans 2022, Eq. 6: u + w (c - u)), and cuts a learned-sigma
output to its first C channels. It is the export-side stand-in for the train stage's conditioned
sampler; each step is `edgediff.sampling.ddim_step` (diffusers' own step where it applies).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers import DDIMScheduler
from torch import Tensor, nn

from edgediff.quant import quant_layers
from edgediff.sampling import ddim_prev_timesteps, ddim_step, seeded_noise
from edgediff_runtime.manifest import SamplerSpec


@dataclass
class TorchConditions:
    """Conditioning of a PyTorch run: graph input -> tensor (N, ...), the forward kwarg of each
    input, the null halves and the guidance scale (None: no guidance)."""

    cond: dict[str, Tensor] = field(default_factory=dict)
    kwargs: dict[str, str] = field(default_factory=dict)
    null: dict[str, Tensor] | None = None
    scale: float | None = None

    @property
    def guided(self) -> bool:
        return self.scale is not None and self.null is not None

    def rows(self, sl: slice) -> TorchConditions:
        pick = {k: v[sl] for k, v in self.cond.items()}
        null = None if self.null is None else {k: v[sl] for k, v in self.null.items()}
        return TorchConditions(pick, self.kwargs, null, self.scale)


def ddim_scheduler(spec: SamplerSpec) -> DDIMScheduler:
    """diffusers' DDIM on exactly the bundle's schedule (no field replaced)."""
    return DDIMScheduler(
        num_train_timesteps=spec.num_train_timesteps,
        beta_start=spec.beta_start,
        beta_end=spec.beta_end,
        beta_schedule=spec.beta_schedule,
        clip_sample=spec.clip_sample,
        clip_sample_range=spec.clip_sample_range,
        set_alpha_to_one=spec.set_alpha_to_one,
        steps_offset=spec.steps_offset,
        prediction_type=spec.prediction_type,
        timestep_spacing=spec.timestep_spacing,
    )


@dataclass
class TorchRun:
    final: Tensor
    trajectory: list[Tensor]
    timesteps: list[int]


def model_call(model: nn.Module, x: Tensor, t: int, conds: TorchConditions, learned_sigma: bool) -> Tensor:
    """One (guided) model evaluation at timestep `t`; returns the prediction with x's channels."""
    tt = torch.full((x.shape[0],), t, dtype=torch.long)
    if conds.guided:
        assert conds.null is not None and conds.scale is not None
        kw = {conds.kwargs[k]: torch.cat([conds.null[k], v]) for k, v in conds.cond.items()}
        out = model(torch.cat([x, x]), torch.cat([tt, tt]), **kw, return_dict=False)[0]
    else:
        kw = {conds.kwargs[k]: v for k, v in conds.cond.items()}
        out = model(x, tt, **kw, return_dict=False)[0]
    if learned_sigma:
        out = out[:, : x.shape[1]]
    if conds.guided:
        uncond, cond = out.chunk(2)
        out = uncond + conds.scale * (cond - uncond)
    return out


@torch.no_grad()
def guided_ddim(
    model: nn.Module,
    spec: SamplerSpec,
    noise: Tensor,
    steps: int,
    conds: TorchConditions | None = None,
    *,
    set_step: Callable[[int], None] | None = None,
    learned_sigma: bool = False,
    keep_trajectory: bool = False,
    batch_size: int = 64,
) -> TorchRun:
    """Deterministic DDIM (Song et al. 2021, Eq. 12) from `noise` (N, C, H, W) or (N, C, F, H, W)."""
    conds = conds or TorchConditions()
    scheduler = ddim_scheduler(spec)
    scheduler.set_timesteps(steps)
    timesteps = [int(t) for t in scheduler.timesteps]
    prev = ddim_prev_timesteps(timesteps)
    dtype = next(model.parameters()).dtype
    finals, traj = [], [[] for _ in timesteps]
    for start in range(0, noise.shape[0], batch_size):
        sl = slice(start, start + batch_size)
        x = noise[sl].clone()
        part = conds.rows(sl)
        for i, t in enumerate(timesteps):
            if set_step is not None:
                set_step(i)
            out = model_call(model, x.to(dtype), t, part, learned_sigma).float()
            x = ddim_step(scheduler, out, t, prev[i], x)
            if keep_trajectory:
                traj[i].append(x.clone())
        finals.append(x)
    return TorchRun(
        final=torch.cat(finals).clamp(-1.0, 1.0),
        trajectory=[torch.cat(t) for t in traj] if keep_trajectory else [],
        timesteps=timesteps,
    )


@dataclass
class GoldenRun:
    noise: np.ndarray
    timesteps: np.ndarray
    latents: np.ndarray
    final: np.ndarray
    fp_final: np.ndarray | None
    cond: dict[str, np.ndarray] = field(default_factory=dict)
    null_cond: dict[str, np.ndarray] = field(default_factory=dict)
    guidance_scale: float | None = None


def record_golden(
    model: nn.Module,
    spec: SamplerSpec,
    sample_shape: tuple[int, ...],
    steps: int,
    samples: int,
    seed: int,
    set_step=None,
    fp_model: nn.Module | None = None,
    conds: TorchConditions | None = None,
    learned_sigma: bool = False,
) -> GoldenRun:
    """Seeded trajectories of `model` (and the final samples of `fp_model`) under `spec`."""
    conds = conds or TorchConditions()
    noise = seeded_noise(samples, tuple(sample_shape), seed)
    res = guided_ddim(
        model, spec, noise, steps, conds, set_step=set_step, learned_sigma=learned_sigma, keep_trajectory=True
    )
    fp_final = None
    if fp_model is not None:
        fp_final = guided_ddim(fp_model, spec, noise, steps, conds, learned_sigma=learned_sigma).final.numpy()
    return GoldenRun(
        noise=noise.numpy(),
        timesteps=np.asarray(res.timesteps, dtype=np.int64),
        latents=torch.stack(res.trajectory).numpy(),
        final=res.final.numpy(),
        fp_final=fp_final,
        cond={k: v.numpy() for k, v in conds.cond.items()},
        null_cond={k: v.numpy() for k, v in (conds.null or {}).items()} if conds.guided else {},
        guidance_scale=conds.scale if conds.guided else None,
    )


@torch.no_grad()
def layer_output_ranges(
    model: nn.Module,
    spec: SamplerSpec,
    sample_shape: tuple[int, ...],
    steps: int,
    samples: int = 32,
    seed: int = 1,
    set_step=None,
    conds: TorchConditions | None = None,
    learned_sigma: bool = False,
) -> dict[str, tuple[float, float]]:
    """Min/max of every quantized layer's output over seeded trajectories of all `steps`.

    `conds` holds the conditions of `samples` rows (repeated from the golden ones when shorter)."""
    ranges: dict[str, tuple[float, float]] = {}

    def make_hook(name: str):
        def hook(_module, _args, out):
            lo, hi = float(out.min()), float(out.max())
            old = ranges.get(name, (lo, hi))
            ranges[name] = (min(old[0], lo), max(old[1], hi))

        return hook

    conds = _repeat_rows(conds or TorchConditions(), samples)
    handles = [layer.register_forward_hook(make_hook(n)) for n, layer in quant_layers(model).items()]
    try:
        guided_ddim(
            model,
            spec,
            seeded_noise(samples, tuple(sample_shape), seed),
            steps,
            conds,
            set_step=set_step,
            learned_sigma=learned_sigma,
        )
    finally:
        for h in handles:
            h.remove()
    return ranges


def _repeat_rows(conds: TorchConditions, n: int) -> TorchConditions:
    def rep(v: Tensor) -> Tensor:
        k = -(-n // v.shape[0])
        return v.repeat(k, *([1] * (v.ndim - 1)))[:n]

    null = None if conds.null is None else {k: rep(v) for k, v in conds.null.items()}
    return TorchConditions({k: rep(v) for k, v in conds.cond.items()}, conds.kwargs, null, conds.scale)
