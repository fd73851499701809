"""`edgediff demo`: the whole path on the bundled reference model, in a few minutes on 2 cores.

1. FP reference: sample and score (FD, confidence, class entropy).
2. Quantize: W8A8 `ptq` (timestep-aware calibration), scored against FP from the same noise.
3. Export: an ONNX Runtime bundle with golden references and derived parity tolerances.
4. Run on the "device": the torch-free `edgediff-run` CLI in a subprocess samples a grid and
   raw outputs (scored with the same metric) and checks parity against the golden references.
Writes `DIR/report.json`, `DIR/samples.png` (FP), `DIR/runtime_samples.png`, `DIR/parity.json`,
`DIR/parity.png`, and keeps the quantized folder and the bundle for inspection.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from edgediff import __version__
from edgediff.methods import quantize_model
from edgediff.reference.classifier import load_classifier
from edgediff.reference.evaluate import evaluate, real_features
from edgediff.reference.metrics import evaluate_samples
from edgediff.reference.model import BUNDLED_CLASSIFIER
from edgediff.utils.atomic import atomic_file
from edgediff_export.bundle import ExportOptions, export_bundle
from edgediff_export.errors import ExportError


def _run_cli(args: list[str], what: str) -> subprocess.CompletedProcess:
    res = subprocess.run(
        [sys.executable, "-m", "edgediff_runtime.cli", *args], capture_output=True, text=True
    )
    if res.returncode not in (0, 1):
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise ExportError(f"demo step '{what}' failed: {last}")
    return res


def run_demo(out: Path, samples: int = 500, steps: int = 20, seed: int = 0, bits: str = "W8A8") -> dict:
    """Run the demo stages; returns the report (also written to `out/report.json`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t = time.perf_counter()
    fp = evaluate(
        "reference", samples=samples, steps=steps, seed=seed, grid_out=out / "samples.png", progress=False
    )
    times["fp_eval"] = time.perf_counter() - t

    t = time.perf_counter()
    qdir = out / f"{bits.lower()}-ptq"
    quantize_model("reference", "ptq", bits, qdir, seed=seed, num_steps=steps, progress=False)
    times["quantize"] = time.perf_counter() - t
    t = time.perf_counter()
    quant = evaluate(
        qdir, samples=samples, steps=steps, seed=seed, grid_out=out / "quantized_samples.png", progress=False
    )
    times["quantized_eval"] = time.perf_counter() - t

    t = time.perf_counter()
    bundle = out / f"{bits.lower()}.edgediff"
    export_bundle(qdir, bundle, ExportOptions(placement="ort", device="x86-cpu", steps=steps, seed=seed))
    times["export"] = time.perf_counter() - t

    t = time.perf_counter()
    npy = out / "runtime_samples.npy"
    _run_cli(
        [
            "sample",
            str(bundle),
            "--seed",
            str(seed),
            "--steps",
            str(steps),
            "--num",
            str(samples),
            "--out",
            str(out / "runtime_samples.png"),
            "--scale",
            "2",
            "--save-npy",
            str(npy),
        ],
        "sample",
    )
    times["runtime_sample"] = time.perf_counter() - t
    runtime_images = torch.from_numpy(np.load(npy))
    npy.unlink()
    runtime = evaluate_samples(load_classifier(BUNDLED_CLASSIFIER), runtime_images, real_features()).to_dict()

    t = time.perf_counter()
    par = _run_cli(
        ["parity", str(bundle), "--json", str(out / "parity.json"), "--plot", str(out / "parity.png")],
        "parity",
    )
    times["parity"] = time.perf_counter() - t
    parity = json.loads((out / "parity.json").read_text())

    report = {
        "edgediff": __version__,
        "host": platform.machine(),
        "settings": {"samples": samples, "ddim_steps": steps, "seed": seed, "bits": bits, "method": "ptq"},
        "fp_reference": fp,
        "quantized_pytorch": quant,
        "runtime_onnxruntime": runtime,
        "parity": {
            "passed": parity["passed"],
            "level2": {k: v for k, v in parity["level2"].items() if k != "per_step"},
            "level3": parity["level3"],
            "tolerances": parity["tolerances"],
        },
        "seconds": {k: round(v, 1) for k, v in times.items()},
        "summary": {
            "fp_fd": round(fp["fd"], 2),
            "quantized_fd": round(quant["fd"], 2),
            "runtime_fd": round(runtime["fd"], 2),
            "quantized_paired_psnr_db": round(quant["paired_psnr"], 1),
            "quantized_label_agree": round(quant["label_agree"], 3),
            "parity": "PASS" if parity["passed"] and par.returncode == 0 else "FAIL",
            "samples": samples,
            "steps": steps,
            "seconds": round(sum(times.values()), 1),
        },
    }
    with atomic_file(out / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    return report
