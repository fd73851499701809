"""Q-VDiT ablation ladder on a tiny random-weight Latte (ranking only, not video quality).

Usage: `python -m bench.qvdit [--bits W4A6] [--updates 200] [--steps 10] [--samples 8] [--seed 0]`.
The model is the 2-layer Latte of `bench.transformer_act_modes` (8 frames x 1 x 16x16) with
random weights and seeded random caption embeddings; no trained video model is bundled
(docs/reference-benchmark.md Q6). Each variant goes through `edgediff.methods.quantize_model`
(the `edgediff quantize` path): EfficientDM, a ViDiT-Q-style setting (clip-grid weights,
per-token activations, MLPs at W8A8, no adapters), then the Q-VDiT ladder: merged LoRA only ->
+ TQE with M = 1 -> + M -> + TMD (full), and the full method with ViDiT-Q's MLP setting. Metrics
on DDIM samples from the same noise and conditions as the FP model: relative MSE and the TMD
temporal KL `Σ_i KL(D_i^FP ‖ D_i^Q)` of the sampled videos. One seed: random weights and one
seed rank the variants on paired fidelity; they say nothing about generated video quality.
Writes bench/results/qvdit.json and its section of docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from bench._report import host_info, markdown_table, update_results_section, write_json
from bench.transformer_act_modes import MODELS, request_for, save_pipeline
from edgediff.methods import quantize_model
from edgediff.methods.qvdit import temporal_kl
from edgediff.models.conditioning import build_conditioning
from edgediff.models.loading import load_model
from edgediff.sampling import ddim_sample, seeded_noise

OFF = {"tqe": False, "tmd": False}
VARIANTS: list[tuple[str, str, dict]] = [  # (label, method, options)
    ("EfficientDM (per-step static activations)", "efficientdm", {}),
    (
        "ViDiT-Q style: clip-grid, per-token, MLP W8A8, no adapters",
        "qvdit",
        {**OFF, "lora": False, "vidit_mlp8": True},
    ),
    ("Q-VDiT ladder: merged LoRA only", "qvdit", OFF),
    ("+ TQE (M = 1)", "qvdit", {"tmd": False, "tqe_m": False}),
    ("+ M (Eq. 9)", "qvdit", {"tmd": False}),
    ("+ TMD (full Q-VDiT)", "qvdit", {}),
    ("full Q-VDiT, MLP W8A8 (ViDiT-Q setting)", "qvdit", {"vidit_mlp8": True}),
]


def score(folder: Path, fp, request, samples: int, steps: int) -> dict:
    q = load_model(folder)
    cond = build_conditioning(q, request, samples, seed=1)
    noise = seeded_noise(samples, q.sample_shape, 1)
    qs = ddim_sample(q.unet, q.scheduler_config, noise, steps, conditioning=cond, set_step=q.set_step).images
    fs = ddim_sample(fp.unet, fp.scheduler_config, noise, steps, conditioning=cond).images
    return {
        "rel_mse": float((qs - fs).pow(2).mean() / fs.pow(2).mean()),
        "temporal_kl": float(temporal_kl(fs, qs)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", default="W4A6")
    ap.add_argument("--updates", type=int, default=200)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--calib-samples", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows, records = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        torch.manual_seed(args.seed)
        folder = save_pipeline(MODELS["Latte"]().eval(), work / "latte")
        fp = load_model(folder)
        request = request_for("Latte", fp.unet, work)
        for label, method, options in VARIANTS:
            out = work / f"v{len(records)}"
            t0 = time.perf_counter()
            quantize_model(
                folder,
                method,
                args.bits,
                out,
                seed=args.seed,
                num_steps=args.steps,
                updates=args.updates,
                batch=args.batch,
                options=options,
                progress=False,
                calib_samples=args.calib_samples,
                conditioning=request,
                device="cpu",
            )
            seconds = round(time.perf_counter() - t0, 1)
            metrics = score(out, fp, request, args.samples, args.steps)
            records.append(
                {"variant": label, "method": method, "options": options, "seconds": seconds, **metrics}
            )
            rows.append([label, method, metrics["rel_mse"], metrics["temporal_kl"], seconds])
            print(label, metrics, seconds, flush=True)
    write_json("qvdit", {"args": vars(args), "host": host_info(), "results": records})
    table = markdown_table(
        ["variant (tiny Latte, RANDOM weights)", "method", "rel. MSE vs FP", "temporal KL vs FP", "s"], rows
    )
    intro = (
        f"Q-VDiT ablation ladder at {args.bits} on a tiny **random-weight** Latte "
        f"(`python -m bench.qvdit`, {args.updates} updates at batch {args.batch} along DDIM-{args.steps} "
        f"FP trajectories, {args.samples} sampled videos, seed {args.seed}, this CPU). Paired fidelity "
        "only: it ranks the variants on one random model and one seed, it is not a video-quality result."
    )
    update_results_section("qvdit", intro + "\n\n" + table)


if __name__ == "__main__":
    main()
