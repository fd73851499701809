"""`ptq`: post-training quantization with timestep-aware calibration, no training.

Calibration inputs are the FP model's own seeded DDIM trajectories across all steps (Q-Diffusion
style, docs/methods.md 6.9); weight ranges per output channel and activation ranges per tensor come
from the shrinking Lp grid search (p = 2.4, 80 ratios, docs/methods.md 1.2(1), 6.2).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from edgediff.methods.common import quantize_and_calibrate
from edgediff.methods.registry import Method, QuantizeJob, register
from edgediff.models.conditioning import Conditioning
from edgediff.quant import BitSetting, Recipe, default_recipe


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
    recipe = recipe or default_recipe(bits, fp, a_mode=cfg.a_mode)
    steps = num_steps or cfg.calib_steps
    model, _ = quantize_and_calibrate(
        fp,
        scheduler_config,
        recipe,
        calib_steps=steps,
        calib_samples=cfg.calib_samples,
        seed=cfg.seed,
        table_steps=steps if cfg.a_mode == "per_step" else None,
        progress=progress,
        conditioning=conditioning,
        guidance_scale=guidance_scale,
    )
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
