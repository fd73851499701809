"""Quantized reference models and bundles shared by the benchmarks (built once into a work folder)."""

from __future__ import annotations

from pathlib import Path

from edgediff.methods import quantize_model
from edgediff_export.bundle import ExportOptions, export_bundle


def quantized_folder(
    work: Path, bits: str, method: str = "ptq", steps: int = 20, symmetric_weights: bool = False
) -> Path:
    """The reference model quantized with `method` at `bits` (default recipe; `symmetric_weights`
    sets `w_symmetric` on every layer), built once under `work`."""
    sym = "-sym" if symmetric_weights else ""
    out = Path(work) / f"{bits.lower()}{sym}-{method}-{steps}"
    if not (out / "recipe.json").is_file():
        recipe_file = None
        if symmetric_weights:
            from edgediff.quant import default_recipe
            from edgediff.reference.model import load_pipeline_parts

            unet, _ = load_pipeline_parts("reference")
            recipe_file = Path(work) / f"{bits.lower()}-sym.recipe.json"
            recipe_file.write_text(default_recipe(bits, unet, w_symmetric=True).to_json())
        quantize_model("reference", method, bits, out, recipe_file, num_steps=steps, progress=False)
    return out


def bundle_for(
    work: Path, model: str | Path, name: str, placement: str = "ort", steps: int = 20, fp: bool = False
) -> Path:
    out = Path(work) / f"{name}-{placement}.edgediff"
    if not (out / "manifest.json").is_file():
        device = "x86-cpu" if placement == "ort" else "jetson-orin-nano-8gb"
        opts = ExportOptions(placement=placement, device=device, steps=steps, allow_fp=fp)
        export_bundle(model, out, opts, progress=False)
    return out
