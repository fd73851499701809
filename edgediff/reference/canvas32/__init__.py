"""`canvas32`: the class-conditioned reference model with cross-attention.

A diffusers `UNet2DConditionModel` on 32x32 canvases holding two digit slots (left, right),
conditioned through a learned per-slot label table (`edgediff.models.label_table`). Selected as
`--model reference:canvas32`; the name maps to `MODEL_DIR` (`REFERENCE_MODELS` is the entry a
`reference:NAME` resolver reads).
"""

from __future__ import annotations

from pathlib import Path

NAME = "canvas32"
ASSETS = Path(__file__).resolve().parent.parent / "assets" / NAME
MODEL_DIR = ASSETS / "model"
CLASSIFIER_DIR = ASSETS / "slot-classifier"
REFERENCE_MODELS: dict[str, Path] = {NAME: MODEL_DIR}
