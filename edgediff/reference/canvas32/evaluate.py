"""`edgediff eval --model reference:canvas32`: conditional samples scored by the slot classifier.

Labels are drawn per sample, each slot uniform over the 10 digits and empty (seeded by `seed`),
or fixed by `labels`. `slot_accuracy` is the fraction of (sample, slot) pairs the slot
classifier reads as the requested label; `fd` is the Frechet distance of the classifier's 128-d
features of the samples against `REAL_SAMPLES` real compositions (all digits, uniform labels).
`fd_real_floor` is the same FD for as many real compositions of the held-out digits, drawn with
the same labels: what a perfect generator would score at this sample count.

The samples come from the project's one seeded sampler (`edgediff.models.sample.sample_model`:
DDIM on the model's own scheduler settings, classifier-free guidance with the label table's null
row), so an FP folder, `reference:canvas32` and a quantized canvas32 folder are scored alike.
"""

from __future__ import annotations

import json
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from edgediff.errors import EdgediffError
from edgediff.models.conditioning import label_conditioning
from edgediff.models.loading import load_model
from edgediff.models.sample import sample_model
from edgediff.reference.canvas32 import CLASSIFIER_DIR
from edgediff.reference.canvas32.classifier import SlotCNN, load_slot_classifier
from edgediff.reference.canvas32.data import DigitPool, make_batch, make_canvases, sample_labels
from edgediff.reference.metrics import frechet_distance
from edgediff.utils.atomic import atomic_file

REAL_SAMPLES = 2000
REAL_SEED = 12345
DEFAULT_GUIDANCE = 3.0


@torch.no_grad()
def features(classifier: SlotCNN, images: torch.Tensor, batch: int = 500) -> tuple[np.ndarray, torch.Tensor]:
    """`(features (N, 128) float64, predicted labels (N, 2))`."""
    feats, preds = [], []
    for chunk in images.split(batch):
        f = classifier.features(chunk.float())
        feats.append(f.double().numpy())
        preds.append(classifier.logits(f).argmax(-1))
    return np.concatenate(feats), torch.cat(preds)


@lru_cache(maxsize=2)
def real_features(classifier_dir: Path = CLASSIFIER_DIR) -> np.ndarray:
    images, _ = make_batch(DigitPool.split("all"), REAL_SAMPLES, torch.Generator().manual_seed(REAL_SEED))
    return features(load_slot_classifier(classifier_dir), images)[0]


def evaluate(
    model: str | Path,
    samples: int = 1000,
    steps: int = 50,
    seed: int = 0,
    guidance: float = DEFAULT_GUIDANCE,
    labels: tuple[int, int] | None = None,
    json_out: Path | None = None,
    grid_out: Path | None = None,
    progress: bool = True,
    classifier_dir: Path = CLASSIFIER_DIR,
    device: str | None = None,
) -> dict:
    """Sample `samples` conditional canvases and score them; optionally write JSON and a grid.

    `device`: where the model samples (None: CUDA when available, else the CPU); scoring runs on
    the CPU."""
    if samples < 2:
        raise EdgediffError(f"--samples must be at least 2 for FD, got {samples}")
    loaded = load_model(model)
    if loaded.label_table is None:
        raise EdgediffError(f"{model} has no conditioning/ label table; it is not a canvas32 model")
    loaded.unet.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    classifier = load_slot_classifier(classifier_dir)
    if labels is None:
        cond = sample_labels(samples, torch.Generator().manual_seed(seed + 1_000_003))
    else:
        cond = torch.tensor([labels] * samples, dtype=torch.long)
    t0 = time.perf_counter()
    images = sample_model(
        loaded, samples, steps, seed, progress, label_conditioning(loaded, cond), guidance_scale=guidance
    )
    sample_seconds = time.perf_counter() - t0
    feats, preds = features(classifier, images)
    hits = (preds == cond).float()
    held_out = make_canvases(DigitPool.split("val"), cond, torch.Generator().manual_seed(seed))
    real = real_features(Path(classifier_dir))
    result = {
        "slot_accuracy": float(hits.mean()),
        "slot_accuracy_left": float(hits[:, 0].mean()),
        "slot_accuracy_right": float(hits[:, 1].mean()),
        "fd": frechet_distance(feats, real),
        "fd_real_floor": frechet_distance(features(classifier, held_out)[0], real),
        "samples": samples,
        "real_samples": REAL_SAMPLES,
        "steps": steps,
        "seed": seed,
        "guidance": guidance,
        "labels": "uniform per slot" if labels is None else list(labels),
        "model": str(model),
        "quantized": loaded.quantized,
        "sampler": f"ddim (eta 0, {loaded.scheduler_config.get('timestep_spacing', 'leading')} spacing) "
        "with classifier-free guidance",
        "sample_seconds": round(sample_seconds, 2),
    }
    if grid_out is not None:
        from edgediff.reference.grid import save_grid

        save_grid(images[:100], Path(grid_out))
    if json_out is not None:
        with atomic_file(Path(json_out)) as tmp:
            tmp.write_text(json.dumps(result, indent=2) + "\n")
    return result


def is_canvas32(model: str | Path) -> bool:
    """`reference:canvas32`, or a folder with a label table (a conditioned model)."""
    from edgediff.models.label_table import CONDITIONING_DIR, LABELS_JSON

    return str(model) == "reference:canvas32" or (Path(model) / CONDITIONING_DIR / LABELS_JSON).is_file()
