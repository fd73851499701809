"""Load any model folder edgediff works with: an FP diffusers folder or a quantized folder.

A quantized folder (written by `edgediff quantize`) holds `recipe.json`; it records the FP
model it came from so that paired metrics can compare against it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from edgediff.errors import EdgediffError
from edgediff.reference.model import load_pipeline_parts, resolve_model_path


@dataclass
class LoadedModel:
    unet: torch.nn.Module
    scheduler_config: dict
    path: Path
    quantized: bool
    source_model: Path | None
    set_step: Callable[[int], None] | None
    meta: dict


def is_quantized_folder(path: Path) -> bool:
    return (Path(path) / "recipe.json").is_file()


def load_model(model: str | Path) -> LoadedModel:
    """Load an FP model (`'reference'` or a diffusers folder) or an edgediff quantized folder."""
    if str(model) != "reference" and is_quantized_folder(Path(model)):
        from edgediff.quant import set_step
        from edgediff.quant.io import load_quantized

        unet, _recipe, scheduler_config, meta = load_quantized(Path(model))
        source = meta.get("source_model")
        source_path = resolve_model_path(source) if source else None
        unet.eval()
        return LoadedModel(
            unet=unet,
            scheduler_config=dict(scheduler_config),
            path=Path(model),
            quantized=True,
            source_model=source_path,
            set_step=lambda i: set_step(unet, i),
            meta=meta,
        )
    if str(model) != "reference" and not Path(model).exists():
        raise EdgediffError(f"model folder not found: {model} (pass an existing folder or 'reference')")
    unet, scheduler = load_pipeline_parts(model)
    return LoadedModel(
        unet=unet,
        scheduler_config=dict(scheduler.config),
        path=resolve_model_path(model),
        quantized=False,
        source_model=None,
        set_step=None,
        meta={},
    )
