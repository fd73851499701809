"""Progressive distillation on the diffusers DDIM schedule (Salimans & Ho; docs/methods.md 4.2, 6.11).

A student of `N` steps learns to do in one DDIM step what its teacher does in two steps of the
`2N`-step sampler. Everything mirrors `edgediff.sampling.ddim_sample` (diffusers `DDIMScheduler`,
`trailing` spacing, `set_alpha_to_one=True`, x0 clipped to [-1, 1], eta 0) so that a student is
trained on exactly the update it will be sampled with:

* **Timesteps.** The `N`-step trailing grid `t_k = round(1000 - k*1000/N) - 1` (k = 0..N-1) is
  a subset of the `2N`-step grid (`t_k^N = t_{2k}^{2N}`). A training example picks a grid
  position `k` uniformly. The student is fed `t_k^N`; the step it takes goes to the level
  `s = t_k^N - 1000//N` (the diffusers rule), and for the last position `s < 0`, i.e. to
  `ᾱ = 1` (clean image) for every `N <= 32`; from 64 steps on the same rule lands on `t = 0`
  (`ᾱ_0 = 0.99996`), which the sampler does too.
* **Teacher.** Two deterministic DDIM steps exactly as the `2N`-step sampler takes them:
  `t_{2k} -> t_{2k} - 1000//2N`, then the model at `t_{2k+1}` and a step to
  `t_{2k+1} - 1000//2N` (or `ᾱ = 1`). Its x0 is clipped to [-1, 1] as the sampler does
  (diffusers keeps the v-derived ε unclipped; so do we). RCFD's PD code does not clip the
  teacher; we follow our sampler instead.
* **Target** (docs/methods.md 4.2 "PD target"): with `κ = √(1-ᾱ_s)/√(1-ᾱ_t)`,
  `x̃ = (z'' - κ z_t)/(√ᾱ_s - κ√ᾱ_t)`, `ε̃ = (z_t - √ᾱ_t x̃)/√(1-ᾱ_t)`; at `ᾱ_s = 1`, `x̃ = z''`.
* **Loss** (truncated SNR): per sample `max(mse(x̂, x̃), mse(ε̂, ε̃))`, batch mean. Our model
  predicts `v`; `x̂ = √ᾱ z - √(1-ᾱ) v̂` and `ε̂ = √(1-ᾱ) z + √ᾱ v̂` (unclipped for the loss).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from edgediff.errors import EdgediffError
from edgediff.sampling import DEFAULT_SPACING, ddim_prev_timesteps, make_ddim


def _view(a: Tensor, like: Tensor) -> Tensor:
    return a.to(like.dtype).view(-1, 1, 1, 1)


@dataclass(frozen=True)
class StageGrid:
    """Timesteps of one halving stage: the student's `N`-step grid and the teacher's `2N` grid."""

    student_steps: int
    student_t: Tensor  # [N] timesteps the student is called at
    student_prev: Tensor  # [N] level each student step goes to (-1: ᾱ = 1)
    teacher_t: Tensor  # [2N]
    teacher_prev: Tensor  # [2N]
    alphas_cumprod: Tensor  # [T] training schedule
    spacing: str = DEFAULT_SPACING

    def alpha(self, t: Tensor) -> Tensor:
        """`ᾱ_t` for a tensor of timesteps; `t < 0` is the final `ᾱ = 1` (set_alpha_to_one)."""
        a = self.alphas_cumprod.to(t.device)[t.clamp(min=0)]
        return torch.where(t >= 0, a, torch.ones_like(a))


def _grid(scheduler_config: dict, steps: int, spacing: str) -> tuple[Tensor, Tensor, Tensor]:
    ddim = make_ddim(scheduler_config, spacing)
    ddim.set_timesteps(steps)
    t = ddim.timesteps.clone().long()
    prev = torch.tensor(ddim_prev_timesteps(t.tolist()), dtype=torch.long)
    return t, prev, ddim.alphas_cumprod.clone()


def stage_grid(scheduler_config: dict, student_steps: int, spacing: str = DEFAULT_SPACING) -> StageGrid:
    """Build the grids of the `2N -> N` stage; checks that the student grid is in the teacher's."""
    if student_steps < 1:
        raise EdgediffError(f"student steps must be >= 1, got {student_steps}")
    st, sp, ac = _grid(scheduler_config, student_steps, spacing)
    tt, tp, _ = _grid(scheduler_config, 2 * student_steps, spacing)
    if not torch.equal(tt[0::2], st):
        raise EdgediffError(
            f"the {student_steps}-step {spacing} grid is not a subset of the {2 * student_steps}-step grid; "
            "use power-of-two step counts with trailing spacing"
        )
    return StageGrid(student_steps, st, sp, tt, tp, ac, spacing)


def v_to_x0_eps(v: Tensor, z: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
    """v-prediction -> `(x̂0, ε̂)` at `ᾱ = alpha` (per sample, `[B]`)."""
    a = _view(alpha, z)
    return a.sqrt() * z - (1 - a).sqrt() * v, (1 - a).sqrt() * z + a.sqrt() * v


def ddim_step(v: Tensor, z: Tensor, alpha_t: Tensor, alpha_prev: Tensor, clip: bool = True) -> Tensor:
    """One deterministic DDIM step from a v-prediction, as diffusers' `DDIMScheduler.step` (eta 0).

    x0 is clipped to [-1, 1] when `clip`; ε stays the v-derived (unclipped) one, as in diffusers.
    """
    x0, eps = v_to_x0_eps(v, z, alpha_t)
    if clip:
        x0 = x0.clamp(-1.0, 1.0)
    ap = _view(alpha_prev, z)
    return ap.sqrt() * x0 + (1 - ap).sqrt() * eps


def pd_target(z_t: Tensor, z_two: Tensor, alpha_t: Tensor, alpha_s: Tensor) -> tuple[Tensor, Tensor]:
    """Closed-form one-step target `(x̃, ε̃)` reaching `z_two` from `z_t` (docs/methods.md 4.2 "PD target")."""
    a_t, a_s = _view(alpha_t, z_t), _view(alpha_s, z_t)
    kappa = (1 - a_s).sqrt() / (1 - a_t).sqrt()
    x_tilde = (z_two - kappa * z_t) / (a_s.sqrt() - kappa * a_t.sqrt())
    eps_tilde = (z_t - a_t.sqrt() * x_tilde) / (1 - a_t).sqrt()
    return x_tilde, eps_tilde


@torch.no_grad()
def teacher_two_steps(teacher: nn.Module, z_t: Tensor, k: Tensor, grid: StageGrid) -> Tensor:
    """The `2N`-step sampler's steps `2k` and `2k+1` from `z_t` (per-sample positions `k`)."""
    dev = z_t.device
    k = k.to(dev)
    t1, p1 = grid.teacher_t.to(dev)[2 * k], grid.teacher_prev.to(dev)[2 * k]
    t2, p2 = grid.teacher_t.to(dev)[2 * k + 1], grid.teacher_prev.to(dev)[2 * k + 1]
    z1 = ddim_step(teacher(z_t, t1).sample, z_t, grid.alpha(t1), grid.alpha(p1))
    return ddim_step(teacher(z1, t2).sample, z1, grid.alpha(t2), grid.alpha(p2))


@dataclass
class PDBatch:
    """One PD example batch: student input, the student's prediction and the targets."""

    z_t: Tensor
    t: Tensor
    alpha_t: Tensor
    x_hat: Tensor
    eps_hat: Tensor
    x_tilde: Tensor
    eps_tilde: Tensor


def pd_batch(
    teacher: nn.Module, student: nn.Module, x0: Tensor, noise: Tensor, k: Tensor, grid: StageGrid
) -> PDBatch:
    """Noise `x0` to `z_t` at student positions `k`, build the target, run the student (with grad)."""
    dev = x0.device
    k = k.to(dev)
    t = grid.student_t.to(dev)[k]
    a_t = grid.alpha(t)
    a_s = grid.alpha(grid.student_prev.to(dev)[k])
    z_t = _view(a_t, x0).sqrt() * x0 + (1 - _view(a_t, x0)).sqrt() * noise
    with torch.no_grad():
        z_two = teacher_two_steps(teacher, z_t, k, grid)
        x_tilde, eps_tilde = pd_target(z_t, z_two, a_t, a_s)
    x_hat, eps_hat = v_to_x0_eps(student(z_t, t).sample, z_t, a_t)
    return PDBatch(z_t, t, a_t, x_hat, eps_hat, x_tilde, eps_tilde)


def truncated_snr_loss(batch: PDBatch) -> Tensor:
    """`mean_b max(mse(x̂, x̃), mse(ε̂, ε̃))` (docs/methods.md 4.2, 6.11)."""
    b = batch.x_hat.shape[0]
    lx = (batch.x_hat - batch.x_tilde).pow(2).reshape(b, -1).mean(1)
    le = (batch.eps_hat - batch.eps_tilde).pow(2).reshape(b, -1).mean(1)
    return torch.maximum(lx, le).mean()
