"""Noise schedules and timestep spacings in numpy, matching diffusers 0.42 bit for bit where possible.

Betas follow ``DDIMScheduler.__init__`` (linear, scaled_linear, squaredcos_cap_v2 = the
"cosine" ``betas_for_alpha_bar`` with s = 0.008 and max_beta = 0.999, Nichol & Dhariwal 2021
Eq. 17). ``alphas_cumprod`` is the float32 running product of ``1 - beta`` (DDPM's alpha-bar).

Timestep spacings differ between diffusers schedulers, so each family has its own function:
DDIM/DDPM (``set_timesteps`` of scheduling_ddim.py / scheduling_ddpm.py), DPM-Solver multistep
(S + 1 grid points, scheduling_dpmsolver_multistep.py) and Euler (float timesteps,
scheduling_euler_discrete.py).
"""

from __future__ import annotations

import math

import numpy as np

from edgediff_runtime.errors import RuntimeStageError


def betas_for_alpha_bar(num_train_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """Cosine schedule: beta_i = min(1 - abar((i+1)/T) / abar(i/T), max_beta).

    abar(t) = cos^2((t + s) / (1 + s) * pi / 2) with s = 0.008 (Nichol & Dhariwal 2021, Eq. 17).
    """

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = []
    for i in range(num_train_timesteps):
        t1 = i / num_train_timesteps
        t2 = (i + 1) / num_train_timesteps
        betas.append(min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta))
    return np.asarray(betas, dtype=np.float32)


def _linspace_f32(start: float, end: float, n: int) -> np.ndarray:
    """``torch.linspace(..., dtype=float32)`` on CPU: float32 step, first half from start, second from end."""
    a, b = np.float32(start), np.float32(end)
    if n == 1:
        return np.array([a], dtype=np.float32)
    step = (b - a) / np.float32(n - 1)
    i = np.arange(n)
    head = a + step * i.astype(np.float32)
    tail = b - step * (n - i - 1).astype(np.float32)
    return np.where(i < n // 2, head, tail).astype(np.float32)


def make_betas(
    beta_schedule: str, num_train_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> np.ndarray:
    """Betas [T] float32 for ``linear``, ``scaled_linear`` or ``squaredcos_cap_v2``."""
    t = num_train_timesteps
    if beta_schedule == "linear":
        return _linspace_f32(beta_start, beta_end, t)
    if beta_schedule == "scaled_linear":
        return _linspace_f32(beta_start**0.5, beta_end**0.5, t) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        return betas_for_alpha_bar(t)
    raise RuntimeStageError(
        f"beta schedule '{beta_schedule}' is not supported; use linear, scaled_linear or squaredcos_cap_v2"
    )


def alphas_cumprod(betas: np.ndarray) -> np.ndarray:
    """alpha-bar_t = prod_{i<=t} (1 - beta_i) as float32 (DDPM, Ho et al. 2020, Eq. 4)."""
    # torch.cumprod on CPU accumulates float32 in double (acc_type), then rounds each element.
    alphas = (np.float32(1.0) - betas.astype(np.float32)).astype(np.float32)
    return np.cumprod(alphas.astype(np.float64)).astype(np.float32)


def _check_steps(num_train_timesteps: int, steps: int) -> None:
    if steps < 1:
        raise RuntimeStageError(f"steps must be >= 1, got {steps}; pass --steps 1 or more")
    if steps > num_train_timesteps:
        raise RuntimeStageError(
            f"steps ({steps}) cannot exceed the model's "
            f"{num_train_timesteps} training timesteps; use fewer steps"
        )


def _check_spacing(spacing: str) -> None:
    if spacing not in ("leading", "trailing", "linspace"):
        raise RuntimeStageError(
            f"timestep spacing '{spacing}' is not supported; use leading, trailing or linspace"
        )


def ddim_timesteps(num_train_timesteps: int, steps: int, spacing: str, steps_offset: int = 0) -> np.ndarray:
    """int64 timesteps of DDIMScheduler / DDPMScheduler ``set_timesteps`` (diffusers 0.42)."""
    _check_steps(num_train_timesteps, steps)
    _check_spacing(spacing)
    t = num_train_timesteps
    if spacing == "linspace":
        return np.linspace(0, t - 1, steps).round()[::-1].copy().astype(np.int64)
    if spacing == "leading":
        ratio = t // steps
        return (np.arange(0, steps) * ratio).round()[::-1].copy().astype(np.int64) + steps_offset
    ratio = t / steps
    return np.round(np.arange(t, 0, -ratio)).astype(np.int64) - 1


def dpm_timesteps(num_train_timesteps: int, steps: int, spacing: str, steps_offset: int = 0) -> np.ndarray:
    """int64 timesteps of DPMSolverMultistepScheduler ``set_timesteps`` (lambda_min_clipped = -inf)."""
    _check_steps(num_train_timesteps, steps)
    _check_spacing(spacing)
    last = num_train_timesteps
    if spacing == "linspace":
        return np.linspace(0, last - 1, steps + 1).round()[::-1][:-1].copy().astype(np.int64)
    if spacing == "leading":
        ratio = last // (steps + 1)
        return (np.arange(0, steps + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64) + steps_offset
    ratio = num_train_timesteps / steps
    return np.arange(last, 0, -ratio).round().copy().astype(np.int64) - 1


def euler_timesteps(num_train_timesteps: int, steps: int, spacing: str, steps_offset: int = 0) -> np.ndarray:
    """float32 timesteps of EulerDiscreteScheduler ``set_timesteps`` (may be fractional for linspace)."""
    _check_steps(num_train_timesteps, steps)
    _check_spacing(spacing)
    t = num_train_timesteps
    if spacing == "linspace":
        return np.linspace(0, t - 1, steps, dtype=np.float32)[::-1].copy()
    if spacing == "leading":
        ratio = t // steps
        out = (np.arange(0, steps) * ratio).round()[::-1].copy().astype(np.float32)
        return out + np.float32(steps_offset)
    ratio = t / steps
    return np.arange(t, 0, -ratio).round().copy().astype(np.float32) - np.float32(1)


def sigmas_at(alphas_cumprod_: np.ndarray, timesteps: np.ndarray) -> np.ndarray:
    """Karras sigmas sqrt((1 - abar) / abar) interpolated at ``timesteps``, then a final 0 (float32)."""
    full = (((1 - alphas_cumprod_) / alphas_cumprod_) ** 0.5).astype(np.float32)
    sig = np.interp(timesteps, np.arange(0, len(full)), full)
    return np.concatenate([sig, [0.0]]).astype(np.float32)
