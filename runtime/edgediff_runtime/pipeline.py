"""The on-device sampling loop: a bundle's sampler driving a backend (docs/design.md sections 1 and 3).

``sample()`` feeds the graph ``manifest.model.sample_input`` (the latent, scaled by the sampler),
``timestep_input`` (the model timestep, dtype and rank from the manifest) and, when the graph has
one, ``step_input`` = the loop position ``i = 0 .. S-1`` (0 = first, noisiest call), by which the
graph gathers per-step activation scales. Classifier-free guidance runs [uncond; cond] as one
batch (Ho & Salimans 2022). Video bundles (layout ``BCFHW``) sample [N, C, F, H, W] latents; a
learned-sigma output (prediction and variance stacked over channels) is cut to its first C
channels before the sampler step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edgediff_runtime.backends import Backend
from edgediff_runtime.bundle import Bundle
from edgediff_runtime.errors import RuntimeStageError
from edgediff_runtime.manifest import ModelSpec, TensorSpec
from edgediff_runtime.samplers import Sampler, cfg_batch, cfg_combine, make_sampler

StepCallback = Callable[[int, float, np.ndarray], None]


@dataclass
class Guidance:
    """Classifier-free guidance: scale and the conditioning feeds of both halves (name -> [N, ...])."""

    scale: float
    uncond: dict[str, np.ndarray]
    cond: dict[str, np.ndarray]


@dataclass
class SampleResult:
    """Final output (last latent clipped to [-1, 1]), optional per-step latents, and call timings."""

    final: np.ndarray
    timesteps: np.ndarray
    latents: list[np.ndarray] = field(default_factory=list)
    call_seconds: list[float] = field(default_factory=list)


def _np_dtype(spec: TensorSpec) -> np.dtype:
    return np.dtype({"bool": np.bool_}.get(spec.dtype, spec.dtype))


def scalar_feed(spec: TensorSpec, value: float, batch: int) -> np.ndarray:
    """A per-call scalar (timestep or step index) shaped as the graph declares: [], [batch] or [k]."""
    dtype = _np_dtype(spec)
    if np.issubdtype(dtype, np.integer) and float(value) != round(float(value)):
        raise RuntimeStageError(
            f"timestep {value} is fractional but graph input {spec.name} is {spec.dtype}; use a spacing with "
            "integer timesteps (trailing or leading) or export a float timestep input"
        )
    cast = round(float(value)) if np.issubdtype(dtype, np.integer) else value
    if len(spec.shape) == 0:
        return np.array(cast, dtype=dtype)
    if len(spec.shape) == 1:
        n = spec.shape[0] if isinstance(spec.shape[0], int) and spec.shape[0] > 0 else batch
        return np.full((n,), cast, dtype=dtype)
    raise RuntimeStageError(f"graph input {spec.name} must be a scalar or 1-D, got shape {spec.shape}")


def make_feeds(
    model: ModelSpec,
    x: np.ndarray,
    timestep: float,
    step: int,
    extra: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Feeds for one model call (latent, timestep, optional step index, conditioning inputs)."""
    batch = x.shape[0]
    feeds = {model.sample_input: x.astype(_np_dtype(model.input(model.sample_input)), copy=False)}
    feeds[model.timestep_input] = scalar_feed(model.input(model.timestep_input), timestep, batch)
    if model.step_input is not None:
        feeds[model.step_input] = scalar_feed(model.input(model.step_input), step, batch)
    extra = extra or {}
    for spec in model.inputs:
        if spec.name in feeds:
            continue
        if spec.name not in extra:
            raise RuntimeStageError(
                f"graph input '{spec.name}' needs a value but only sample, timestep and step are fed; "
                "pass it as a conditioning feed (Python API) or re-export without it"
            )
        feeds[spec.name] = np.asarray(extra[spec.name], dtype=_np_dtype(spec))
    return feeds


def sample(
    bundle: Bundle,
    backend: Backend,
    noise: np.ndarray,
    steps: int | None = None,
    step_callback: StepCallback | None = None,
    *,
    rng: np.random.Generator | None = None,
    step_noise: np.ndarray | None = None,
    extra_feeds: dict[str, np.ndarray] | None = None,
    guidance: Guidance | None = None,
    keep_latents: bool = False,
    clip_final: bool = True,
) -> SampleResult:
    """Run the bundle's sampler from unit Gaussian ``noise`` [N, *sample_shape] for ``steps`` steps.

    ``step_noise`` [S, N, C, H, W] replaces the sampler's own random draws (parity replay of
    stochastic samplers); ``rng`` seeds them otherwise. ``step_callback(i, t, latent)`` runs after
    each step. ``clip_final=False`` keeps the last latent as it is (a latent for a VAE decoder).
    """
    model = bundle.manifest.model
    noise = np.asarray(noise, dtype=np.float32)
    if noise.ndim != len(model.sample_shape) + 1 or list(noise.shape[1:]) != list(model.sample_shape):
        raise RuntimeStageError(
            f"noise must have shape [N, {', '.join(map(str, model.sample_shape))}], got {list(noise.shape)}"
        )
    sampler: Sampler = make_sampler(bundle.manifest.sampler, steps, rng)
    bundle.manifest.check_steps(sampler.num_steps)  # per-step scale tables fit one step count
    if step_noise is not None and step_noise.shape[0] < sampler.num_steps:
        raise RuntimeStageError(
            "step_noise has fewer steps than the sampler; re-record the golden references"
        )
    x = sampler.init_latent(noise)
    result = SampleResult(final=x, timesteps=sampler.timesteps)
    out_name = model.output_name
    for i in range(sampler.num_steps):
        t = float(sampler.timesteps[i])
        x_in = sampler.scale_model_input(x, i)
        if guidance is not None:
            extra = {k: np.concatenate([guidance.uncond[k], guidance.cond[k]]) for k in guidance.cond}
            feeds = make_feeds(model, cfg_batch(x_in), t, i, {**(extra_feeds or {}), **extra})
        else:
            feeds = make_feeds(model, x_in, t, i, extra_feeds)
        start = time.perf_counter()
        outputs = backend.run(feeds)
        result.call_seconds.append(time.perf_counter() - start)
        if out_name not in outputs:
            raise RuntimeStageError(
                f"the model produced no output '{out_name}'; the manifest does not match the graph"
            )
        out = np.asarray(outputs[out_name], dtype=np.float32)
        if model.learned_sigma and out.ndim == x.ndim and out.shape[1] == 2 * x.shape[1]:
            out = out[:, : x.shape[1]]  # prediction first, variance second (learned sigma)
        if guidance is not None:
            out = cfg_combine(out, guidance.scale)
        if out.shape != x.shape:
            raise RuntimeStageError(
                f"model output {out_name} has shape {list(out.shape)}, expected {list(x.shape)}; "
                "the manifest does not match the graph"
            )
        x = sampler.step(out, i, x, noise=None if step_noise is None else step_noise[i])
        if keep_latents:
            result.latents.append(x.copy())
        if step_callback is not None:
            step_callback(i, t, x)
    result.final = (np.clip(x, -1.0, 1.0) if clip_final else x).astype(np.float32)
    return result
