"""Parity against golden references (docs/design.md section 4), torch-free, on the device.

Level 2 (per step): replay the golden noise through the bundle's sampler and backend and compare
every step's latent with the PyTorch latent: max abs error and PSNR with data range 2.0
(latents and images live in [-1, 1]): PSNR = 10 log10(2^2 / MSE). Then the final output.
PASS/FAIL against ``manifest.parity.tolerances``.

Level 3 (per image, when the golden file has ``fp_final``): PSNR and max abs error of the final
images versus the full-precision model: a quality number, checked only when the manifest sets
``fp_psnr_min`` / ``fp_max_abs``. Level 1 (per layer) needs the PyTorch model and runs at export.
"""

from __future__ import annotations

import math
import platform

import numpy as np

from edgediff_runtime.backends import Backend
from edgediff_runtime.bundle import Bundle
from edgediff_runtime.errors import RuntimeStageError
from edgediff_runtime.golden import Golden, load_golden
from edgediff_runtime.pipeline import Guidance, sample
from edgediff_runtime.samplers import make_sampler

DATA_RANGE = 2.0

# tolerance key -> (measured quantity in the report, comparison)
CHECKS = {
    "latent_max_abs": ("latent_max_abs", "<="),
    "latent_psnr_min": ("latent_psnr_min", ">="),
    "final_max_abs": ("final_max_abs", "<="),
    "final_psnr_min": ("final_psnr", ">="),
    "fp_max_abs": ("fp_max_abs", "<="),
    "fp_psnr_min": ("fp_psnr", ">="),
}


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = DATA_RANGE) -> float:
    """Peak signal-to-noise ratio in dB; ``inf`` when identical."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(data_range**2 / mse)


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute elementwise difference."""
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _json_db(value: float) -> float | None:
    """PSNR for JSON: ``None`` stands for +inf (identical)."""
    return None if math.isinf(value) else round(value, 4)


def run_parity(
    bundle: Bundle, backend: Backend, golden: Golden | None = None, backend_name: str = "ort"
) -> dict:
    """Level-2 (+ level-3 when possible) parity of ``bundle`` on ``backend``; returns the JSON report."""
    golden = load_golden(bundle) if golden is None else golden
    spec = bundle.manifest.sampler
    steps = golden.steps
    sampler = make_sampler(spec, steps)
    if sampler.timesteps.shape != golden.timesteps.shape or not np.allclose(
        sampler.timesteps.astype(np.float64), golden.timesteps.astype(np.float64)
    ):
        raise RuntimeStageError(
            f"golden timesteps {golden.timesteps.tolist()[:6]} differ from the sampler's "
            f"{sampler.timesteps.tolist()[:6]}: the manifest's sampler does not match the recording; "
            "re-export"
        )
    if sampler.stochastic and golden.step_noise is None:
        raise RuntimeStageError(
            f"sampler {spec.kind} is stochastic but the golden file "
            "has no step_noise; re-record it with step_noise"
        )
    guidance = None
    if golden.guidance_scale is not None:
        guidance = Guidance(scale=golden.guidance_scale, uncond=golden.null_cond, cond=golden.cond)
    result = sample(
        bundle,
        backend,
        golden.noise,
        steps,
        step_noise=golden.step_noise,
        keep_latents=True,
        extra_feeds=None if guidance is not None else golden.cond,
        guidance=guidance,
    )
    per_step = []
    for i, latent in enumerate(result.latents):
        per_step.append(
            {
                "step": i,
                "timestep": float(golden.timesteps[i]),
                "max_abs": max_abs(latent, golden.latents[i]),
                "psnr": _json_db(psnr(latent, golden.latents[i])),
            }
        )
    psnrs = [math.inf if p["psnr"] is None else p["psnr"] for p in per_step]
    measured: dict[str, float] = {
        "latent_max_abs": max(p["max_abs"] for p in per_step),
        "latent_psnr_min": min(psnrs),
        "final_max_abs": max_abs(result.final, golden.final),
        "final_psnr": psnr(result.final, golden.final),
    }
    level3 = None
    if golden.fp_final is not None:
        measured["fp_psnr"] = psnr(result.final, golden.fp_final)
        measured["fp_max_abs"] = max_abs(result.final, golden.fp_final)
        level3 = {
            "psnr_vs_fp": _json_db(measured["fp_psnr"]),
            "max_abs_vs_fp": measured["fp_max_abs"],
            "pytorch_psnr_vs_fp": _json_db(psnr(golden.final, golden.fp_final)),
            "pytorch_max_abs_vs_fp": max_abs(golden.final, golden.fp_final),
        }
    tolerances = dict(bundle.manifest.parity.tolerances)
    checks = []
    for key, limit in tolerances.items():
        quantity, op = CHECKS[key]
        if quantity not in measured:
            continue  # e.g. fp_psnr_min without fp_final in the golden file
        value = measured[quantity]
        ok = value <= limit if op == "<=" else value >= limit
        shown = None if math.isinf(value) else value
        checks.append({"name": key, "value": shown, "op": op, "limit": limit, "passed": ok})
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:  # pragma: no cover - trt-only device
        ort_version = None
    return {
        "bundle": bundle.name,
        "backend": backend_name,
        "host": {
            "machine": platform.machine(),
            "python": platform.python_version(),
            "onnxruntime": ort_version,
        },
        "sampler": {"kind": spec.kind, "steps": steps, "prediction_type": spec.prediction_type},
        "batch": int(golden.noise.shape[0]),
        "level2": {
            "per_step": per_step,
            "latent_max_abs": measured["latent_max_abs"],
            "latent_psnr_min": _json_db(measured["latent_psnr_min"]),
            "final_max_abs": measured["final_max_abs"],
            "final_psnr": _json_db(measured["final_psnr"]),
        },
        "level3": level3,
        "tolerances": tolerances,
        "tolerance_source": bundle.manifest.parity.tolerance_source,
        "checks": checks,
        "passed": all(c["passed"] for c in checks),
        "export_bounds": bundle.manifest.parity.bounds,
        "note": "psnr null = identical (infinite); data range 2.0",
    }


def format_report(report: dict) -> str:
    """Human summary of a parity report, one check per line."""

    def db(v: float | None) -> str:
        return "inf" if v is None else f"{v:.2f} dB"

    l2 = report["level2"]
    lines = [
        f"parity of {report['bundle']} ({report['backend']}, {report['sampler']['kind']}, "
        f"{report['sampler']['steps']} steps, batch {report['batch']})",
        f"  level 2: worst step max abs {l2['latent_max_abs']:.3g}, worst step PSNR "
        f"{db(l2['latent_psnr_min'])}, "
        f"final max abs {l2['final_max_abs']:.3g}, final PSNR {db(l2['final_psnr'])}",
    ]
    if report["level3"]:
        l3 = report["level3"]
        lines.append(
            f"  level 3: vs full precision PSNR {db(l3['psnr_vs_fp'])} (PyTorch: "
            f"{db(l3['pytorch_psnr_vs_fp'])}), "
            f"max abs {l3['max_abs_vs_fp']:.3g}"
        )
    for c in report["checks"]:
        value = "inf" if c["value"] is None else f"{c['value']:.4g}"
        lines.append(f"  {'ok  ' if c['passed'] else 'FAIL'} {c['name']}: {value} {c['op']} {c['limit']:g}")
    pipe = report.get("pipeline")
    if pipe:
        lines.append(
            f"  pipeline ({pipe['prompt']!r}): text embeddings max abs {pipe['text_embedding_max_abs']:.3g}, "
            f"VAE decoder PSNR {db(pipe['vae_psnr'])}, prompt -> image PSNR {db(pipe['image_psnr'])}"
        )
        for c in pipe["checks"]:
            value = (
                c["value"] if isinstance(c["value"], bool) else "inf" if c["value"] is None else c["value"]
            )
            shown = value if isinstance(value, (bool, str)) else f"{value:.4g}"
            lines.append(f"  {'ok  ' if c['passed'] else 'FAIL'} {c['name']}: {shown} {c['op']} {c['limit']}")
    lines.append(f"  tolerances: {report['tolerance_source']}")
    bounds = report.get("export_bounds")
    if bounds and not bounds.get("within", True):
        lines.append(f"  WARNING: {bounds['message']}")
    lines.append("PASS" if report["passed"] else "FAIL")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ prompt pipelines
#: pipeline tolerance key -> (measured quantity, comparison)
PIPELINE_CHECKS = {
    "text_embedding_max_abs": ("text_embedding_max_abs", "<="),
    "vae_psnr_min": ("vae_psnr", ">="),
    "image_psnr_min": ("image_psnr", ">="),
}


def load_pipeline_golden(bundle: Bundle) -> dict[str, np.ndarray]:
    """The pipeline's golden references (token ids, text embeddings, noise, final latent, image)."""
    from edgediff_runtime.prompts import pipeline_of

    spec = pipeline_of(bundle)
    path = bundle.root / str(spec.golden)
    if spec.golden is None or not path.is_file():
        raise RuntimeStageError(
            f"bundle {bundle.name} has no {spec.golden}; copy it from the exported bundle to run parity"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            golden = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise RuntimeStageError(
            f"cannot read {spec.golden} of bundle {bundle.name}: {exc}; re-export it"
        ) from None
    missing = [k for k in ("ids", "text_embeddings", "noise", "latent", "image") if k not in golden]
    if missing:
        raise RuntimeStageError(
            f"{spec.golden} of bundle {bundle.name} lacks {', '.join(missing)}; re-export it"
        )
    return golden


def pipeline_parity(bundle: Bundle, open_onnx=None, golden: dict[str, np.ndarray] | None = None) -> dict:
    """Per component and end to end against the PyTorch references: the tokenizer's ids (exact), the
    text encoder's embeddings (max abs), the VAE decoder's image of the golden latent (PSNR, range
    2) and the prompt -> image run from the golden noise (PSNR of the images, range 2)."""
    from edgediff_runtime.backends import open_backend
    from edgediff_runtime.prompts import (
        PromptTokenizer,
        decode_latents,
        encode_text,
        pipeline_of,
        text_to_image,
    )

    spec = pipeline_of(bundle)
    golden = load_pipeline_golden(bundle) if golden is None else golden
    if open_onnx is None:

        def open_onnx(path):
            return open_backend("ort", path)

    tokenize = PromptTokenizer(bundle.root / spec.component("tokenizer").file, spec.max_length, spec.pad_id)
    ids = tokenize([spec.golden_prompt, spec.golden_negative_prompt])
    text = open_onnx(bundle.root / spec.component("text_encoder").file)
    emb = encode_text(text, spec, golden["ids"])
    del text
    vae = open_onnx(bundle.root / spec.component("vae_decoder").file)
    decoded = decode_latents(vae, spec, golden["latent"])
    del vae
    run = text_to_image(
        bundle,
        open_onnx,
        [spec.golden_prompt],
        golden["noise"],
        negative_prompt=spec.golden_negative_prompt,
        guidance=bundle.manifest.sampler.guidance_scale,
        steps=bundle.manifest.sampler.steps,
        load="sequential",
    )
    measured = {
        "text_embedding_max_abs": max_abs(emb, golden["text_embeddings"]),
        "vae_psnr": psnr(decoded, golden["image"]),
        "image_psnr": psnr(run.images, golden["image"]),
    }
    checks = [
        {
            "name": "token_ids_equal",
            "value": bool(np.array_equal(ids, golden["ids"])),
            "op": "==",
            "limit": True,
            "passed": bool(np.array_equal(ids, golden["ids"])),
        }
    ]
    for key, limit in spec.tolerances.items():
        quantity, op = PIPELINE_CHECKS[key]
        value = measured[quantity]
        ok = value <= limit if op == "<=" else value >= limit
        checks.append(
            {
                "name": key,
                "value": _json_db(value) if op == ">=" else value,
                "op": op,
                "limit": limit,
                "passed": ok,
            }
        )
    return {
        "prompt": spec.golden_prompt,
        "token_ids_equal": checks[0]["passed"],
        "text_embedding_max_abs": measured["text_embedding_max_abs"],
        "vae_psnr": _json_db(measured["vae_psnr"]),
        "image_psnr": _json_db(measured["image_psnr"]),
        "checks": checks,
        "passed": all(c["passed"] for c in checks),
    }
