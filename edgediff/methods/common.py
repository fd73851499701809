"""Pieces shared by the quantization methods: FP trajectories and the fine-tuning data stream."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from edgediff.errors import EdgediffError
from edgediff.models.call import denoise
from edgediff.models.conditioning import Conditioning, guided_batch
from edgediff.models.signature import signature_of
from edgediff.quant import Recipe, calibrate, collect_calibration, quantize_, set_step
from edgediff.quant.calibration import CalibrationData
from edgediff.sampling import cfg_combine, ddim_prev_timesteps, ddim_step, make_ddim


@dataclass
class TrajectoryStream:
    """Walks seeded FP DDIM trajectories one step per call (docs/methods.md 6.6: data-free
    fine-tuning; the inputs `x_t` come from the FP model's own sampler, one update per step).

    `next()` returns `(step_index, x_t, t, fp_output)` and advances the FP latent; the
    conditions of that batch are in `cond` (pass them to `quant_forward`). Trajectory k takes
    rows `k*B .. k*B+B-1` (cycled) of `conditioning`. With `guidance_scale` the FP latent follows
    the guided sampler and the returned batch is the model call's `[x; x]` with `[cond; null]`.
    `shard=(rank, world)`: each trajectory's noise (and its condition rows) is drawn for the
    global `batch_size` and this process keeps its contiguous slice (samples evolve independently
    under DDIM, so the slices of all processes together are the one-process batch).
    """

    fp: nn.Module
    scheduler_config: dict
    num_steps: int
    batch_size: int
    sample_shape: tuple[int, ...]
    seed: int = 0
    eta: float = 0.0
    conditioning: Conditioning | None = None
    guidance_scale: float | None = None
    shard: tuple[int, int] = (0, 1)

    def __post_init__(self) -> None:
        rank, world = self.shard
        if world < 1 or not 0 <= rank < world or self.batch_size % world:
            raise EdgediffError(
                f"a fine-tuning batch of {self.batch_size} does not split over {world} processes; "
                f"use a multiple of {world}"
            )
        self._cond_all = self.conditioning or Conditioning({})
        self._guided = self.guidance_scale is not None and self.guidance_scale != 1.0
        self._trajectory = 0
        self.cond: dict[str, torch.Tensor] = {}
        self._sched = make_ddim(self.scheduler_config)
        self._sched.set_timesteps(self.num_steps)
        self._timesteps = [int(t) for t in self._sched.timesteps]
        self._prev = ddim_prev_timesteps(self._timesteps)
        self._gen = torch.Generator().manual_seed(self.seed)
        self._i = self.num_steps
        self._x: torch.Tensor | None = None
        self.device = next(self.fp.parameters()).device

    @torch.no_grad()
    def next(self) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._i >= self.num_steps:
            noise = torch.randn((self.batch_size, *self.sample_shape), generator=self._gen)
            rank, world = self.shard
            per = self.batch_size // world
            self._x = noise[rank * per : (rank + 1) * per].to(self.device)
            self._i = 0
            self._new_conditions()
        i, t = self._i, self._timesteps[self._i]
        x = self._x
        if self._guided:
            x = torch.cat([x, x])
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=self.device)
        out = denoise(self.fp, x, tt, self.cond)
        guided = cfg_combine(*out.chunk(2), float(self.guidance_scale)) if self._guided else out
        self._x = ddim_step(self._sched, guided, t, self._prev[i], self._x, self.eta)
        self._i += 1
        return i, x, tt, out

    def _new_conditions(self) -> None:
        if not self._cond_all:
            return
        rank, world = self.shard
        per = self.batch_size // world
        start = self._trajectory * self.batch_size + rank * per
        idx = torch.arange(start, start + per) % self._cond_all.batch
        rows = self._cond_all.rows(idx).to(self.device)
        self.cond = guided_batch(rows) if self._guided else rows.values
        self._trajectory += 1

    def state_dict(self) -> dict:
        """Position in the current trajectory, its latent, the noise generator and the trajectory
        count that picks the condition rows (exact resume)."""
        x = None if self._x is None else self._x.cpu()
        return {"i": self._i, "x": x, "generator": self._gen.get_state(), "trajectory": self._trajectory}

    def load_state_dict(self, state: dict) -> None:
        self._i = int(state["i"])
        self._x = None if state["x"] is None else state["x"].to(self.device)
        self._gen.set_state(state["generator"])
        self._trajectory = int(state.get("trajectory", 0))
        if self._trajectory and self._cond_all:
            self._trajectory -= 1  # rebuild the current trajectory's conditions
            self._new_conditions()


def quant_forward(
    model: nn.Module, x: torch.Tensor, t: torch.Tensor, step: int, cond: dict | None = None
) -> torch.Tensor:
    set_step(model, step)
    return denoise(model, x, t, cond)


def sample_shape(unet: nn.Module) -> tuple[int, ...]:
    """One sample's shape, `(C, H, W)` or `(C, F, H, W)` (edgediff.models.signature)."""
    return signature_of(unet).sample_shape(unet.config)


def quantize_and_calibrate(
    fp: nn.Module,
    scheduler_config: dict,
    recipe: Recipe,
    *,
    calib_steps: int,
    calib_samples: int,
    seed: int,
    table_steps: int | None,
    progress: bool = True,
    conditioning: Conditioning | None = None,
    guidance_scale: float | None = None,
) -> tuple[nn.Module, CalibrationData]:
    """A fake-quantized copy of `fp` under `recipe` (per-step tables of `table_steps` entries),
    calibrated on `calib_samples` seeded FP DDIM trajectories of `calib_steps` steps (docs/methods.md
    6.9); returns the model and the calibration inputs."""
    model = copy.deepcopy(fp).eval()
    quantize_(model, recipe, num_steps=table_steps)
    data = collect_calibration(
        fp,
        scheduler_config,
        num_samples=calib_samples,
        num_steps=calib_steps,
        seed=seed,
        sample_shape=sample_shape(fp),
        progress=progress,
        conditioning=conditioning,
        guidance_scale=guidance_scale,
    )
    calibrate(model, data, seed=seed, progress=progress)
    return model, data
