"""Runtime benchmark: end-to-end image generation, W8A8 bundle on ONNX Runtime CPU vs the
PyTorch FP32 model, same DDIM sampler and steps, in alternating fresh processes.

Usage: `python -m bench.runtime [--work /tmp/edgediff-bench] [--steps 20] [--batches 1 64] [--repeats 3]`.
Writes bench/results/runtime.json and the `runtime` section of docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from bench._models import bundle_for, quantized_folder
from bench._report import host_info, markdown_table, update_results_section, write_json

WORKER = Path(__file__).resolve().parent / "_runtime_worker.py"


def run(kind: str, target: str, batch: int, steps: int, threads: int) -> dict:
    res = subprocess.run(
        [sys.executable, str(WORKER), kind, target, str(batch), str(steps), str(threads)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/edgediff-bench")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    work = Path(args.work)
    bundle = bundle_for(
        work, quantized_folder(work, "W8A8", steps=args.steps), "w8a8", "ort", steps=args.steps
    )
    rows, result = [], {"host": host_info(), "steps": args.steps, "threads": args.threads, "runs": []}
    for batch in args.batches:
        runs = {"torch": [], "ort": []}
        for _ in range(args.repeats):  # alternate so that both see the same machine state
            runs["torch"].append(run("torch", "reference", batch, args.steps, args.threads))
            runs["ort"].append(run("ort", str(bundle), batch, args.steps, args.threads))
        t_torch = np.array([r["seconds"] for r in runs["torch"]])
        t_ort = np.array([r["seconds"] for r in runs["ort"]])
        speedup = float(np.median(t_torch / t_ort))
        entry = {
            "batch": batch,
            "torch_fp32": runs["torch"],
            "ort_w8a8": runs["ort"],
            "speedup_median": speedup,
        }
        result["runs"].append(entry)
        rows.append(
            [
                batch,
                f"{1e3 * np.median(t_torch) / batch:.1f}",
                f"{1e3 * np.median(t_ort) / batch:.1f}",
                f"{speedup:.2f}x",
                f"{max(r['peak_rss_mb'] for r in runs['torch']):.0f}",
                f"{max(r['peak_rss_mb'] for r in runs['ort']):.0f}",
                str(any(r["torch_loaded"] for r in runs["ort"])),
            ]
        )
        print(batch, speedup, flush=True)
    write_json("runtime", result)
    table = markdown_table(
        [
            "batch",
            "PyTorch FP32 ms/image",
            "ORT W8A8 bundle ms/image",
            "speed-up",
            "PyTorch peak RSS MB",
            "runtime peak RSS MB",
            "torch imported by runtime",
        ],
        rows,
    )
    update_results_section(
        "runtime",
        f"### Runtime: end-to-end generation, {args.steps} DDIM steps (`python -m bench.runtime`, "
        f"{args.threads} threads, median of {args.repeats} alternating fresh-process runs per side)\n\n"
        + table
        + "\n",
    )


if __name__ == "__main__":
    main()
