"""Numpy samplers: DDPM, DDIM, DPM-Solver++(2M), Euler and the few-step x0 sampler (docs/design.md section 1).

Each sampler reproduces the corresponding diffusers 0.42 scheduler step (same float32 arithmetic
order) so a bundle run on the device follows the PyTorch trajectory it was exported from.

Step index convention (shared with ``edgediff.sampling``): the loop calls the model at step
``i = 0 .. S-1`` (0 = first, noisiest call) with ``timesteps[i]``; per-step activation scales in
the graph are gathered by that ``i``, never by counting calls.

Usage::

    s = make_sampler(spec, steps, rng)
    x = s.init_latent(noise)
    for i in range(s.num_steps):
        out = model(s.scale_model_input(x, i), s.timesteps[i], i)
        x = s.step(out, i, x)
"""

from __future__ import annotations

import abc

import numpy as np

from edgediff_runtime.errors import RuntimeStageError
from edgediff_runtime.manifest import SamplerSpec
from edgediff_runtime.schedules import (
    alphas_cumprod,
    ddim_timesteps,
    dpm_timesteps,
    euler_timesteps,
    make_betas,
    sigmas_at,
)

F32 = np.float32


def predict_x0_eps(
    model_output: np.ndarray, sample: np.ndarray, alpha_prod_t: np.float32, prediction_type: str
) -> tuple[np.ndarray, np.ndarray]:
    """Convert a model output to (x0, eps) at alpha-bar_t (DDIM Eq. 9; v: Salimans & Ho 2022, Sec. 4).

    epsilon: x0 = (x - sqrt(1-a) eps) / sqrt(a);  sample: eps = (x - sqrt(a) x0) / sqrt(1-a);
    v_prediction: x0 = sqrt(a) x - sqrt(1-a) v,  eps = sqrt(a) v + sqrt(1-a) x.
    """
    beta_prod_t = F32(1) - alpha_prod_t
    if prediction_type == "epsilon":
        x0 = (sample - beta_prod_t ** F32(0.5) * model_output) / alpha_prod_t ** F32(0.5)
        return x0, model_output
    if prediction_type == "sample":
        eps = (sample - alpha_prod_t ** F32(0.5) * model_output) / beta_prod_t ** F32(0.5)
        return model_output, eps
    if prediction_type == "v_prediction":
        x0 = alpha_prod_t ** F32(0.5) * sample - beta_prod_t ** F32(0.5) * model_output
        eps = alpha_prod_t ** F32(0.5) * model_output + beta_prod_t ** F32(0.5) * sample
        return x0, eps
    raise RuntimeStageError(
        f"prediction type '{prediction_type}' is not supported; use epsilon, v_prediction or sample"
    )


class Sampler(abc.ABC):
    """Base class: a schedule, timesteps and a ``step`` rule; state lives in the instance (one run)."""

    stochastic = False

    def __init__(self, spec: SamplerSpec, steps: int, rng: np.random.Generator | None = None) -> None:
        self.spec = spec
        self.num_steps = steps
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.betas = make_betas(spec.beta_schedule, spec.num_train_timesteps, spec.beta_start, spec.beta_end)
        self.alphas_cumprod = alphas_cumprod(self.betas)
        self.timesteps = self._timesteps()

    def _timesteps(self) -> np.ndarray:
        s = self.spec
        return ddim_timesteps(s.num_train_timesteps, self.num_steps, s.timestep_spacing, s.steps_offset)

    @property
    def init_noise_sigma(self) -> float:
        """Scale of the initial latent relative to unit Gaussian noise."""
        return 1.0

    def init_latent(self, noise: np.ndarray) -> np.ndarray:
        """The first latent from unit Gaussian ``noise`` [N, C, H, W]."""
        return (noise.astype(F32) * F32(self.init_noise_sigma)).astype(F32)

    def scale_model_input(self, sample: np.ndarray, i: int) -> np.ndarray:
        """What the model sees at step ``i`` (identity except for Euler)."""
        return sample

    def _noise(self, shape: tuple[int, ...], noise: np.ndarray | None) -> np.ndarray:
        if noise is not None:
            return np.asarray(noise, dtype=F32)
        return self.rng.standard_normal(shape, dtype=F32)

    def _clip(self, x0: np.ndarray) -> np.ndarray:
        if self.spec.clip_sample:
            r = F32(self.spec.clip_sample_range)
            return np.clip(x0, -r, r)
        return x0

    @abc.abstractmethod
    def step(
        self, model_output: np.ndarray, i: int, sample: np.ndarray, noise: np.ndarray | None = None
    ) -> np.ndarray:
        """Latent after step ``i``; ``noise`` is the variance noise of stochastic samplers (else drawn)."""


class DDIMSampler(Sampler):
    """DDIM (Song et al. 2021, Eq. 12) as ``DDIMScheduler.step``, eta-scaled noise, to the next grid timestep.

    Each step lands on ``timesteps[i+1]`` (alpha-bar = 1 after the last), as ``edgediff.sampling``
    does. diffusers lands on ``t - T // S`` instead: the same point when S divides T, off the
    trailing grid otherwise (16, 32, 256 steps of 1000), where its error accumulates.
    """

    def __init__(self, spec: SamplerSpec, steps: int, rng: np.random.Generator | None = None) -> None:
        super().__init__(spec, steps, rng)
        self.stochastic = spec.eta > 0
        self.final_alpha_cumprod = F32(1.0) if spec.set_alpha_to_one else self.alphas_cumprod[0]

    def _prev_alpha(self, i: int) -> np.float32:
        if i + 1 < self.num_steps:
            return self.alphas_cumprod[int(self.timesteps[i + 1])]
        return self.final_alpha_cumprod

    def step(
        self, model_output: np.ndarray, i: int, sample: np.ndarray, noise: np.ndarray | None = None
    ) -> np.ndarray:
        a_t = self.alphas_cumprod[int(self.timesteps[i])]
        a_prev = self._prev_alpha(i)
        x0, eps = predict_x0_eps(model_output, sample, a_t, self.spec.prediction_type)
        x0 = self._clip(x0)
        variance = (F32(1) - a_prev) / (F32(1) - a_t) * (F32(1) - a_t / a_prev)
        std = F32(self.spec.eta) * variance ** F32(0.5)
        prev = a_prev ** F32(0.5) * x0 + (F32(1) - a_prev - std**2) ** F32(0.5) * eps
        if self.spec.eta > 0:
            prev = prev + std * self._noise(model_output.shape, noise)
        return prev.astype(F32)

    def invert_step(
        self, model_output: np.ndarray, i: int, model_input: np.ndarray, sample: np.ndarray
    ) -> np.ndarray:
        """Deterministic DDIM inversion of step ``i`` (Eq. 12 run backwards): from ``sample`` at the
        level step ``i`` lands on (alpha-bar ``a_prev``) up to ``timesteps[i]`` (``a_t``).

        ``eps`` is the noise prediction of ``model_output`` (the model at ``timesteps[i]`` on
        ``model_input``, at level ``a_t``); ``x0 = (sample - sqrt(1 - a_prev) eps) / sqrt(a_prev)``
        (not clipped), ``z_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps``."""
        a_t = self.alphas_cumprod[int(self.timesteps[i])]
        a_prev = self._prev_alpha(i)
        _, eps = predict_x0_eps(model_output, model_input, a_t, self.spec.prediction_type)
        x0 = (sample - (F32(1) - a_prev) ** F32(0.5) * eps) / a_prev ** F32(0.5)
        return (a_t ** F32(0.5) * x0 + (F32(1) - a_t) ** F32(0.5) * eps).astype(F32)


class X0FewStepSampler(DDIMSampler):
    """Few-step x0 sampler for distilled models (docs/methods.md 4.7).

    x0 = clip(f(z_t, t), -1, 1) (v/epsilon outputs converted to x0 first),
    eps = (z_t - sqrt(a_t) x0) / sqrt(1 - a_t),  z_s = sqrt(a_s) x0 + sqrt(1 - a_s) eps,
    where s is the next timestep in the list (alpha-bar = 1 after the last step, so z = x0).
    Deterministic (eta is ignored); equals eta-0 DDIM up to where eps is recomputed after clipping.
    """

    stochastic = False

    def __init__(self, spec: SamplerSpec, steps: int, rng: np.random.Generator | None = None) -> None:
        super().__init__(spec, steps, rng)
        self.stochastic = False

    def step(
        self, model_output: np.ndarray, i: int, sample: np.ndarray, noise: np.ndarray | None = None
    ) -> np.ndarray:
        a_t = self.alphas_cumprod[int(self.timesteps[i])]
        a_s = self._prev_alpha(i)
        x0, _ = predict_x0_eps(model_output, sample, a_t, self.spec.prediction_type)
        x0 = self._clip(x0)
        eps = (sample - a_t ** F32(0.5) * x0) / (F32(1) - a_t) ** F32(0.5)
        return (a_s ** F32(0.5) * x0 + (F32(1) - a_s) ** F32(0.5) * eps).astype(F32)


class DDPMSampler(Sampler):
    """Ancestral DDPM (Ho et al. 2020, Eqs. 6-7) as ``DDPMScheduler.step`` (fixed_small/fixed_large)."""

    stochastic = True

    def step(
        self, model_output: np.ndarray, i: int, sample: np.ndarray, noise: np.ndarray | None = None
    ) -> np.ndarray:
        t = int(self.timesteps[i])
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[int(self.timesteps[i + 1])] if i + 1 < self.num_steps else F32(1.0)
        beta_prod_t = F32(1) - a_t
        beta_prod_prev = F32(1) - a_prev
        cur_alpha = a_t / a_prev
        cur_beta = F32(1) - cur_alpha
        x0, _ = predict_x0_eps(model_output, sample, a_t, self.spec.prediction_type)
        x0 = self._clip(x0)
        x0_coeff = (a_prev ** F32(0.5) * cur_beta) / beta_prod_t
        cur_coeff = cur_alpha ** F32(0.5) * beta_prod_prev / beta_prod_t
        prev = x0_coeff * x0 + cur_coeff * sample
        if t > 0:
            if self.spec.variance_type == "fixed_large":
                var = cur_beta
            else:
                var = max(beta_prod_prev / beta_prod_t * cur_beta, F32(1e-20))
            prev = prev + F32(var) ** F32(0.5) * self._noise(model_output.shape, noise)
        return prev.astype(F32)


class _SigmaSampler(Sampler):
    """Shared sigma bookkeeping of the Karras-style samplers (DPM-Solver++, Euler)."""

    def __init__(self, spec: SamplerSpec, steps: int, rng: np.random.Generator | None = None) -> None:
        super().__init__(spec, steps, rng)
        self.sigmas = sigmas_at(self.alphas_cumprod, self.timesteps)

    @staticmethod
    def _alpha_sigma(sigma: np.float32) -> tuple[np.float32, np.float32]:
        alpha_t = F32(1) / ((sigma**2 + F32(1)) ** F32(0.5))
        return alpha_t, sigma * alpha_t


class DPMSolverPP2MSampler(_SigmaSampler):
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2, midpoint) as ``DPMSolverMultistepScheduler`` defaults.

    First step and the final step are first order (``final_sigmas_type="zero"``); the model output
    is converted to x0 (no clipping: diffusers' thresholding is off by default).
    """

    def __init__(self, spec: SamplerSpec, steps: int, rng: np.random.Generator | None = None) -> None:
        super().__init__(spec, steps, rng)
        self._prev_x0: np.ndarray | None = None

    def _timesteps(self) -> np.ndarray:
        s = self.spec
        return dpm_timesteps(s.num_train_timesteps, self.num_steps, s.timestep_spacing, s.steps_offset)

    def _lambda(self, alpha: np.float32, sigma: np.float32) -> np.float32:
        with np.errstate(divide="ignore"):
            return np.log(alpha) - np.log(sigma)

    def step(
        self, model_output: np.ndarray, i: int, sample: np.ndarray, noise: np.ndarray | None = None
    ) -> np.ndarray:
        alpha_s0, sigma_s0 = self._alpha_sigma(self.sigmas[i])
        pt = self.spec.prediction_type  # same float ops as diffusers' convert_model_output
        if pt == "epsilon":
            x0 = (sample - sigma_s0 * model_output) / alpha_s0
        elif pt == "v_prediction":
            x0 = alpha_s0 * sample - sigma_s0 * model_output
        elif pt == "sample":
            x0 = model_output
        else:
            raise RuntimeStageError(
                f"prediction type '{pt}' is not supported; use epsilon, v_prediction or sample"
            )
        alpha_t, sigma_t = self._alpha_sigma(self.sigmas[i + 1])
        lambda_t = self._lambda(alpha_t, sigma_t)
        lambda_s0 = self._lambda(alpha_s0, sigma_s0)
        h = lambda_t - lambda_s0
        with np.errstate(invalid="ignore", over="ignore"):
            exp_m1 = np.exp(-h) - F32(1)
        last = i == self.num_steps - 1
        if self._prev_x0 is None or last:
            prev = (sigma_t / sigma_s0) * sample - (alpha_t * exp_m1) * x0
        else:
            alpha_s1, sigma_s1 = self._alpha_sigma(self.sigmas[i - 1])
            h_0 = lambda_s0 - self._lambda(alpha_s1, sigma_s1)
            r0 = h_0 / h
            d1 = (F32(1) / r0) * (x0 - self._prev_x0)
            prev = (
                (sigma_t / sigma_s0) * sample - (alpha_t * exp_m1) * x0 - F32(0.5) * (alpha_t * exp_m1) * d1
            )
        self._prev_x0 = x0
        return np.asarray(prev, dtype=F32)


class EulerSampler(_SigmaSampler):
    """Euler (Karras et al. 2022, Alg. 2 with s_churn = 0) as ``EulerDiscreteScheduler``.

    The latent lives in sigma space: x_T = noise * init_noise_sigma, the model sees
    x / sqrt(sigma^2 + 1), and timesteps may be fractional (linspace spacing).
    """

    def _timesteps(self) -> np.ndarray:
        s = self.spec
        return euler_timesteps(s.num_train_timesteps, self.num_steps, s.timestep_spacing, s.steps_offset)

    @property
    def init_noise_sigma(self) -> float:
        max_sigma = self.sigmas.max()
        if self.spec.timestep_spacing in ("linspace", "trailing"):
            return float(max_sigma)
        return float((max_sigma**2 + F32(1)) ** F32(0.5))

    def scale_model_input(self, sample: np.ndarray, i: int) -> np.ndarray:
        return (sample / ((self.sigmas[i] ** 2 + F32(1)) ** F32(0.5))).astype(F32)

    def step(
        self, model_output: np.ndarray, i: int, sample: np.ndarray, noise: np.ndarray | None = None
    ) -> np.ndarray:
        sigma = self.sigmas[i]
        pt = self.spec.prediction_type
        if pt == "sample":
            x0 = model_output
        elif pt == "epsilon":
            x0 = sample - sigma * model_output
        elif pt == "v_prediction":
            x0 = model_output * (-sigma / (sigma**2 + F32(1)) ** F32(0.5)) + (sample / (sigma**2 + F32(1)))
        else:
            raise RuntimeStageError(
                f"prediction type '{pt}' is not supported; use epsilon, v_prediction or sample"
            )
        derivative = (sample - x0) / sigma
        dt = self.sigmas[i + 1] - sigma
        return (sample + derivative * dt).astype(F32)


SAMPLERS: dict[str, type[Sampler]] = {
    "ddim": DDIMSampler,
    "ddpm": DDPMSampler,
    "dpmpp_2m": DPMSolverPP2MSampler,
    "euler": EulerSampler,
    "x0_fewstep": X0FewStepSampler,
}


def make_sampler(
    spec: SamplerSpec, steps: int | None = None, rng: np.random.Generator | None = None
) -> Sampler:
    """The sampler ``spec.kind`` for ``steps`` steps (default ``spec.steps``)."""
    steps = spec.steps if steps is None else int(steps)
    try:
        cls = SAMPLERS[spec.kind]
    except KeyError:
        raise RuntimeStageError(
            f"sampler '{spec.kind}' is not supported; use one of {', '.join(SAMPLERS)}"
        ) from None
    return cls(spec, steps, rng)


def cfg_batch(x: np.ndarray) -> np.ndarray:
    """Stack the latent twice, [uncond; cond], so one model call serves both halves of guidance."""
    return np.concatenate([x, x], axis=0)


def cfg_combine(model_output: np.ndarray, guidance_scale: float) -> np.ndarray:
    """Classifier-free guidance (Ho & Salimans 2022, Eq. 6): u + w (c - u) over the [uncond; cond] batch."""
    if model_output.shape[0] % 2:
        raise ValueError("classifier-free guidance needs an even batch: [uncond; cond]")
    uncond, cond = np.split(model_output, 2, axis=0)
    return (uncond + F32(guidance_scale) * (cond - uncond)).astype(model_output.dtype)
