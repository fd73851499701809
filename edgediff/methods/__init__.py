"""Quantization methods: procedures over the shared quantization core (docs/design.md section 2).

`quantize_model` is what `edgediff quantize` runs: load the FP model, run the method, save a
quantized folder that records its source model, method, bits and training budget. The methods
themselves are registered in `registry.py` (one module each).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch

from edgediff.bitspec import BitSetting
from edgediff.errors import EdgediffError
from edgediff.models.conditioning import ConditioningRequest
from edgediff.models.pipeline import parts_record, text_pipeline_parts
from edgediff.train.loop import is_main_process, process_device


def quantize_model(
    model: str | Path,
    method: str,
    bits: BitSetting | str | None,
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
    resume: bool = False,
) -> dict:
    """Run `method` at `bits` on the FP model folder (or 'reference'); write `out`; return its meta.

    `bits` picks the method's preset recipe; with `recipe_file` it may be None (the recipe's own
    setting), else it must agree with the recipe's label. The meta's `bits` is the label of the
    recipe that was used (`Recipe.label`). `options` are fields of the method's config (the CLI's
    switches, `registry.cli_options`); the meta records the method's full configuration under
    `training.method_config`. `symmetric_weights` (methods registered with it: ptq, efficientdm)
    sets `w_symmetric` on every layer of the recipe, so the ONNX export ships int8 weights with
    zero point 0 (ONNX Runtime's faster u8s8 kernels). `device`: auto (CUDA when available), cpu
    or cuda; calibration, search and fine-tuning run there and the folder is written from CPU
    tensors either way. `calib_samples`: FP trajectories for calibration. `conditioning`: the
    calibration (and fine-tuning) conditions and guidance; a label-conditioned model without
    `--labels` gets seeded random labels (`edgediff.models.conditioning.build_conditioning`).
    Fine-tuned methods checkpoint into `OUT.ckpt/` every tenth of the updates (removed on
    success); `resume` continues from there (`edgediff quantize --resume`; a method registered
    with `resumable=False`, ptq, refuses it). Under `accelerate launch` every process trains its
    slice of the batch; the main one writes `out`.
    """
    from edgediff.methods.registry import QuantizeJob, check_options, get_method, methods
    from edgediff.models.conditioning import build_conditioning
    from edgediff.models.loading import load_fp
    from edgediff.quant import Recipe, save_quantized
    from edgediff.reference import is_reference

    spec = get_method(method)
    setting = None if bits is None else BitSetting.of(bits)
    target = process_device(resolve_device(device))
    if resume and not spec.resumable:
        resumable = ", ".join(name for name, m in methods().items() if m.resumable)
        raise EdgediffError(f"--resume applies to the fine-tuned methods ({resumable}); drop it for {method}")
    options = dict(options or {})
    check_options(spec, options)
    if symmetric_weights and not spec.symmetric_weights:
        raise EdgediffError(
            f"--symmetric-weights applies to ptq and efficientdm; for {method} set w_symmetric in a --recipe"
        )
    recipe = None
    if recipe_file is not None:
        path = Path(recipe_file)
        if not path.is_file():
            raise EdgediffError(f"recipe file not found: {path}")
        recipe = Recipe.from_json(path.read_text())
        if setting is not None and recipe.label != setting.label:
            raise EdgediffError(
                f"recipe {path.name} is {recipe.label} but --bits is {setting.label}; "
                f"pass --bits {recipe.label} or leave --bits out"
            )
        setting = setting or recipe.bits or _label_setting(recipe, path)
    if setting is None:
        raise EdgediffError("no bit setting: pass --bits (e.g. W4A8) or a --recipe file")
    if calib_samples < 1:
        raise EdgediffError(f"--calib-samples must be at least 1, got {calib_samples}")
    loaded = load_fp(model)
    source, fp = loaded.path, loaded.unet
    request = conditioning or ConditioningRequest()
    cond = build_conditioning(loaded, request, calib_samples, seed=seed, random_default=True)
    if not spec.conditioned_models and (cond or loaded.signature.class_name != "UNet2DModel"):
        raise EdgediffError(
            f"{method} supports unconditional UNet2DModel models; use ptq or efficientdm for "
            f"{loaded.signature.class_name}"
        )
    if recipe is not None:
        recipe.validate(fp)
    fp = fp.to(target)
    sched_cfg = dict(loaded.scheduler_config)
    job = QuantizeJob(
        fp=fp,
        scheduler_config=sched_cfg,
        bits=setting,
        recipe=recipe,
        num_steps=num_steps,
        seed=seed,
        updates=updates,
        batch=batch,
        symmetric_weights=symmetric_weights,
        progress=progress,
        calib_samples=calib_samples,
        conditioning=cond,
        guidance_scale=request.guidance if request.guided else None,
        checkpoint_dir=checkpoint_folder(out) if spec.resumable else None,
        resume=resume,
    )
    t0 = time.perf_counter()
    qmodel, recipe, record = spec.run(job, options)
    meta = {
        "method": method,
        "bits": recipe.label,
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
    parts = None if is_reference(model) else text_pipeline_parts(source)
    if parts is not None:  # tokenizer, text encoder and VAE: a checked reference, not a copy
        meta["pipeline"] = parts_record(parts)
    if is_main_process():
        save_quantized(
            qmodel.cpu(), recipe, out, base_config, sched_cfg, meta, label_table=loaded.label_table
        )
        shutil.rmtree(checkpoint_folder(out), ignore_errors=True)
    return meta


def checkpoint_folder(out: str | Path) -> Path:
    """`OUT.ckpt/`: the fine-tuning checkpoint of the quantized folder `OUT` (gone once it is saved)."""
    out = Path(out)
    return out.with_name(out.name + ".ckpt")


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


def _label_setting(recipe, path: Path) -> BitSetting:
    """The setting a hand-written recipe's rules add up to (`Recipe.label`), when it is one W/A pair."""
    try:
        return BitSetting.parse(recipe.label)
    except EdgediffError:
        raise EdgediffError(
            f"recipe {path.name} mixes bit widths ({recipe.label}); pass --bits with its nominal setting"
        ) from None
