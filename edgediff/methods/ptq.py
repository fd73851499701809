"""`ptq`: post-training quantization with timestep-aware calibration, no training.

Calibration inputs are the FP model's own seeded DDIM trajectories across all steps (Q-Diffusion
style, docs/methods.md 6.9); weight ranges per output channel and activation ranges per tensor come
from the shrinking Lp grid search (p = 2.4, 80 ratios, docs/methods.md 1.2(1), 6.2).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import nn

from edgediff.methods.common import sample_shape
from edgediff.methods.registry import Method, QuantizeJob, register
from edgediff.models.conditioning import Conditioning
from edgediff.quant import BitSetting, Recipe, calibrate, collect_calibration, default_recipe, quantize_


@dataclass(frozen=True)
class PTQConfig:
    calib_samples: int = 64
    calib_steps: int = 50
    a_mode: str = "static"
    seed: int = 0


def run_ptq(
    fp: nn.Module,
    scheduler_config: dict,
    bits: BitSetting | str,
    recipe: Recipe | None = None,
    cfg: PTQConfig = PTQConfig(),
    num_steps: int | None = None,
    progress: bool = True,
    conditioning: Conditioning | None = None,
    guidance_scale: float | None = None,
) -> tuple[nn.Module, Recipe]:
    """Return a calibrated fake-quantized copy of `fp` and the recipe used; calibration runs
    the FP sampler with `conditioning` (and `guidance_scale`: both halves)."""
    model = copy.deepcopy(fp).eval()
    recipe = recipe or default_recipe(bits, model, a_mode=cfg.a_mode)
    steps = num_steps or cfg.calib_steps
    quantize_(model, recipe, num_steps=steps if cfg.a_mode == "per_step" else None)
    data = collect_calibration(
        fp,
        scheduler_config,
        num_samples=cfg.calib_samples,
        num_steps=steps,
        seed=cfg.seed,
        sample_shape=sample_shape(fp),
        progress=progress,
        conditioning=conditioning,
        guidance_scale=guidance_scale,
    )
    calibrate(model, data, seed=cfg.seed, progress=progress)
    return model, recipe


def run_job(job: QuantizeJob, options: dict) -> tuple[nn.Module, Recipe, dict]:
    """`edgediff quantize --method ptq`: static activations, so no per-step table."""
    cfg = PTQConfig(seed=job.seed, calib_samples=job.calib_samples, **options)
    recipe = job.recipe
    if job.symmetric_weights:
        recipe = (recipe or default_recipe(job.bits, job.fp, a_mode=cfg.a_mode)).with_symmetric_weights()
    model, recipe = run_ptq(
        job.fp,
        job.scheduler_config,
        job.bits,
        recipe,
        cfg,
        job.num_steps,
        job.progress,
        conditioning=job.conditioning,
        guidance_scale=job.guidance_scale,
    )
    return model, recipe, {}


METHOD = register(
    Method(
        "ptq",
        PTQConfig,
        run_job,
        help="calibration only (static activations)",
        symmetric_weights=True,
        resumable=False,
    )
)
