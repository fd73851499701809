"""Benchmark of the reference model: FD at fixed sample counts and seeds, and the FD floor.

Usage: `python -m bench.reference [--model reference] [--compare PATH] [--samples 2000] [--steps 50]`.
Writes bench/results/reference.json and the `reference` section of docs/RESULTS.md. With
`--compare`, a second model (for example one retrained with `edgediff reference train`) is scored
at the same seeds, so the two FDs are paired.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bench._report import host_info, markdown_table, update_results_section, write_json
from edgediff.models.loading import load_model
from edgediff.reference.classifier import load_classifier
from edgediff.reference.evaluate import real_features, sample_model
from edgediff.reference.metrics import evaluate_samples, frechet_distance
from edgediff.reference.model import BUNDLED_CLASSIFIER


def real_vs_real_floor(seed: int = 0) -> float:
    feats = real_features()
    perm = torch.randperm(len(feats), generator=torch.Generator().manual_seed(seed)).numpy()
    half = len(feats) // 2
    return frechet_distance(feats[perm[:half]], feats[perm[half:]])


def score(model: str, samples: int, steps: int, seeds: list[int]) -> list[dict]:
    loaded = load_model(model)
    classifier = load_classifier(BUNDLED_CLASSIFIER)
    rows = []
    for seed in seeds:
        t0 = time.perf_counter()
        images = sample_model(loaded, samples, steps, seed, progress=True)
        report = evaluate_samples(classifier, images, real_features()).to_dict()
        seconds = time.perf_counter() - t0
        rows.append(report | {"model": model, "seed": seed, "steps": steps, "seconds": seconds})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="reference")
    ap.add_argument("--compare", help="a second model folder scored at the same seeds")
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = score(args.model, args.samples, args.steps, args.seeds)
    if args.compare:
        rows += score(args.compare, args.samples, args.steps, args.seeds)
    floor = real_vs_real_floor()
    summary = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        fds = [r["fd"] for r in rows if r["model"] == model]
        sd = float(np.std(fds, ddof=1)) if len(fds) > 1 else 0.0
        summary[model] = {"fd_mean": float(np.mean(fds)), "fd_sd": sd}
    result = {"host": host_info(), "rows": rows, "summary": summary, "real_vs_real_floor": floor}
    write_json("reference", result | {"samples": args.samples, "steps": args.steps})
    table = markdown_table(
        ["model", "samples", "DDIM steps", *[f"FD seed {s}" for s in args.seeds], "mean +- sd", "confidence"],
        [
            [
                m,
                args.samples,
                args.steps,
                *[r["fd"] for r in rows if r["model"] == m],
                f"{s['fd_mean']:.2f} +- {s['fd_sd']:.2f}",
                float(np.mean([r["confidence"] for r in rows if r["model"] == m])),
            ]
            for m, s in summary.items()
        ],
    )
    update_results_section(
        "reference",
        "### Reference model on this CPU (`python -m bench.reference`)\n\n"
        + table
        + "\n\nReal-vs-real floor (two disjoint halves of the 1,797 real digits, 898 vs 899): "
        + f"FD {floor:.1f}.\n",
    )


if __name__ == "__main__":
    main()
