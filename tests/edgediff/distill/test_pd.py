"""Progressive distillation on the diffusers DDIM schedule (docs/methods.md 4.2, 4.6 unit checks)."""

import copy
import dataclasses

import pytest
import torch
from diffusers import UNet2DModel

from edgediff.distill.pd import (
    ddim_step,
    pd_batch,
    pd_target,
    stage_grid,
    teacher_two_steps,
    truncated_snr_loss,
    v_to_x0_eps,
)
from edgediff.reference.model import SCHEDULER_CONFIG
from edgediff.sampling import ddim_sample, make_ddim
from tests.edgediff.distill.tiny import TINY_UNET


def tiny_unet(seed: int = 0) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(**TINY_UNET).eval()


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16, 32, 64])
def test_trailing_grid_is_a_subset_of_the_doubled_grid(n):
    grid = stage_grid(SCHEDULER_CONFIG, n)
    assert torch.equal(grid.teacher_t[0::2], grid.student_t)
    assert len(grid.student_t) == n and len(grid.teacher_t) == 2 * n
    assert int(grid.student_t[0]) == 999
    # every step lands on the next grid point (the last on alpha = 1), so the teacher's two steps
    # end where the student's one step does
    assert float(grid.alpha(grid.student_prev[-1:])) == 1.0 and int(grid.teacher_prev[-1]) < 0
    assert torch.equal(grid.teacher_prev[1::2], grid.student_prev)


def test_ddim_step_matches_diffusers_scheduler():
    sched = make_ddim(SCHEDULER_CONFIG)
    sched.set_timesteps(8)
    grid = stage_grid(SCHEDULER_CONFIG, 4)
    g = torch.Generator().manual_seed(0)
    z, v = torch.randn(3, 1, 8, 8, generator=g), 2.0 * torch.randn(3, 1, 8, 8, generator=g)
    for i, t in enumerate(sched.timesteps):
        ref = sched.step(v, t, z).prev_sample
        tt = torch.full((3,), int(t))
        ours = ddim_step(v, z, grid.alpha(tt), grid.alpha(grid.teacher_prev[i].expand(3)))
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_teacher_two_steps_reproduce_the_sampler():
    """Stepping the teacher over all positions k equals `ddim_sample` at 2N steps (clipping included)."""
    teacher = tiny_unet()
    n = 4
    grid = stage_grid(SCHEDULER_CONFIG, n)
    noise = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    z = noise
    for k in range(n):
        z = teacher_two_steps(teacher, z, torch.full((5,), k), grid)
    ref = ddim_sample(teacher, SCHEDULER_CONFIG, noise, 2 * n).images
    torch.testing.assert_close(z.clamp(-1, 1), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_pd_target_identity_one_student_step_lands_on_two_teacher_steps(k):
    """A student predicting x̃ (as v) takes z_t exactly to the teacher's two-step result (unclipped case)."""
    torch.set_default_dtype(torch.float64)
    try:
        n = 4
        grid = stage_grid(SCHEDULER_CONFIG, n)
        g = torch.Generator().manual_seed(k)
        # a scaled-down teacher output keeps every x0 inside [-1, 1] (the unclipped case)
        teacher = tiny_unet(k).double()
        scaled = _Scaled(teacher, 0.05)
        x0 = 0.5 * torch.rand(4, 1, 8, 8, generator=g) - 0.25
        kk = torch.full((4,), k)
        t = grid.student_t[kk]
        a_t, a_s = grid.alpha(t), grid.alpha(grid.student_prev[kk])
        z_t = a_t.sqrt().view(-1, 1, 1, 1) * x0 + (1 - a_t).sqrt().view(-1, 1, 1, 1) * torch.randn(
            x0.shape, generator=g
        )
        z_two = teacher_two_steps(scaled, z_t, kk, grid)
        x_tilde, eps_tilde = pd_target(z_t, z_two, a_t, a_s)
        assert float(x_tilde.abs().max()) <= 1.0  # really the unclipped case
        # the v that decodes to x̃ at ᾱ_t: v = (√ᾱ z - x̃)/√(1-ᾱ)
        a = a_t.double().view(-1, 1, 1, 1)
        v = (a.sqrt() * z_t - x_tilde) / (1 - a).sqrt()
        x_hat, eps_hat = v_to_x0_eps(v, z_t, a_t)
        torch.testing.assert_close(x_hat, x_tilde)
        torch.testing.assert_close(eps_hat, eps_tilde)
        student_step = ddim_step(v, z_t, a_t, a_s)
        torch.testing.assert_close(student_step, z_two, rtol=1e-9, atol=1e-9)
    finally:
        torch.set_default_dtype(torch.float32)


def test_final_step_target_is_the_teacher_output():
    grid = stage_grid(SCHEDULER_CONFIG, 2)
    z_t, z_two = torch.randn(2, 1, 4, 4), torch.rand(2, 1, 4, 4) * 2 - 1
    a_t = grid.alpha(grid.student_t[[1, 1]])
    x_tilde, _ = pd_target(z_t, z_two, a_t, torch.ones(2))
    torch.testing.assert_close(x_tilde, z_two)


def test_loss_is_zero_when_student_is_the_one_step_solution_and_positive_for_the_teacher():
    teacher = tiny_unet()
    grid = stage_grid(SCHEDULER_CONFIG, 2)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 1, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    k = torch.tensor([0, 1, 0, 1, 0, 1])
    batch = pd_batch(teacher, copy.deepcopy(teacher), x0, noise, k, grid)
    assert float(truncated_snr_loss(batch).detach()) > 0.0
    solved = dataclasses.replace(batch, x_hat=batch.x_tilde.clone(), eps_hat=batch.eps_tilde.clone())
    assert float(truncated_snr_loss(solved)) == 0.0


class _Scaled(torch.nn.Module):
    def __init__(self, net, scale):
        super().__init__()
        self.net, self.scale = net, scale

    def forward(self, z, t):
        out = self.net(z, t)
        out.sample = out.sample * self.scale
        return out
