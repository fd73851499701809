"""`edgediff eval`: sample a model with seeded noise and score it (docs/reference-benchmark.md, Q3).

FD is compared against all 1,797 real images; always compare models at the same sample count
and seed (FD has a strong 1/n bias and about +-30 % seed noise at 1,000 samples). For a
quantized model the FP model it came from is sampled from the same noise, giving paired PSNR
and class agreement.
"""

from __future__ import annotations

import json
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from edgediff.errors import EdgediffError
from edgediff.models.conditioning import ConditioningRequest, build_conditioning
from edgediff.models.loading import load_model
from edgediff.models.sample import sample_model
from edgediff.reference.classifier import load_classifier
from edgediff.reference.data import load_digits16
from edgediff.reference.grid import save_grid
from edgediff.reference.metrics import QualityReport, classify, evaluate_samples
from edgediff.reference.model import BUNDLED_CLASSIFIER
from edgediff.sampling import ddim_settings
from edgediff.utils.atomic import atomic_file

DIGITS_SHAPE = (1, 16, 16)


@lru_cache(maxsize=1)
def real_features() -> np.ndarray:
    classifier = load_classifier(BUNDLED_CLASSIFIER)
    images, _ = load_digits16()
    feats, _ = classify(classifier, images)
    return feats


def evaluate(
    model: str | Path,
    samples: int = 1000,
    steps: int = 50,
    seed: int = 0,
    json_out: Path | None = None,
    grid_out: Path | None = None,
    progress: bool = True,
    reference_samples: torch.Tensor | None = None,
    conditioning: ConditioningRequest | None = None,
) -> dict:
    """Sample, score and (optionally) write the JSON report and a grid of the first 100 samples.

    `conditioning`: labels/embeddings and guidance of the samples (a label-conditioned model
    without them gets seeded random labels); the paired FP model gets the same conditions."""
    if samples < 2:
        raise EdgediffError(f"--samples must be at least 2 for FD, got {samples}")
    if steps < 1:
        raise EdgediffError(f"--steps must be at least 1, got {steps}")
    torch.manual_seed(seed)
    loaded = load_model(model)
    if tuple(loaded.sample_shape) != DIGITS_SHAPE:
        raise EdgediffError(
            f"eval scores {DIGITS_SHAPE} digit samples with the digits16 classifier; {model} makes "
            f"{tuple(loaded.sample_shape)} samples"
        )
    request = conditioning or ConditioningRequest()
    cond = build_conditioning(loaded, request, samples, seed=seed, random_default=True)
    guidance = request.guidance if request.guided else None
    classifier = load_classifier(BUNDLED_CLASSIFIER)
    t0 = time.perf_counter()
    images = sample_model(loaded, samples, steps, seed, progress, cond, guidance)
    sample_seconds = time.perf_counter() - t0
    if reference_samples is None and loaded.quantized and loaded.source_model is not None:
        fp = load_model(loaded.source_model)
        reference_samples = sample_model(fp, samples, steps, seed, progress, cond, guidance)
    report: QualityReport = evaluate_samples(classifier, images, real_features(), reference_samples)
    result = report.to_dict() | {
        "steps": steps,
        "seed": seed,
        "model": str(model),
        "quantized": loaded.quantized,
        "sampler": f"ddim (eta 0, {ddim_settings(loaded.scheduler_config).timestep_spacing} spacing)",
        "sample_seconds": round(sample_seconds, 2),
    }
    if loaded.quantized:
        result["source_model"] = str(loaded.source_model)
    if grid_out is not None:
        save_grid(images[:100], Path(grid_out))
    if json_out is not None:
        with atomic_file(Path(json_out)) as tmp:
            tmp.write_text(json.dumps(result, indent=2) + "\n")
    return result
