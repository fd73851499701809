"""Quality benchmark of the quantization baselines on the reference model.

For every bit setting and method (FP, `ptq`, `efficientdm`) the model is sampled with 50 DDIM
steps from the same seeded noise as the FP model (rows are paired), and scored: FD against the
real digits, paired PSNR and class agreement against the FP samples of the same seed. The
fine-tuning budget and the wall time of every row are recorded.

Usage: `python -m bench.quality [--bits W8A8 W4A8 ...] [--samples 2000] [--seeds 0 1] [--updates 1000]`.
It runs on the CPU (hours at the full size) or on a GPU (`--device cuda`, minutes). Results are
written after every row to bench/results/quality.json (so a cut-off run keeps what it measured)
and, at the end, as a table to docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from bench._models import bits_label
from bench._report import RESULTS_DIR, host_info, markdown_table, update_results_section
from edgediff.methods.efficientdm import EfficientDMConfig, run_efficientdm
from edgediff.methods.ptq import PTQConfig, run_ptq
from edgediff.quant import set_step
from edgediff.reference.classifier import load_classifier
from edgediff.reference.data import load_digits16
from edgediff.reference.metrics import classify, evaluate_samples
from edgediff.reference.model import BUNDLED_CLASSIFIER, load_pipeline_parts
from edgediff.sampling import ddim_sample, seeded_noise

BITS = ["W8A8", "W4A8", "W3A6", "W4A4", "W2A8", "W2A4"]


def sample(model, sched_cfg, n: int, steps: int, seed: int, per_step: bool) -> torch.Tensor:
    noise = seeded_noise(n, (1, 16, 16), seed)
    hook = (lambda i: set_step(model, i)) if per_step else None
    return ddim_sample(model, sched_cfg, noise, steps, set_step=hook, batch_size=2000).images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bits", nargs="+", type=bits_label, default=BITS)
    ap.add_argument("--methods", nargs="+", default=["ptq", "efficientdm"])
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--updates", type=int, default=1000, help="efficientdm fine-tuning updates per model")
    ap.add_argument("--batch", type=int, default=32, help="efficientdm fine-tuning batch")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=str(RESULTS_DIR / "quality.json"))
    ap.add_argument("--no-docs", action="store_true", help="do not update docs/RESULTS.md")
    ap.add_argument(
        "--cells",
        nargs="+",
        metavar="BITS:METHOD",
        help="run exactly these cells (e.g. W2A8:ptq W8A8:efficientdm) instead of --bits x --methods",
    )
    args = ap.parse_args()
    if args.cells:
        try:
            cells = [(bits_label(c.split(":")[0]), c.split(":")[1]) for c in args.cells]
        except (IndexError, argparse.ArgumentTypeError):
            raise SystemExit("error: --cells takes BITS:METHOD pairs, e.g. W2A8:ptq") from None
    else:
        cells = [(b, m) for b in args.bits for m in args.methods]
    device = torch.device(args.device)
    fp, scheduler = load_pipeline_parts("reference")
    fp = fp.to(device).eval()
    sched_cfg = {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}
    classifier = load_classifier(BUNDLED_CLASSIFIER)
    real, _ = classify(classifier, load_digits16()[0])
    result = {
        "host": host_info() | {"device": str(device)},
        "samples": args.samples,
        "steps": args.steps,
        "seeds": args.seeds,
        "updates": args.updates,
        "rows": [],
    }
    if device.type == "cuda":
        result["host"]["gpu"] = torch.cuda.get_device_name(0)

    def save() -> None:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(args.out).with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(args.out)

    fp_samples = {}
    t0 = time.perf_counter()
    for seed in args.seeds:
        fp_samples[seed] = sample(fp, sched_cfg, args.samples, args.steps, seed, per_step=False)
    fp_scores = [evaluate_samples(classifier, fp_samples[s], real).to_dict() for s in args.seeds]
    result["rows"].append(
        {"bits": "FP32", "method": "fp", "seconds": time.perf_counter() - t0, "per_seed": fp_scores}
    )
    save()
    print("FP", [round(r["fd"], 2) for r in fp_scores], flush=True)
    for bits, method in cells:
        t0 = time.perf_counter()
        record = {}
        if method == "ptq":
            model, _ = run_ptq(fp, sched_cfg, bits, cfg=PTQConfig(calib_steps=args.steps), progress=False)
            per_step = False
        else:
            cfg = EfficientDMConfig(
                num_steps=args.steps,
                trajectories=max(1, args.updates // args.steps),
                batch_size=args.batch,
            )
            model, _, record = run_efficientdm(fp, sched_cfg, bits, cfg=cfg, progress=False)
            per_step = True
        model = model.to(device).eval()
        quant_seconds = time.perf_counter() - t0
        scores = []
        for seed in args.seeds:
            images = sample(model, sched_cfg, args.samples, args.steps, seed, per_step)
            scores.append(evaluate_samples(classifier, images, real, fp_samples[seed]).to_dict())
        row = {
            "bits": bits,
            "method": method,
            "quantize_seconds": quant_seconds,
            "seconds": time.perf_counter() - t0,
            "training": record,
            "per_seed": scores,
        }
        result["rows"].append(row)
        save()
        print(bits, method, [(round(s["fd"], 1), round(s["paired_psnr"], 1)) for s in scores], flush=True)
    if not args.no_docs:
        write_docs(result)


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{np.mean(values):.1f} +- {np.std(values, ddof=1):.1f}"


def write_docs(result: dict) -> None:
    host = result["host"]
    where = host.get("gpu", host["machine"])
    rows = []
    for r in result["rows"]:
        fds = [s["fd"] for s in r["per_seed"]]
        psnr = [s.get("paired_psnr") for s in r["per_seed"]]
        agree = [s.get("label_agree") for s in r["per_seed"]]
        rows.append(
            [
                r["bits"],
                r["method"],
                *[f"{v:.1f}" for v in fds],
                _mean_sd(fds),
                "-" if psnr[0] is None else f"{np.mean(psnr):.1f}",
                "-" if agree[0] is None else f"{np.mean(agree):.3f}",
                r.get("training", {}).get("updates", 0) if r["method"] == "efficientdm" else 0,
                f"{r['seconds']:.0f}",
                r.get("measured_on", where),
            ]
        )
    seeds = result["seeds"]
    table = markdown_table(
        [
            "bits",
            "method",
            *[f"FD seed {s}" for s in seeds],
            "FD mean +- sd",
            "paired PSNR dB",
            "class agree",
            "fine-tune updates",
            "row seconds",
            "measured on",
        ],
        rows,
    )
    update_results_section(
        "quality",
        f"### Quantization baselines (`python -m bench.quality`, {result['samples']} samples, "
        f"{result['steps']} DDIM steps, seeds {seeds}; every row paired with the FP samples of the same "
        f"seed)\n\n{table}\n\n{result.get('note', '')}\n",
    )


if __name__ == "__main__":
    main()
