"""Quantized reference models and bundles shared by the benchmarks (built once into a work folder).

Every cached build is named with `source_digest` of what produced it (the model folder and the
quantization or export code), so a changed model or exporter never reuses a stale build.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from edgediff.bitspec import BitSetting
from edgediff.errors import EdgediffError
from edgediff.methods import quantize_model
from edgediff_export.bundle import ExportOptions, export_bundle

ROOT = Path(__file__).resolve().parents[1]
QUANT_CODE = (ROOT / "edgediff" / "quant", ROOT / "edgediff" / "methods")
EXPORT_CODE = (ROOT / "export" / "edgediff_export",)


def bits_label(text: str) -> str:
    """argparse type of the benchmarks' `--bits`: the setting's label (`w4a8` -> `W4A8`), which
    keys their result rows; parsed by `BitSetting`, a bad value is a usage error."""
    try:
        return BitSetting.parse(text).label
    except EdgediffError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def source_digest(*sources: str | Path) -> str:
    """12 hex digits of SHA-256 over the files under `sources` (paths and contents, sorted); a
    source that is not an existing path (e.g. "reference") enters as its name."""
    h = hashlib.sha256()
    for src in sources:
        path = Path(src)
        if not path.exists():
            h.update(f"name:{src}".encode())
            continue
        files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
        for f in files:
            if "__pycache__" in f.parts:
                continue
            h.update(str(f.relative_to(path) if f != path else f.name).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


def quantized_folder(
    work: Path, bits: str, method: str = "ptq", steps: int = 20, symmetric_weights: bool = False
) -> Path:
    """The reference model quantized with `method` at `bits` (default recipe; `symmetric_weights`
    sets `w_symmetric` on every layer), built once under `work`."""
    sym = "-sym" if symmetric_weights else ""
    out = Path(work) / f"{bits.lower()}{sym}-{method}-{steps}-{source_digest(*QUANT_CODE)}"
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
    out = Path(work) / f"{name}-{placement}-{source_digest(model, *EXPORT_CODE)}.edgediff"
    if not (out / "manifest.json").is_file():
        device = "x86-cpu" if placement == "ort" else "jetson-orin-nano-8gb"
        opts = ExportOptions(placement=placement, device=device, steps=steps, allow_fp=fp)
        export_bundle(model, out, opts, progress=False)
    return out
