"""Calibration: FP-trajectory inputs and range initialisation (docs/methods.md 6.2, 6.3, 6.9).

`collect_calibration` runs the FP model's own seeded DDIM trajectories and keeps the input
of every step, `(x_t, t, step_index)` and the sample's conditions; the input of step i is the
latent before step i (the noise for i = 0). With classifier-free guidance the model sees every
latent twice, with the conditions and with the null conditions, so both halves are kept.
`calibrate` runs those inputs through the model with quantizers off,
records each quantized layer's input with forward pre-hooks, and then initialises, per
layer: smoothing δ (if the recipe asks), the weight range (recipe's `w_range`), the binary
residual, and the activation range (`a_range`): one range for `static`, one per step for
`per_step` (steps without data get the all-steps range), none for `dynamic_per_token`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from edgediff.errors import EdgediffError
from edgediff.models.call import denoise
from edgediff.models.conditioning import Conditioning
from edgediff.models.signature import signature_of
from edgediff.quant.layers import QuantLayer
from edgediff.quant.quantize import quant_disabled, quant_layers, set_step
from edgediff.quant.stats import ActStats
from edgediff.sampling import ddim_sample, seeded_noise

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CalibrationData:
    """Model inputs `x` (N, ...), timesteps `t` (N,), sampler step index `step` (N,) of a
    `num_steps`-step schedule, and optional extra model kwargs `cond` (each (N, ...))."""

    x: Tensor
    t: Tensor
    step: Tensor
    num_steps: int
    cond: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self):
        n = self.x.shape[0]
        if n == 0:
            raise EdgediffError("calibration data is empty; collect at least one sample")
        for key, v in [("t", self.t), ("step", self.step), *self.cond.items()]:
            if v.shape[0] != n:
                raise EdgediffError(
                    f"calibration '{key}' has {v.shape[0]} rows but x has {n}; give one per sample"
                )
        for key, v in [("x", self.x), *self.cond.items()]:
            if v.is_floating_point() and not torch.isfinite(v).all():
                raise EdgediffError(
                    f"calibration data '{key}' contains NaN/Inf; "
                    "re-collect it from a model with finite outputs"
                )
        if int(self.step.min()) < 0 or int(self.step.max()) >= self.num_steps:
            raise EdgediffError(f"calibration step indices must lie in 0..{self.num_steps - 1}")

    def __len__(self) -> int:
        return self.x.shape[0]

    def batches(self, batch_size: int) -> Iterator[tuple[int, Tensor, Tensor, dict[str, Tensor]]]:
        """`(step, x, t, cond)` chunks, each holding a single sampler step."""
        for s in torch.unique(self.step).tolist():
            idx = torch.nonzero(self.step == s).reshape(-1)
            for chunk in torch.split(idx, batch_size):
                yield int(s), self.x[chunk], self.t[chunk], {k: v[chunk] for k, v in self.cond.items()}


def _sample_shape(unet: nn.Module) -> tuple[int, ...]:
    cfg = getattr(unet, "config", None)
    if cfg is None:
        raise EdgediffError("cannot infer the sample shape from the model config; pass sample_shape=")
    return signature_of(unet).sample_shape(cfg)


def collect_calibration(
    unet: nn.Module,
    scheduler_config: dict,
    *,
    num_samples: int,
    num_steps: int,
    seed: int = 0,
    sample_shape: tuple[int, ...] | None = None,
    batch_size: int = 256,
    progress: bool = False,
    conditioning: Conditioning | None = None,
    guidance_scale: float | None = None,
) -> CalibrationData:
    """Inputs of every step of `num_samples` seeded DDIM trajectories of the FP `unet`
    (docs/methods.md 6.9), conditioned by `conditioning` (rows cycled to `num_samples`) and
    guided by `guidance_scale`; a guided step contributes its cond and its null half."""
    shape = tuple(sample_shape) if sample_shape else _sample_shape(unet)
    noise = seeded_noise(num_samples, shape, seed)
    cond = (conditioning or Conditioning({})).repeat_to(num_samples)
    guided = guidance_scale is not None and guidance_scale != 1.0
    was_training = unet.training
    unet.eval()
    try:
        res = ddim_sample(
            unet,
            scheduler_config,
            noise,
            num_steps,
            batch_size=batch_size,
            set_step=lambda i: set_step(unet, i),
            keep_trajectory=True,
            progress=progress,
            conditioning=cond,
            guidance_scale=guidance_scale,
        )
    finally:
        unet.train(was_training)
    inputs = [noise, *res.trajectory[:-1]]
    step_cond = cond.values
    if guided:  # each step's model call saw [x; x] with [cond; null]
        inputs = [torch.cat([x, x]) for x in inputs]
        step_cond = {k: torch.cat([v, cond.null[k]]) for k, v in cond.values.items()}
    n = inputs[0].shape[0]
    return CalibrationData(
        x=torch.cat(inputs),
        t=torch.tensor(res.timesteps, dtype=torch.long).repeat_interleave(n),
        step=torch.arange(num_steps, dtype=torch.long).repeat_interleave(n),
        num_steps=num_steps,
        cond={k: v.repeat(num_steps, *([1] * (v.ndim - 1))) for k, v in step_cond.items()},
    )


def _needs_stats(layer: QuantLayer) -> bool:
    aq = layer.act_quant
    return layer.smooth is not None or (aq is not None and aq.mode != "dynamic_per_token")


def _record(
    model: nn.Module,
    layers: dict[str, QuantLayer],
    data: CalibrationData,
    batch_size: int,
    max_samples: int,
    seed: int,
    progress: bool,
) -> dict[str, dict[int, ActStats]]:
    """Run the calibration inputs with quantizers off; per layer, statistics keyed by step (-1 = any)."""
    gen = torch.Generator().manual_seed(seed)
    stats: dict[str, dict[int, ActStats]] = {n: {} for n in layers}
    current = [0]
    device = next(model.parameters()).device

    def make_hook(name: str, layer: QuantLayer):
        per_step = layer.act_quant is not None and layer.act_quant.mode == "per_step"

        def hook(module, args):
            key = current[0] if per_step else -1
            st = stats[name].setdefault(key, ActStats(max_samples, gen))
            st.update(args[0], layer.channel_dim, where=name)

        return hook

    handles = [layer.register_forward_pre_hook(make_hook(n, layer)) for n, layer in layers.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), quant_disabled(model):
            chunks = list(data.batches(batch_size))
            bar = tqdm(chunks, desc="calibrating", disable=None if progress else True, leave=False)
            for step, x, t, cond in bar:
                current[0] = step
                denoise(model, x.to(device), t.to(device), {k: v.to(device) for k, v in cond.items()})
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return stats


@torch.no_grad()
def calibrate(
    model: nn.Module,
    data: CalibrationData,
    *,
    batch_size: int = 64,
    max_samples: int = 16384,
    seed: int = 0,
    progress: bool = False,
) -> None:
    """Initialise smoothing, weight, residual and activation ranges of every quantized layer.

    `max_samples` bounds the elements kept per layer (and per step) for the range search;
    min/max are exact over all data.
    """
    layers = quant_layers(model)
    if not layers:
        raise EdgediffError("model has no quantized layers; run quantize_(model, recipe) before calibrate")
    for name, layer in layers.items():
        aq = layer.act_quant
        if aq is not None and aq.mode == "per_step" and aq.num_steps != data.num_steps:
            raise EdgediffError(
                f"calibration data has {data.num_steps} steps but layer {name} has a "
                f"{aq.num_steps}-step table; "
                f"collect it with num_steps={aq.num_steps}"
            )
    watched = {n: layer for n, layer in layers.items() if _needs_stats(layer)}
    stats = _record(model, watched, data, batch_size, max_samples, seed, progress) if watched else {}
    for name, layer in layers.items():
        per_key = stats.get(name) or {}
        if _needs_stats(layer) and not per_key:
            log.warning("layer %s saw no calibration input; its activation range stays unset", name)
        merged = ActStats.merge(list(per_key.values())) if per_key else None
        if layer.smooth is not None and merged is not None:
            layer.set_smooth(merged.absmax())
        layer.init_weight_range()
        layer.init_residual()
        aq = layer.act_quant
        if aq is None or aq.mode == "dynamic_per_token" or merged is None:
            continue
        delta = layer.smooth.delta if layer.smooth is not None else None
        method = layer.config.a_range
        aq.init_range(merged.sample(delta), *merged.range(delta), method)
        if aq.mode == "per_step":
            for step, st in per_key.items():
                aq.init_range(st.sample(delta), *st.range(delta), method, index=step)
