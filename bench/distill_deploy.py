"""Distilled, then quantized, then exported: quality and end-to-end latency.

A few-step distilled student (default: the 4-step RDD student written by `bench.distill`) is
quantized with `ptq` at W8A8 and W4A8 for its own step count, exported to an ONNX bundle for the
x86-cpu profile, and run by the torch-free runtime (`edgediff_runtime.pipeline.sample` on ONNX
Runtime CPU). Reported:

* quality: FD of the bundle's images (runtime sampler, the same seeded noise as `bench.distill`),
  with paired PSNR / class agreement against the FP32 student bundle;
* latency: end-to-end generation per image through the same runtime, interleaved round by round
  in one process, for the FP32 teacher bundle at 256 and 50 DDIM steps and each student bundle at
  its own step count; speed-ups are ratios of medians from the same rounds.

Usage: `python -m bench.distill_deploy [--student DIR] [--samples 1000] [--seeds 0 1] [--rounds 5]`.
Writes bench/results/distill_deploy.json and the `distill-deploy` section of docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from bench._models import EXPORT_CODE, QUANT_CODE, bits_label, source_digest
from bench._report import RESULTS_DIR, host_info, markdown_table, update_results_section
from edgediff.methods import quantize_model
from edgediff.reference.classifier import load_classifier
from edgediff.reference.data import load_digits16
from edgediff.reference.metrics import classify, evaluate_samples
from edgediff.reference.model import BUNDLED_CLASSIFIER
from edgediff.sampling import seeded_noise
from edgediff_export.bundle import ExportOptions, export_bundle
from edgediff_runtime.backends import open_backend
from edgediff_runtime.bundle import load_bundle
from edgediff_runtime.pipeline import sample

#: where `python -m bench.distill` leaves the 4-step RDD student
DEFAULT_STUDENT = Path(__file__).resolve().parents[1] / "scratch" / "distill" / "models" / "rdd-8to4"
TEACHER_STEPS = (256, 50)


def _bundle(model: str | Path, out: Path, steps: int, fp: bool) -> Path:
    if not (out / "manifest.json").is_file():
        export_bundle(model, out, ExportOptions(steps=steps, device="x86-cpu", allow_fp=fp), progress=False)
    return out


def _backend(path: Path, threads: int):
    bundle = load_bundle(path)
    backend = open_backend(
        "ort",
        bundle.model_path,
        threads=threads,
        disabled_optimizers=bundle.manifest.onnx.ort_disabled_optimizers,
    )
    return bundle, backend


def _generate(bundle, backend, n: int, seed: int, steps: int, chunk: int = 500) -> torch.Tensor:
    noise = seeded_noise(n, tuple(bundle.manifest.model.sample_shape), seed).numpy()
    out = [sample(bundle, backend, noise[i : i + chunk], steps).final for i in range(0, n, chunk)]
    return torch.from_numpy(np.concatenate(out)).clamp(-1.0, 1.0)


def _latency(runs: dict[str, tuple], rounds: int, batch: int, block_seconds: float = 1.0) -> dict[str, float]:
    """Median seconds per image of each `(bundle, backend, steps)`, interleaved round by round.

    Within a round every model runs for about `block_seconds` (a short sampler is repeated, a
    long one runs once), so a 40 ms student and a 3 s teacher see the same load on a shared host.
    """
    times: dict[str, list[float]] = {k: [] for k in runs}
    noise = np.random.default_rng(0).standard_normal((batch, 1, 16, 16), dtype=np.float32)
    reps = {}
    for key, (bundle, backend, steps) in runs.items():  # warm-up and a first estimate
        sample(bundle, backend, noise, steps)
        t = time.perf_counter()
        sample(bundle, backend, noise, steps)
        reps[key] = max(1, round(block_seconds / (time.perf_counter() - t)))
    for _ in range(rounds):
        for key, (bundle, backend, steps) in runs.items():
            t = time.perf_counter()
            for _ in range(reps[key]):
                sample(bundle, backend, noise, steps)
            times[key].append((time.perf_counter() - t) / (reps[key] * batch))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default=str(DEFAULT_STUDENT), help="a distilled diffusers folder")
    ap.add_argument("--student-steps", type=int, default=4)
    ap.add_argument("--bits", nargs="+", type=bits_label, default=["W8A8", "W4A8"])
    ap.add_argument(
        "--symmetric-bits",
        nargs="*",
        type=bits_label,
        default=["W8A8"],
        help="settings quantized with --symmetric-weights (int8 ONNX weights, ORT's u8s8 kernels)",
    )
    ap.add_argument("--work", default="/tmp/edgediff-distill-deploy")
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS_DIR / "distill_deploy.json"))
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args()
    student = Path(args.student)
    if not (student / "unet").is_dir() and not (student / "config.json").is_file():
        raise SystemExit(
            f"error: {student} is not a distilled model folder; run python -m bench.distill first"
        )
    # one cache folder per (student, quantization and export code): never a stale build of another student
    work = Path(args.work) / source_digest(student, *QUANT_CODE, *EXPORT_CODE)
    work.mkdir(parents=True, exist_ok=True)
    steps = args.student_steps
    t0 = time.perf_counter()
    bundles = {
        "teacher FP32": _bundle("reference", work / "teacher-fp32.edgediff", 50, fp=True),
        "student FP32": _bundle(student, work / "student-fp32.edgediff", steps, fp=True),
    }
    for bits in args.bits:
        sym = bits in args.symmetric_bits
        q = work / f"student-{bits.lower()}{'-symw' if sym else ''}-ptq"
        if not (q / "recipe.json").is_file():
            quantize_model(student, "ptq", bits, q, num_steps=steps, progress=False, symmetric_weights=sym)
        bundles[f"student {bits}"] = _bundle(q, work / f"{q.name}.edgediff", steps, fp=False)
    build_seconds = time.perf_counter() - t0
    opened = {k: _backend(p, args.threads) for k, p in bundles.items()}

    classifier = load_classifier(BUNDLED_CLASSIFIER)
    real, _ = classify(classifier, load_digits16()[0])
    quality: dict[str, list[dict]] = {}
    reference = {}
    for key in [k for k in opened if k.startswith("student")]:
        bundle, backend = opened[key]
        quality[key] = []
        for seed in args.seeds:
            images = _generate(bundle, backend, args.samples, seed, steps)
            if key == "student FP32":
                reference[seed] = images
            paired = None if key == "student FP32" else reference[seed]
            quality[key].append(evaluate_samples(classifier, images, real, paired).to_dict())
        print(key, [round(s["fd"], 2) for s in quality[key]], flush=True)

    latency = {}
    for batch in args.batches:
        runs = {f"teacher FP32 @{s}": (*opened["teacher FP32"], s) for s in TEACHER_STEPS}
        runs |= {f"{k} @{steps}": (*opened[k], steps) for k in opened if k.startswith("student")}
        med = _latency(runs, args.rounds, batch)
        latency[str(batch)] = {
            k: {
                "seconds_per_image": v,
                "speedup_vs_teacher_256": med[f"teacher FP32 @{TEACHER_STEPS[0]}"] / v,
                "speedup_vs_teacher_50": med[f"teacher FP32 @{TEACHER_STEPS[1]}"] / v,
            }
            for k, v in med.items()
        }
        print(
            batch,
            {k: round(v["speedup_vs_teacher_256"], 1) for k, v in latency[str(batch)].items()},
            flush=True,
        )
    result = {
        "host": host_info(),
        "student": str(student),
        "student_steps": steps,
        "quantization": "ptq (calibrated on the student's own trajectories); symmetric weights for "
        + (", ".join(args.symmetric_bits) or "none"),
        "samples": args.samples,
        "seeds": args.seeds,
        "threads": args.threads,
        "rounds": args.rounds,
        "build_seconds": build_seconds,
        "bundle_bytes": {k: (p / "model.onnx").stat().st_size for k, p in bundles.items()},
        "quality": quality,
        "latency": latency,
        "note": "Runtime = edgediff_runtime on ONNX Runtime CPU for every row (teacher included). "
        "The teacher's FD at 50/256 steps is in bench/results/distill.json (same seeds and sample count).",
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if not args.no_docs:
        write_docs(result)


def _fd(scores: list[dict]) -> str:
    fds = [s["fd"] for s in scores]
    return f"{statistics.mean(fds):.1f} ({', '.join(f'{f:.1f}' for f in fds)})"


def write_docs(result: dict) -> None:
    teacher = _teacher_fd()
    rows = []
    b1 = result["latency"].get("1", {})
    big = max(result["latency"], key=int)
    for key, lat in b1.items():
        model = key.split(" @")[0]
        steps = int(key.split("@")[1])
        if model == "teacher FP32":
            fd = teacher.get(steps, "see distill table")
        else:
            fd = _fd(result["quality"][model])
        psnr = ""
        if model != "teacher FP32" and model != "student FP32":
            psnr = f"{statistics.mean(s['paired_psnr'] for s in result['quality'][model]):.1f}"
        size = result["bundle_bytes"][model] / 1e6
        rows.append(
            [
                model,
                steps,
                fd,
                psnr,
                f"{size:.2f}",
                f"{lat['seconds_per_image'] * 1e3:.1f}",
                f"{lat['speedup_vs_teacher_256']:.1f}x",
                f"{result['latency'][big][key]['speedup_vs_teacher_256']:.1f}x",
            ]
        )
    md = (
        f"### Distilled + quantized bundle vs the FP32 teacher (`python -m bench.distill_deploy`, "
        f"{result['samples']} samples x seeds {result['seeds']}, ONNX Runtime CPU, "
        f"{result['threads']} threads)\n\n"
        + markdown_table(
            [
                "model",
                "steps",
                "FD mean (per seed)",
                "paired PSNR vs FP32 student dB",
                "ONNX MB",
                "ms/image batch 1",
                "speed-up vs teacher@256, batch 1",
                f"speed-up vs teacher@256, batch {big}",
            ],
            rows,
        )
        + "\n\nEvery row runs through the same runtime (numpy sampler + ONNX Runtime); speed-ups are ratios "
        "of medians from interleaved rounds in one process. Student quantization: `ptq` calibrated on the "
        f"student's own trajectories; {result['quantization'].split('; ')[1]}.\n"
    )
    update_results_section("distill-deploy", md)


def _teacher_fd() -> dict[int, str]:
    path = RESULTS_DIR / "distill.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    out = {}
    for row in data.get("rows", []):
        if row.get("method") in ("teacher", "ddim", "teacher-ddim") and "per_seed" in row:
            out[int(row["steps"])] = _fd(row["per_seed"]) + " (distill.json)"
    return out


if __name__ == "__main__":
    main()
