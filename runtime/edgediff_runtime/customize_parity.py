"""Parity of a customization bundle: the runtime's MCA-Ctrl against PyTorch's on one recorded case.

The golden case (`reference/customize_golden.npz`) holds the inputs of one editing run (subject,
condition, masks, the target's conditioning rows, the guidance scale) and what PyTorch MCA-Ctrl
(edgediff/customize/pipeline.py) computed from them: the inverted states of subject and condition,
the target latent after every step, the image. The runtime repeats the run with the bundle's graph
and compares every latent: max abs error and PSNR with data range 2 (as `parity.py`), the worst
over the inversion states and the target steps against `latent_*`, the image against `final_*`
of `manifest.parity.tolerances`. The report has the layout of `parity.run_parity`'s, so
`parity.format_report` prints it.
"""

from __future__ import annotations

import io
import math
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgediff_runtime._atomic import atomic_path
from edgediff_runtime.backends import Backend
from edgediff_runtime.bundle import Bundle
from edgediff_runtime.customize import CustomizeInputs, customize
from edgediff_runtime.customize_spec import CustomizeSpec, load_customize_spec
from edgediff_runtime.errors import RuntimeStageError
from edgediff_runtime.parity import CHECKS, _json_db, max_abs, psnr

_INPUTS = ("subject", "condition", "subject_mask", "condition_mask")
_OUTPUTS = ("subject_states", "condition_states", "trajectory", "image")


@dataclass
class CustomizeGolden:
    """One PyTorch MCA-Ctrl run: its inputs and its latents (`CustomizeRun`'s fields)."""

    inputs: CustomizeInputs
    subject_states: np.ndarray
    condition_states: np.ndarray
    trajectory: np.ndarray
    image: np.ndarray


def save_customize_golden(folder: Path, rel: str, golden: CustomizeGolden) -> Path:
    """Write the golden case to `folder/rel` atomically (conditioning as `cond__<input>` /
    `null__<input>`, the scale as `guidance`, NaN for none)."""
    g = golden.inputs
    arrays = {k: np.asarray(getattr(g, k)) for k in _INPUTS}
    arrays.update({k: np.asarray(getattr(golden, k), dtype=np.float32) for k in _OUTPUTS})
    arrays.update({f"cond__{k}": v for k, v in g.cond.items()})
    arrays.update({f"null__{k}": v for k, v in (g.null or {}).items()})
    arrays["guidance"] = np.asarray(np.nan if g.guidance is None else g.guidance, dtype=np.float64)
    out = Path(folder) / rel
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    with atomic_path(out) as tmp:
        tmp.write_bytes(buf.getvalue())
    return out


def load_customize_golden(bundle: Bundle, spec: CustomizeSpec) -> CustomizeGolden:
    """The bundle's golden case (checksum verified by `load_bundle`)."""
    if spec.golden is None or not (bundle.root / spec.golden).is_file():
        raise RuntimeStageError(
            f"bundle {bundle.name} has no customization golden case; copy reference/ from the exported "
            "bundle or re-export it"
        )
    try:
        with np.load(bundle.root / spec.golden, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise RuntimeStageError(
            f"cannot read {spec.golden} of bundle {bundle.name}: {exc}; re-export it"
        ) from None
    missing = [k for k in (*_INPUTS, *_OUTPUTS, "guidance") if k not in arrays]
    if missing:
        raise RuntimeStageError(
            f"{spec.golden} of bundle {bundle.name} lacks {', '.join(missing)}; re-export it"
        )
    scale = float(arrays["guidance"])
    null = {k.removeprefix("null__"): v for k, v in arrays.items() if k.startswith("null__")}
    inputs = CustomizeInputs(
        subject=arrays["subject"],
        condition=arrays["condition"],
        subject_mask=arrays["subject_mask"].astype(bool),
        condition_mask=arrays["condition_mask"].astype(bool),
        cond={k.removeprefix("cond__"): v for k, v in arrays.items() if k.startswith("cond__")},
        null=null or None,
        guidance=None if math.isnan(scale) else scale,
    )
    return CustomizeGolden(inputs, *(arrays[k] for k in _OUTPUTS))


def _mean_ms(seconds: list[float]) -> float | None:
    return round(1e3 * float(np.mean(seconds)), 3) if seconds else None


def run_customize_parity(bundle: Bundle, backend: Backend, backend_name: str = "ort") -> dict:
    """Replay the golden case on `backend`; the report of `parity.run_parity`'s layout (module doc)."""
    spec = load_customize_spec(bundle.root)
    golden = load_customize_golden(bundle, spec)
    run = customize(bundle, backend, spec, golden.inputs)
    per_step = []
    for what, mine, ref in (
        ("subject inversion", run.subject_states, golden.subject_states),
        ("condition inversion", run.condition_states, golden.condition_states),
        ("target", run.trajectory, golden.trajectory),
    ):
        if mine.shape != ref.shape:
            raise RuntimeStageError(
                f"{what}: the runtime made {list(mine.shape)} latents, the golden case has "
                f"{list(ref.shape)}; "
                "re-export the bundle"
            )
        for i in range(mine.shape[0]):
            per_step.append(
                {
                    "stream": what,
                    "step": i,
                    "max_abs": max_abs(mine[i], ref[i]),
                    "psnr": _json_db(psnr(mine[i], ref[i])),
                }
            )
    psnrs = [math.inf if p["psnr"] is None else p["psnr"] for p in per_step]
    measured = {
        "latent_max_abs": max(p["max_abs"] for p in per_step),
        "latent_psnr_min": min(psnrs),
        "final_max_abs": max_abs(run.image, golden.image),
        "final_psnr": psnr(run.image, golden.image),
    }
    tolerances = dict(bundle.manifest.parity.tolerances)
    checks = []
    for key, limit in tolerances.items():
        quantity, op = CHECKS[key]
        if quantity not in measured:
            continue
        value = measured[quantity]
        ok = value <= limit if op == "<=" else value >= limit
        checks.append(
            {
                "name": key,
                "value": None if math.isinf(value) else value,
                "op": op,
                "limit": limit,
                "passed": ok,
            }
        )
    n_invert = spec.steps * (1 + spec.invert_refine)
    # the control must act: the golden target differs from the condition inside M_C
    control = max_abs(
        golden.image * golden.inputs.condition_mask,
        golden.condition_states[-1] * golden.inputs.condition_mask,
    )
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:  # pragma: no cover - trt-only device
        ort_version = None
    s = bundle.manifest.sampler
    return {
        "bundle": bundle.name,
        "backend": backend_name,
        "host": {
            "machine": platform.machine(),
            "python": platform.python_version(),
            "onnxruntime": ort_version,
        },
        "sampler": {
            "kind": f"{s.kind} + MCA-Ctrl ({spec.describe()})",
            "steps": spec.steps,
            "prediction_type": s.prediction_type,
        },
        "batch": 1,
        "level2": {
            "per_step": per_step,
            "latent_max_abs": measured["latent_max_abs"],
            "latent_psnr_min": _json_db(measured["latent_psnr_min"]),
            "final_max_abs": measured["final_max_abs"],
            "final_psnr": _json_db(measured["final_psnr"]),
        },
        "level3": None,
        "golden_edit_max_abs_in_mask": control,
        "model_calls": len(run.call_seconds),
        # graph calls of the inversion (one group: 3 rows) and of the controlled loop (G groups)
        "inversion_call_ms": _mean_ms(run.call_seconds[:n_invert]),
        "loop_call_ms": _mean_ms(run.call_seconds[n_invert:]),
        "tolerances": tolerances,
        "tolerance_source": bundle.manifest.parity.tolerance_source,
        "checks": checks,
        "passed": bool(checks) and all(c["passed"] for c in checks),
        "export_bounds": bundle.manifest.parity.bounds,
        "note": "psnr null = identical (infinite); data range 2.0; latents: inversions and target steps",
    }
