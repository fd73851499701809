"""MPQ-DMv2 W2A4 bundle: size next to FP32 and W4A8, where its bytes go, parity.

Quantizes the reference model with `mpqdmv2` at W2A4 (binary residual, OOLRI additive LoRA,
per-step scales), exports it with the `ort` placement for x86-cpu and measures `model.onnx`
against the FP32 and W4A8 (`ptq`) bundles of the same exporter. The initializer bytes are split
by what they carry (additive LoRA, residual signs and alphas, integer codes, the rest), and the
bundle's level-2 parity is run on ONNX Runtime. The size does not depend on the fine-tuning
budget (only the structure counts), so a short one is used.

Usage: `python -m bench.export_mpqdmv2 [--work /tmp/edgediff-bench] [--updates 40]`.
Writes bench/results/export_mpqdmv2_w2a4.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench._models import QUANT_CODE, bundle_for, quantized_folder, source_digest
from bench._report import host_info, write_json

STEPS = 20


def initializer_bytes(onnx_path: Path) -> dict[str, int]:
    """Raw initializer bytes of `onnx_path` by category, from the initializer names."""
    import onnx

    model = onnx.load(str(onnx_path))
    out = {"additive_lora": 0, "residual_signs_alphas": 0, "residual_codes": 0, "other": 0}
    for init in model.graph.initializer:
        size = len(init.raw_data) if init.HasField("raw_data") else onnx.numpy_helper.to_array(init).nbytes
        name = init.name
        if "lora_" in name:
            out["additive_lora"] += size
        elif "res_signs" in name or "res_alpha" in name or "res_channels" in name:
            out["residual_signs_alphas"] += size
        elif "wq_i8" in name or "wz_i8" in name:
            out["residual_codes"] += size
        else:
            out["other"] += size
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/edgediff-bench")
    ap.add_argument("--updates", type=int, default=40)
    args = ap.parse_args()
    from edgediff.methods import quantize_model
    from edgediff_runtime.backends import open_backend
    from edgediff_runtime.bundle import load_bundle
    from edgediff_runtime.parity import run_parity

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    q = work / f"w2a4-mpqdmv2-{STEPS}-u{args.updates}-{source_digest(*QUANT_CODE)}"
    if not (q / "recipe.json").is_file():
        quantize_model("reference", "mpqdmv2", "W2A4", q, num_steps=STEPS, updates=args.updates)
    bundles = {
        "FP32": bundle_for(work, "reference", "fp32", fp=True),
        "W4A8 ptq": bundle_for(work, quantized_folder(work, "W4A8"), "w4a8"),
        "W2A4 mpqdmv2": bundle_for(work, q, f"w2a4-mpqdmv2-u{args.updates}"),
    }
    sizes = {k: (b / "model.onnx").stat().st_size for k, b in bundles.items()}
    bundle = load_bundle(bundles["W2A4 mpqdmv2"], verify=True)
    backend = open_backend(
        "ort", bundle.model_path, disabled_optimizers=bundle.manifest.onnx.ort_disabled_optimizers
    )
    parity = run_parity(bundle, backend)
    result = {
        "host": host_info(),
        "commands": [
            f"edgediff quantize --model reference --method mpqdmv2 --bits W2A4 --steps {STEPS} "
            f"--updates {args.updates} --out M",
            f"edgediff export onnx M --out M.edgediff --steps {STEPS} --device x86-cpu",
        ],
        "note": "Size does not depend on the fine-tuning budget (only the structure counts).",
        "onnx_bytes": sizes,
        "smaller_than_fp32": {k: sizes["FP32"] / v for k, v in sizes.items()},
        "initializer_bytes": initializer_bytes(bundles["W2A4 mpqdmv2"] / "model.onnx"),
        "custom_ops": sorted(c.name for c in bundle.manifest.onnx.custom_ops),
        "parity_passed": bool(parity["passed"]),
    }
    write_json("export_mpqdmv2_w2a4", result)
    print({k: f"{v / 1e6:.3f} MB" for k, v in sizes.items()}, result["initializer_bytes"], flush=True)
    print("parity passed:", result["parity_passed"])


if __name__ == "__main__":
    main()
