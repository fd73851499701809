"""Static vs per-token dynamic activation ranges on the Linear layers of transformer blocks.

Usage: `python -m bench.transformer_act_modes [--bits W8A8 W8A6] [--samples 32] [--steps 10]`.
Tiny random-weight DiT, PixArt and Latte models built from configs (no trained transformer is
bundled), conditioned (DiT: labels 0-9; PixArt, Latte: seeded random embeddings); ptq with the
default recipe (per-token dynamic on the transformer-block Linears) against the same recipe with
static ranges there. Metric: relative MSE of the quantized samples against the FP samples from
the same noise and conditions. Random weights say nothing about image quality; the comparison
only ranks the two activation modes on the same models. Writes
bench/results/transformer_act_modes.json and its section of docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from diffusers import DiTTransformer2DModel, LatteTransformer3DModel, PixArtTransformer2DModel
from safetensors.torch import save_file

from bench._report import host_info, markdown_table, update_results_section, write_json
from edgediff.methods import quantize_model
from edgediff.models.conditioning import ConditioningRequest, build_conditioning
from edgediff.models.loading import load_model
from edgediff.quant import Recipe, default_recipe
from edgediff.sampling import ddim_sample, seeded_noise

TOKEN_BLOCKS = ("transformer_blocks", "temporal_transformer_blocks")
SCHEDULER = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "prediction_type": "epsilon"}
COMMON = dict(num_attention_heads=2, attention_head_dim=8, num_layers=2, patch_size=2)
MODELS = {
    "DiT": lambda: DiTTransformer2DModel(
        **COMMON, in_channels=4, out_channels=8, sample_size=8, num_embeds_ada_norm=10, norm_num_groups=8
    ),
    "PixArt": lambda: PixArtTransformer2DModel(
        **COMMON, in_channels=4, out_channels=8, sample_size=8, cross_attention_dim=16, caption_channels=12
    ),
    "Latte": lambda: LatteTransformer3DModel(
        **COMMON | {"num_attention_heads": 4, "attention_head_dim": 4},
        in_channels=1,
        out_channels=1,
        sample_size=16,
        norm_type="ada_norm_single",
        caption_channels=16,
        cross_attention_dim=16,
        video_length=8,
    ),
}


def save_pipeline(model, out: Path) -> Path:
    model.save_pretrained(out / "transformer", safe_serialization=True)
    (out / "scheduler").mkdir(parents=True)
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER))
    index = {"transformer": ["diffusers", type(model).__name__], "scheduler": ["diffusers", "DDPMScheduler"]}
    (out / "model_index.json").write_text(json.dumps(index))
    return out


def request_for(name: str, model, work: Path) -> ConditioningRequest:
    if name == "DiT":
        return ConditioningRequest(labels=",".join(str(i) for i in range(10)))
    width = model.config.caption_channels
    g = torch.Generator().manual_seed(0)
    path = work / f"{name}.safetensors"
    save_file({"encoder_hidden_states": torch.randn(16, 4, width, generator=g)}, str(path))
    return ConditioningRequest(cond_file=path)


def rel_mse(folder: Path, fp, request, samples: int, steps: int) -> float:
    q = load_model(folder)
    cond = build_conditioning(q, request, samples, seed=1)
    noise = seeded_noise(samples, q.sample_shape, 1)
    qs = ddim_sample(q.unet, q.scheduler_config, noise, steps, conditioning=cond, set_step=q.set_step).images
    fs = ddim_sample(fp.unet, fp.scheduler_config, noise, steps, conditioning=cond).images
    return float((qs - fs).pow(2).mean() / fs.pow(2).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", nargs="+", default=["W8A8", "W8A6"])
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--calib-samples", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows, records = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, build in MODELS.items():
            torch.manual_seed(0)
            folder = save_pipeline(build().eval(), work / name)
            fp = load_model(folder)
            request = request_for(name, fp.unet, work)
            for bits in args.bits:
                default = default_recipe(bits, fp.unet)
                static = Recipe(tuple(r for r in default.rules if r[0] not in TOKEN_BLOCKS), f"static-{bits}")
                static_file = work / f"{name}-{bits}-static.json"
                static_file.write_text(static.to_json())
                errs = {}
                for mode, recipe_file in (("static", static_file), ("dynamic_per_token", None)):
                    out = work / f"{name}-{bits}-{mode}"
                    quantize_model(
                        folder,
                        "ptq",
                        bits,
                        out,
                        recipe_file,
                        num_steps=args.steps,
                        progress=False,
                        calib_samples=args.calib_samples,
                        conditioning=request,
                        device="cpu",
                    )
                    errs[mode] = rel_mse(out, fp, request, args.samples, args.steps)
                records.append({"model": name, "bits": bits, **errs})
                rows.append([name, bits, errs["static"], errs["dynamic_per_token"]])
                print(name, bits, errs, flush=True)
    write_json("transformer_act_modes", {"args": vars(args), "host": host_info(), "results": records})
    table = markdown_table(["model (tiny, random)", "bits", "static rel. MSE", "per-token rel. MSE"], rows)
    intro = (
        "Transformer-block Linear inputs: static vs per-token dynamic ranges "
        f"(`python -m bench.transformer_act_modes`, {args.samples} samples, DDIM-{args.steps}, "
        f"{args.calib_samples} calibration trajectories; relative MSE vs FP on random-weight models)."
    )
    update_results_section("transformer_act_modes", intro + "\n\n" + table)


if __name__ == "__main__":
    main()
