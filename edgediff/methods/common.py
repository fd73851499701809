"""Pieces shared by the quantization methods: FP trajectories and the fine-tuning data stream."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgediff.errors import EdgediffError
from edgediff.quant import set_step
from edgediff.sampling import ddim_prev_timesteps, ddim_step, make_ddim


@dataclass
class TrajectoryStream:
    """Walks seeded FP DDIM trajectories one step per call (docs/methods.md 6.6: data-free
    fine-tuning; the inputs `x_t` come from the FP model's own sampler, one update per step).

    `next()` returns `(step_index, x_t, t, fp_output)` and advances the FP latent.
    `shard=(rank, world)`: each trajectory's noise is drawn for the global `batch_size` and this
    process keeps its contiguous slice (samples evolve independently under DDIM, so the slices
    of all processes together are the one-process batch).
    """

    fp: nn.Module
    scheduler_config: dict
    num_steps: int
    batch_size: int
    sample_shape: tuple[int, ...]
    seed: int = 0
    eta: float = 0.0
    shard: tuple[int, int] = (0, 1)

    def __post_init__(self) -> None:
        rank, world = self.shard
        if world < 1 or not 0 <= rank < world or self.batch_size % world:
            raise EdgediffError(
                f"a fine-tuning batch of {self.batch_size} does not split over {world} processes; "
                f"use a multiple of {world}"
            )
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
        i, t = self._i, self._timesteps[self._i]
        x = self._x
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=self.device)
        out = self.fp(x, tt).sample
        self._x = ddim_step(self._sched, out, t, self._prev[i], x, self.eta)
        self._i += 1
        return i, x, tt, out

    def state_dict(self) -> dict:
        """Position in the current trajectory, its latent and the noise generator (exact resume)."""
        x = None if self._x is None else self._x.cpu()
        return {"i": self._i, "x": x, "generator": self._gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self._i = int(state["i"])
        self._x = None if state["x"] is None else state["x"].to(self.device)
        self._gen.set_state(state["generator"])


def quant_forward(model: nn.Module, x: torch.Tensor, t: torch.Tensor, step: int) -> torch.Tensor:
    set_step(model, step)
    return model(x, t).sample


def sample_shape(unet: nn.Module) -> tuple[int, int, int]:
    cfg = unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
    return (cfg.in_channels, size, size)
