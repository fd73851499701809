"""Quantization methods: procedures over the shared quantization core (docs/design.md section 2).

`quantize_model` is what `edgediff quantize` runs: load the FP model, run the method, save a
quantized folder that records its source model, method, bits and training budget.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from edgediff.errors import EdgediffError
from edgediff.models.conditioning import ConditioningRequest

METHODS = ("ptq", "efficientdm", "mpqdm", "mpqdmv2", "qvdit")


def quantize_model(
    model: str | Path,
    method: str,
    bits: str,
    out: Path,
    recipe_file: Path | None = None,
    seed: int = 0,
    num_steps: int = 50,
    updates: int | None = None,
    progress: bool = True,
    batch: int | None = None,
    options: dict | None = None,
    symmetric_weights: bool = False,
    device: str = "auto",
    calib_samples: int = 64,
    conditioning: ConditioningRequest | None = None,
) -> dict:
    """Run `method` at `bits` on the FP model folder (or 'reference'); write `out`; return its meta.

    `options` are `MPQDMConfig` / `MPQDMv2Config` fields (the CLI's ablation switches); the
    meta records the method's full configuration under `training.method_config`.
    `symmetric_weights` (ptq, efficientdm) sets `w_symmetric` on every layer of the recipe, so the
    ONNX export ships int8 weights with zero point 0 (ONNX Runtime's faster u8s8 kernels).
    `device`: auto (CUDA when available), cpu or cuda; calibration, search and fine-tuning run
    there and the folder is written from CPU tensors either way.
    `calib_samples`: FP trajectories for calibration. `conditioning`: the calibration (and
    fine-tuning) conditions and guidance; a label-conditioned model without `--labels` gets
    seeded random labels (`edgediff.models.conditioning.build_conditioning`).
    """
    from edgediff.models.conditioning import build_conditioning
    from edgediff.models.loading import load_fp
    from edgediff.quant import Recipe, parse_bits, save_quantized
    from edgediff.reference import is_reference

    if method not in METHODS:
        raise EdgediffError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    parse_bits(bits)
    target = resolve_device(device)
    options = dict(options or {})
    _check_options(method, options)
    if symmetric_weights and method not in ("ptq", "efficientdm"):
        raise EdgediffError(
            f"--symmetric-weights applies to ptq and efficientdm; for {method} set w_symmetric in a --recipe"
        )
    recipe = None
    if recipe_file is not None:
        path = Path(recipe_file)
        if not path.is_file():
            raise EdgediffError(f"recipe file not found: {path}")
        recipe = Recipe.from_json(path.read_text())
    if calib_samples < 1:
        raise EdgediffError(f"--calib-samples must be at least 1, got {calib_samples}")
    loaded = load_fp(model)
    source, fp = loaded.path, loaded.unet
    request = conditioning or ConditioningRequest()
    cond = build_conditioning(loaded, request, calib_samples, seed=seed, random_default=True)
    if method in ("mpqdm", "mpqdmv2") and (cond or loaded.signature.class_name != "UNet2DModel"):
        raise EdgediffError(
            f"{method} supports unconditional UNet2DModel models; use ptq or efficientdm for "
            f"{loaded.signature.class_name}"
        )
    if recipe is not None:
        recipe.validate(fp)
    fp = fp.to(target)
    sched_cfg = dict(loaded.scheduler_config)
    guidance = request.guidance if request.guided else None
    t0 = time.perf_counter()
    record: dict = {}
    if method == "ptq":
        from edgediff.methods.ptq import PTQConfig, run_ptq
        from edgediff.quant import default_recipe

        if symmetric_weights:
            recipe = (recipe or default_recipe(bits, fp, a_mode=PTQConfig().a_mode)).with_symmetric_weights()

        qmodel, recipe = run_ptq(
            fp,
            sched_cfg,
            bits,
            recipe,
            PTQConfig(seed=seed, calib_samples=calib_samples),
            num_steps,
            progress,
            conditioning=cond,
            guidance_scale=guidance,
        )
    else:
        from edgediff.methods.efficientdm import EfficientDMConfig, run_efficientdm

        trajectories = max(1, (updates or 1000) // num_steps)
        extra = {"batch_size": batch} if batch else {}
        base = EfficientDMConfig(
            num_steps=num_steps, trajectories=trajectories, seed=seed, calib_samples=calib_samples, **extra
        )
        if method == "efficientdm":
            if symmetric_weights:
                from edgediff.methods.efficientdm import efficientdm_recipe

                recipe = (recipe or efficientdm_recipe(bits, fp, base)).with_symmetric_weights()
            qmodel, recipe, record = run_efficientdm(
                fp, sched_cfg, bits, recipe, base, progress, conditioning=cond, guidance_scale=guidance
            )
        elif method == "qvdit":
            from edgediff.methods.qvdit import QVDiTConfig, run_qvdit

            qcfg = QVDiTConfig(base=base, **options)
            qmodel, recipe, record = run_qvdit(
                fp, sched_cfg, bits, recipe, qcfg, progress, conditioning=cond, guidance_scale=guidance
            )
        elif method == "mpqdm":
            from edgediff.methods.mpqdm import MPQDMConfig, run_mpqdm

            cfg = MPQDMConfig(base=base, **options)
            qmodel, recipe, record = run_mpqdm(fp, sched_cfg, bits, recipe, cfg, progress)
        else:
            from edgediff.methods.mpqdmv2 import MPQDMv2Config, run_mpqdmv2

            cfg = MPQDMv2Config(base=base, **options)
            qmodel, recipe, record = run_mpqdmv2(fp, sched_cfg, bits, recipe, cfg, progress)
    meta = {
        "method": method,
        "bits": bits.upper(),
        "source_model": str(model) if is_reference(model) else str(source.resolve()),
        "seed": seed,
        "calib_samples": calib_samples,
        "conditioning": _conditioning_record(request, cond),
        "num_steps": num_steps,
        "seconds": round(time.perf_counter() - t0, 1),
        "training": record,
    }
    base_config = {k: v for k, v in dict(fp.config).items() if not k.startswith("_")}
    sched_cfg = {k: v for k, v in sched_cfg.items() if not k.startswith("_")}
    meta["device"] = str(target)
    save_quantized(qmodel.cpu(), recipe, out, base_config, sched_cfg, meta, label_table=loaded.label_table)
    return meta


def _conditioning_record(request: ConditioningRequest, cond) -> dict:
    """What the calibration was conditioned on, for the quantized folder's meta."""
    if not cond:
        return {"kind": "none"}
    kind = "labels" if request.labels else "file" if request.cond_file else "random labels"
    return {
        "kind": kind,
        "labels": request.labels,
        "cond_file": str(request.cond_file) if request.cond_file else None,
        "guidance": request.guidance,
        "names": sorted(cond.values),
    }


def resolve_device(device: str) -> torch.device:
    """`auto` -> CUDA when available else CPU; `cpu`; `cuda[:N]` (one-line error when absent)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        target = torch.device(device)
    except RuntimeError:
        raise EdgediffError(f"unknown device {device!r}: use auto, cpu or cuda") from None
    if target.type not in ("cpu", "cuda"):
        raise EdgediffError(f"unknown device {device!r}: use auto, cpu or cuda")
    if target.type == "cuda" and not torch.cuda.is_available():
        raise EdgediffError("--device cuda but this torch sees no CUDA GPU; use --device cpu (or auto)")
    return target


def _check_options(method: str, options: dict) -> None:
    """Every option must be a field of the method's config (one-line error naming the first misfit)."""
    if not options:
        return
    from dataclasses import fields

    from edgediff.methods.mpqdm import MPQDMConfig
    from edgediff.methods.mpqdmv2 import MPQDMv2Config
    from edgediff.methods.qvdit import QVDiTConfig

    configs = {"mpqdm": MPQDMConfig, "mpqdmv2": MPQDMv2Config, "qvdit": QVDiTConfig}
    names = {m: {f.name for f in fields(cls)} - {"base"} for m, cls in configs.items()}
    for key in options:
        if key not in names.get(method, set()):
            owners = "/".join(m for m, n in names.items() if key in n) or "no method"
            raise EdgediffError(f"option {key!r} applies to {owners} only; drop it for --method {method}")
