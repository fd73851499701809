"""Quantized reference models and bundles shared by the benchmarks (built once into a work folder)."""

from __future__ import annotations

from pathlib import Path

from edgediff.methods import quantize_model
from edgediff_export.bundle import ExportOptions, export_bundle


def quantized_folder(work: Path, bits: str, method: str = "ptq", steps: int = 20) -> Path:
    out = Path(work) / f"{bits.lower()}-{method}-{steps}"
    if not (out / "recipe.json").is_file():
        quantize_model("reference", method, bits, out, num_steps=steps, progress=False)
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
