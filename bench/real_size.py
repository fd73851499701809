"""Real-size stages: W8A8 PTQ, export (external data above 2 GB) and runtime parity of denoisers
with the configs of Stable Diffusion 1.5's UNet and DiT-XL/2 (random weights, nothing downloaded).

Each stage runs in its own process so that its peak RSS (`resource.getrusage`, ru_maxrss) is its
own: `build` (random weights from the config, saved as a diffusers folder), `quantize` (W8A8 PTQ
with the preset recipe, calibrated in-process on 2 conditioned trajectories of 2 DDIM steps),
`export-w8a8`, `parity-w8a8` (the torch-free runtime), `export-fp32` (> 2 GB: external data) and
`parity-fp32`. Writes bench/results/real_size.json and a table in docs/RESULTS.md.

    python -m bench.real_size --models dit-xl-2 --threads 2 --work /tmp/real_size

Not run in CI. Random weights say nothing about image quality; the point is that every stage
runs, how long it takes and how much memory it needs.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

STEPS = 2
CALIB_SAMPLES = 2
GOLDEN_SAMPLES = 2

#: Stable Diffusion 1.5's UNet (the published unet/config.json values).
SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=768,
    attention_head_dim=8,
)
#: Stable Diffusion 1.5's scheduler config (PNDM's, read by the DDIM sampler as diffusers does).
SD15_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
    timestep_spacing="leading",
)
#: DiT-XL/2 at 256 px: 28 blocks, 16 heads x 72, patch 2 on a 32x32x4 latent, 1000 classes,
#: learned sigma (8 output channels).
DIT_XL2 = dict(
    num_attention_heads=16,
    attention_head_dim=72,
    in_channels=4,
    out_channels=8,
    num_layers=28,
    sample_size=32,
    patch_size=2,
    num_embeds_ada_norm=1000,
    norm_type="ada_norm_zero",
)
DIT_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.0001,
    beta_end=0.02,
    beta_schedule="linear",
    clip_sample=False,
    set_alpha_to_one=True,
    steps_offset=0,
    prediction_type="epsilon",
    timestep_spacing="leading",
)
#: A few-layer DiT of the same shape family, to try the stages in seconds.
DIT_SMOKE = {**DIT_XL2, "num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 8, "sample_size": 8}
MODELS = {
    "dit-xl-2": ("DiTTransformer2DModel", DIT_XL2, DIT_SCHEDULER, 4.0),
    "dit-smoke": ("DiTTransformer2DModel", DIT_SMOKE, DIT_SCHEDULER, 4.0),
    "sd15-unet": ("UNet2DConditionModel", SD15_UNET, SD15_SCHEDULER, 7.5),
}
STAGES = ("build", "quantize", "export-w8a8", "parity-w8a8", "export-fp32", "parity-fp32")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _conditions(name: str, n: int):
    """Golden/calibration conditions of `n` samples: class labels (DiT) or text-sized embeddings."""
    import torch

    from edgediff_export.golden import TorchConditions

    g = torch.Generator().manual_seed(11)
    if name.startswith("dit"):
        return TorchConditions(
            {"class_labels": torch.randint(0, 1000, (n,), generator=g)},
            {"class_labels": "class_labels"},
            {"class_labels": torch.full((n,), 1000)},
            MODELS[name][3],
        )
    ehs = torch.randn(n, 77, 768, generator=g)
    return TorchConditions(
        {"encoder_hidden_states": ehs},
        {"encoder_hidden_states": "encoder_hidden_states"},
        {"encoder_hidden_states": torch.zeros(n, 77, 768)},
        MODELS[name][3],
    )


def stage_build(name: str, work: Path) -> dict:
    import diffusers
    import torch

    cls_name, config, sched, _ = MODELS[name]
    torch.manual_seed(0)
    model = getattr(diffusers, cls_name)(**config).eval()
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(work / "fp", safe_serialization=True)
    (work / "fp" / "scheduler_config.json").write_text(json.dumps(sched, indent=2))
    return {"params": params, "fp32_bytes": 4 * params}


def _load_fp(name: str, work: Path):
    import diffusers

    cls_name = MODELS[name][0]
    return getattr(diffusers, cls_name).from_pretrained(work / "fp", local_files_only=True).eval()


def stage_quantize(name: str, work: Path) -> dict:
    """W8A8 PTQ (`default_recipe`), calibrated on the inputs of 2 guided DDIM trajectories."""
    import torch

    from edgediff.quant import CalibrationData, calibrate, default_recipe, quantize_, save_quantized
    from edgediff.sampling import seeded_noise
    from edgediff_export.bundle import sampler_spec
    from edgediff_export.golden import guided_ddim

    sched = MODELS[name][2]
    model = _load_fp(name, work)
    spec = sampler_spec(sched, STEPS)
    cfg = dict(model.config)
    size = cfg["sample_size"]
    noise = seeded_noise(CALIB_SAMPLES, (cfg["in_channels"], size, size), 0)
    conds = _conditions(name, CALIB_SAMPLES)
    learned = cfg.get("out_channels") == 2 * cfg["in_channels"]
    run = guided_ddim(model, spec, noise, STEPS, conds, learned_sigma=learned, keep_trajectory=True)
    xs = [noise, *run.trajectory[:-1]]
    # Each calibration row is one half of the guided batch: the conditional and the null input.
    cond = {k: torch.cat([conds.null[k], v] * len(xs)) for k, v in conds.cond.items()}
    calib = CalibrationData(
        x=torch.cat([torch.cat([x, x]) for x in xs]),
        t=torch.tensor(run.timesteps).repeat_interleave(2 * CALIB_SAMPLES),
        step=torch.arange(STEPS).repeat_interleave(2 * CALIB_SAMPLES),
        num_steps=STEPS,
        cond={conds.kwargs[k]: v for k, v in cond.items()},
    )
    recipe = default_recipe("W8A8", model)
    quantize_(model, recipe)
    calibrate(model, calib, batch_size=4)
    config = {k: v for k, v in model.config.items() if not k.startswith("_")}
    save_quantized(model, recipe, work / "w8a8", config, sched, {"method": "ptq", "bits": "W8A8"})
    return {"calib_rows": len(calib)}


def _export(name: str, work: Path, quantized: bool) -> dict:
    import numpy as np

    from edgediff.quant import load_quantized
    from edgediff_export.bundle import ExportOptions, export_model_bundle, sampler_spec

    sched, scale = MODELS[name][2], MODELS[name][3]
    null = None
    if name == "sd15-unet":
        null = str(work / "null.npy")
        np.save(null, np.zeros((77, 768), np.float32))
    if quantized:
        model = load_quantized(work / "w8a8")[0]
        meta = {"method": "ptq", "bits": "W8A8"}
    else:
        model, meta = _load_fp(name, work), None
    out = work / ("w8a8.edgediff" if quantized else "fp32.edgediff")
    shutil.rmtree(out, ignore_errors=True)
    opts = ExportOptions(
        steps=STEPS,
        golden_samples=GOLDEN_SAMPLES,
        allow_fp=True,
        guidance_scale=scale,
        range_samples=2,
        null_embedding=null,
        # The fp32 models (3-3.4 GB) need more than the 8 GB the x86-cpu profile leaves a model.
        device="x86-cpu" if quantized else "jetson-agx-orin-64gb",
    )
    export_model_bundle(model, sampler_spec(sched, STEPS), out, opts, quant_meta=meta, progress=False)
    files = {p.name: p.stat().st_size for p in out.glob("model.onnx*")}
    m = json.loads((out / "manifest.json").read_text())
    return {"onnx_files": files, "bounds": m["parity"]["bounds"]}


def _parity(work: Path, bundle: str) -> dict:
    from edgediff_runtime.backends import open_backend
    from edgediff_runtime.bundle import load_bundle
    from edgediff_runtime.parity import run_parity

    b = load_bundle(work / bundle)
    backend = open_backend("ort", b.model_path, threads=int(os.environ.get("OMP_NUM_THREADS", "2")))
    report = run_parity(b, backend)
    return {
        "passed": report["passed"],
        "latent_psnr_min": report["level2"]["latent_psnr_min"],
        "latent_max_abs": report["level2"]["latent_max_abs"],
        "checks": report["checks"],
    }


RUNNERS = {
    "build": stage_build,
    "quantize": stage_quantize,
    "export-w8a8": lambda n, w: _export(n, w, True),
    "export-fp32": lambda n, w: _export(n, w, False),
    "parity-w8a8": lambda n, w: _parity(w, "w8a8.edgediff"),
    "parity-fp32": lambda n, w: _parity(w, "fp32.edgediff"),
}


def run_stage(stage: str, name: str, work: Path, threads: int) -> None:
    """Child process: run one stage, print one JSON line with its wall time and peak RSS."""
    if not stage.startswith("parity"):
        _threads(threads)
    t0 = time.perf_counter()
    out = RUNNERS[stage](name, work)
    wall_s, rss = round(time.perf_counter() - t0, 1), round(_peak_rss_mb())
    out.update(stage=stage, wall_s=wall_s, peak_rss_mb=rss, threads=threads)
    (work / "results").mkdir(exist_ok=True)
    (work / "results" / f"{stage}.json").write_text(json.dumps(out, indent=1) + "\n")
    print("RESULT " + json.dumps(out), flush=True)


def collect(names: list[str], work: Path, logs: list[Path]) -> dict:
    """Stage results of `names` from the stage files under `work` and from driver logs
    (lines `NAME STAGE: {...}` printed by `run_all`), in stage order."""
    found: dict = {n: {} for n in names}
    for log in logs:
        for line in log.read_text().splitlines():
            head, _, body = line.partition(": ")
            parts = head.split(" ")
            if len(parts) == 2 and parts[0] in found and body.startswith("{"):
                found[parts[0]][parts[1]] = ast.literal_eval(body)
    for name in names:
        for f in sorted((work / name / "results").glob("*.json")):
            found[name][f.stem] = json.loads(f.read_text())
    return {n: {s: found[n][s] for s in STAGES if s in found[n]} for n in names}


def run_all(names: list[str], work: Path, threads: int, stages: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    results: dict = {}
    for name in names:
        wdir = work / name
        wdir.mkdir(parents=True, exist_ok=True)
        rows = results.setdefault(name, {})
        for stage in stages:
            cmd = [
                sys.executable,
                "-m",
                "bench.real_size",
                "--stage",
                stage,
                "--models",
                name,
                "--work",
                str(work),
                "--threads",
                str(threads),
            ]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            line = next((s for s in proc.stdout.splitlines()[::-1] if s.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
                rows[stage] = {"stage": stage, "error": tail}
                print(f"{name} {stage}: FAILED: {tail}", flush=True)
                break
            rows[stage] = json.loads(line.removeprefix("RESULT "))
            print(f"{name} {stage}: {rows[stage]}", flush=True)
    return results


def report(results: dict) -> str:
    from bench._report import markdown_table

    rows = []
    for name, stages in results.items():
        fp32 = stages.get("build", {}).get("fp32_bytes")
        for stage, r in stages.items():
            ratio = (r["peak_rss_mb"] * 2**20 / fp32) if fp32 and "peak_rss_mb" in r else None
            extra = ""
            if "onnx_files" in r:
                extra = ", ".join(f"{k} {v / 2**30:.2f} GiB" for k, v in r["onnx_files"].items())
                b = r["bounds"]
                extra += (
                    f"; export PSNR {b['measured_latent_psnr_min']} dB (bound {b['latent_psnr_min_bound']}, "
                )
                extra += "within)" if b["within"] else "NOT within: parity set to fail)"
            if "passed" in r:
                extra = f"{'PASS' if r['passed'] else 'FAIL'}, worst step PSNR {r['latent_psnr_min']} dB"
            if "error" in r:
                extra = f"failed: {r['error']}"
            rows.append(
                [
                    name,
                    stage,
                    r.get("threads", "-"),
                    r.get("wall_s", "-"),
                    r.get("peak_rss_mb", "-"),
                    f"{ratio:.2f}" if ratio else "-",
                    extra,
                ]
            )
    header = ["model", "stage", "threads", "wall s", "peak RSS MiB", "RSS / fp32 weights", "result"]
    title = (
        f"### Real-size stages (`python -m bench.real_size`, random weights, W8A8 PTQ on {CALIB_SAMPLES} "
        f"calibration trajectories x {STEPS} steps, {GOLDEN_SAMPLES} golden samples with guidance, "
        "each stage in its own process)"
    )
    return title + "\n\n" + markdown_table(header, rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="dit-xl-2", help=f"comma-separated: {', '.join(MODELS)}")
    p.add_argument("--work", type=Path, default=Path("/tmp/edgediff-real-size"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--stage", default=None, help=argparse.SUPPRESS)  # child process
    p.add_argument("--report-only", action="store_true", help="rebuild the JSON/table from stage results")
    p.add_argument("--log", type=Path, action="append", default=[], help="driver logs to read results from")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.models.split(",")]
    if args.stage:
        run_stage(args.stage, names[0], args.work / names[0], args.threads)
        return 0
    from bench._report import host_info, update_results_section, write_json

    if not args.report_only:
        run_all(names, args.work, args.threads, args.stages.split(","))
    results = collect(names, args.work, args.log)
    path = Path(__file__).resolve().parent / "results" / "real_size.json"
    old = json.loads(path.read_text()).get("models", {}) if path.exists() else {}
    merged = {**old, **{name: {**old.get(name, {}), **stages} for name, stages in results.items()}}
    write_json("real_size", {"host": host_info(), "models": merged})
    update_results_section("real_size", report(merged))
    return 0


if __name__ == "__main__":
    sys.exit(main())
