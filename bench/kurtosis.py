"""Where OMQ's target exists: the per-channel kurtosis of the pre-scaled weights of a model.

OMQ (docs/methods.md 1.2(3)-(4)) gives one bit more to the output channels whose pre-scaled weight
row `W̃_c = (W·diag(δ))_c` has the largest kurtosis `mean((w - μ)^4) / σ^4`. A Gaussian row scores
3, a Laplace row 6; a row with a few large outlier weights scores far higher. This benchmark builds
MPQ-DM's recipe (merged LoRA, SmoothQuant δ with α = 0.5, FP islands) for each model, calibrates it
on seeded FP DDIM trajectories (conditioned and guided for a label-conditioned model), and reports
the distribution of the kurtosis over every output channel of every quantized layer, before and
after the pre-scale, with the share of channels above 6 and above 10.

    python -m bench.kurtosis --models reference reference:canvas32

Writes bench/results/kurtosis.json and the `kurtosis` section of docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import time

import torch

from bench._report import host_info, markdown_table, update_results_section, write_json

THRESHOLDS = (6.0, 10.0)
QUANTILES = (0.5, 0.9, 0.99)


def summarize(values: torch.Tensor) -> dict:
    """Median, 90th and 99th percentile (linear interpolation), maximum, and the share of values
    strictly above each of `THRESHOLDS`."""
    v = values.double().flatten()
    q = torch.quantile(v, torch.tensor(QUANTILES, dtype=torch.float64))
    out = {f"p{int(p * 100)}": float(x) for p, x in zip(QUANTILES, q, strict=True)}
    out["max"] = float(v.max())
    out.update({f"share_above_{t:g}": float((v > t).double().mean()) for t in THRESHOLDS})
    out["channels"] = int(v.numel())
    return out


def channel_kurtosis(model: str, bits: str, calib_samples: int, calib_steps: int, seed: int) -> dict:
    """Kurtosis of every output channel of MPQ-DM's quantized layers, raw and pre-scaled."""
    from edgediff.methods.common import quantize_and_calibrate
    from edgediff.methods.mpqdm import MPQDMConfig, mpqdm_recipe
    from edgediff.models.conditioning import ConditioningRequest, build_conditioning
    from edgediff.models.loading import load_model
    from edgediff.quant import quant_layers
    from edgediff.quant.mixed import kurtosis

    loaded = load_model(model)
    fp = loaded.unet
    cond = build_conditioning(loaded, ConditioningRequest(), calib_samples, seed=seed, random_default=True)
    guidance = 3.0 if cond and cond.null is not None else None
    recipe = mpqdm_recipe(bits, fp, MPQDMConfig())
    t0 = time.perf_counter()
    quantized, _ = quantize_and_calibrate(
        fp,
        loaded.scheduler_config,
        recipe,
        calib_steps=calib_steps,
        calib_samples=calib_samples,
        seed=seed,
        table_steps=calib_steps,
        progress=False,
        conditioning=cond or None,
        guidance_scale=guidance,
    )
    raw, scaled, worst = [], [], []
    for name, layer in quant_layers(quantized).items():
        k_raw = kurtosis(layer.weight)
        k_scaled = kurtosis(layer.effective_weight())
        raw.append(k_raw)
        scaled.append(k_scaled)
        worst.append((float(k_scaled.max()), name))
    worst.sort(reverse=True)
    return {
        "model": model,
        "bits": bits,
        "calib_samples": calib_samples,
        "calib_steps": calib_steps,
        "guidance": guidance,
        "layers": len(raw),
        "raw": summarize(torch.cat(raw)),
        "prescaled": summarize(torch.cat(scaled)),
        "top_layers": [{"layer": n, "max_kurtosis": k} for k, n in worst[:5]],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def table(rows: list[dict]) -> str:
    header = ["model", "weights", "channels", "median", "p90", "p99", "max", "> 6", "> 10"]
    body = []
    for r in rows:
        for which in ("raw", "prescaled"):
            s = r[which]
            body.append(
                [
                    r["model"],
                    "W" if which == "raw" else "W·diag(δ)",
                    s["channels"],
                    s["p50"],
                    s["p90"],
                    s["p99"],
                    s["max"],
                    f"{100 * s['share_above_6']:.1f} %",
                    f"{100 * s['share_above_10']:.1f} %",
                ]
            )
    return markdown_table(header, body)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["reference", "reference:canvas32"])
    ap.add_argument("--bits", default="W4A4", help="the recipe's base setting (δ does not depend on it)")
    ap.add_argument("--calib-samples", type=int, default=16)
    ap.add_argument("--calib-steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args(argv)
    rows = [
        channel_kurtosis(m, args.bits, args.calib_samples, args.calib_steps, args.seed) for m in args.models
    ]
    write_json("kurtosis", {"host": host_info(), "rows": rows, "thresholds": list(THRESHOLDS)})
    md = table(rows)
    print(md)
    if not args.no_docs:
        update_results_section("kurtosis", "### Per-channel weight kurtosis (OMQ's target)\n\n" + md)


if __name__ == "__main__":
    main()
