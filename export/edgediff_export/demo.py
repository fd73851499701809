"""`edgediff demo`: the whole path on the bundled reference model, one numbered line per stage.

1. FP reference: sample and score (FD, confidence, class entropy).
2. Quantize: W8A8 `ptq` (timestep-aware calibration), scored against FP from the same noise.
3. Export: an ONNX Runtime bundle with golden references and derived parity tolerances.
4. Run on the "device": the torch-free `edgediff-run` CLI in a subprocess samples a grid and
   raw outputs (scored with the same metric) and checks parity against the golden references.
Writes `DIR/report.json`, `DIR/samples.png` (FP), `DIR/runtime_samples.png`, `DIR/parity.json`,
`DIR/parity.png`, and keeps the quantized folder and the bundle for inspection.
"""

from __future__ import annotations

import contextlib
import json
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
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
    """Run `edgediff-run` in a subprocess; its progress bar and errors go straight to our stderr."""
    res = subprocess.run(
        [sys.executable, "-m", "edgediff_runtime.cli", *args], stdout=subprocess.PIPE, text=True
    )
    if res.returncode not in (0, 1):
        raise ExportError(f"demo step '{what}' failed (exit {res.returncode}); its error is printed above")
    return res


class _Stages:
    """Numbered stage lines (`[2/6] quantize ... 70.1 s`) and the wall time of each stage."""

    def __init__(self, total: int, echo: bool) -> None:
        self.total, self.echo, self.index = total, echo, 0
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, key: str, what: str) -> Iterator[None]:
        self.index += 1
        prefix = f"[{self.index}/{self.total}] {what}"
        if self.echo:
            print(f"{prefix} ...", flush=True)
        t = time.perf_counter()
        yield
        self.times[key] = time.perf_counter() - t
        if self.echo:
            print(f"{prefix} ... {self.times[key]:.0f} s", flush=True)


def run_demo(
    out: Path, samples: int = 500, steps: int = 20, seed: int = 0, bits: str = "W8A8", echo: bool = True
) -> dict:
    """Run the demo stages; returns the report (also written to `out/report.json`).

    With `echo`, every stage prints a numbered line when it starts and when it ends (with its wall
    time) and shows its progress bar on stderr.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    st = _Stages(6, echo)
    with st.stage("fp_eval", f"FP reference: sample {samples} images, {steps} steps, score"):
        fp = evaluate(
            "reference", samples=samples, steps=steps, seed=seed, grid_out=out / "samples.png", progress=echo
        )
    qdir = out / f"{bits.lower()}-ptq"
    with st.stage("quantize", f"quantize: ptq {bits} -> {qdir}"):
        quantize_model("reference", "ptq", bits, qdir, seed=seed, num_steps=steps, progress=echo)
    with st.stage("quantized_eval", f"quantized model: sample {samples} images and score against FP"):
        quant = evaluate(
            qdir,
            samples=samples,
            steps=steps,
            seed=seed,
            grid_out=out / "quantized_samples.png",
            progress=echo,
        )
    bundle = out / f"{bits.lower()}.edgediff"
    with st.stage("export", f"export: ONNX bundle -> {bundle}"):
        export_bundle(
            qdir,
            bundle,
            ExportOptions(placement="ort", device="x86-cpu", steps=steps, seed=seed),
            progress=echo,
        )
    npy = out / "runtime_samples.npy"
    with st.stage("runtime_sample", f"run stage (edgediff-run, no torch): sample {samples} images"):
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
                "--save-npy",
                str(npy),
            ],
            "sample",
        )
        runtime_images = torch.from_numpy(np.load(npy))
        npy.unlink()
        runtime = evaluate_samples(
            load_classifier(BUNDLED_CLASSIFIER), runtime_images, real_features()
        ).to_dict()
    with st.stage("parity", "parity: levels 2 and 3 against the golden references"):
        par = _run_cli(
            ["parity", str(bundle), "--json", str(out / "parity.json"), "--plot", str(out / "parity.png")],
            "parity",
        )
    parity = json.loads((out / "parity.json").read_text())
    times = st.times

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
