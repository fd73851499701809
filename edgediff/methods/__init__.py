"""Quantization methods: procedures over the shared quantization core (docs/design.md section 2).

`quantize_model` is what `edgediff quantize` runs: load the FP model, run the method, save a
quantized folder that records its source model, method, bits and training budget.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch

from edgediff.errors import EdgediffError
from edgediff.train.loop import Checkpointing, is_main_process, process_device

METHODS = ("ptq", "efficientdm", "mpqdm", "mpqdmv2")


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
    resume: bool = False,
) -> dict:
    """Run `method` at `bits` on the FP model folder (or 'reference'); write `out`; return its meta.

    `options` are `MPQDMConfig` / `MPQDMv2Config` fields (the CLI's ablation switches); the
    meta records the method's full configuration under `training.method_config`.
    `symmetric_weights` (ptq, efficientdm) sets `w_symmetric` on every layer of the recipe, so the
    ONNX export ships int8 weights with zero point 0 (ONNX Runtime's faster u8s8 kernels).
    `device`: auto (CUDA when available), cpu or cuda; calibration, search and fine-tuning run
    there and the folder is written from CPU tensors either way.
    Fine-tuned methods checkpoint into `OUT.ckpt/` every tenth of the updates (removed on
    success); `resume` continues from there (`edgediff quantize --resume`). Under
    `accelerate launch` every process trains its slice of the batch; the main one writes `out`.
    """
    from edgediff.quant import Recipe, parse_bits, save_quantized
    from edgediff.reference.model import load_pipeline_parts, resolve_model_path

    if method not in METHODS:
        raise EdgediffError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    parse_bits(bits)
    target = process_device(resolve_device(device))
    if resume and method == "ptq":
        raise EdgediffError("--resume applies to the fine-tuned methods (efficientdm, mpqdm, mpqdmv2)")
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
    source = resolve_model_path(model)
    fp, scheduler = load_pipeline_parts(model)
    if recipe is not None:
        recipe.validate(fp)
    fp = fp.to(target)
    sched_cfg = dict(scheduler.config)
    t0 = time.perf_counter()
    record: dict = {}
    if method == "ptq":
        from edgediff.methods.ptq import PTQConfig, run_ptq
        from edgediff.quant import default_recipe

        if symmetric_weights:
            recipe = (recipe or default_recipe(bits, fp, a_mode=PTQConfig().a_mode)).with_symmetric_weights()

        qmodel, recipe = run_ptq(fp, sched_cfg, bits, recipe, PTQConfig(seed=seed), num_steps, progress)
    else:
        from edgediff.methods.efficientdm import EfficientDMConfig, run_efficientdm

        every = max(1, (updates or 1000) // 10)
        ckpt = Checkpointing(folder=checkpoint_folder(out), every=every, resume=resume)
        trajectories = max(1, (updates or 1000) // num_steps)
        extra = {"batch_size": batch} if batch else {}
        base = EfficientDMConfig(num_steps=num_steps, trajectories=trajectories, seed=seed, **extra)
        if method == "efficientdm":
            if symmetric_weights:
                from edgediff.methods.efficientdm import efficientdm_recipe

                recipe = (recipe or efficientdm_recipe(bits, fp, base)).with_symmetric_weights()
            qmodel, recipe, record = run_efficientdm(fp, sched_cfg, bits, recipe, base, progress, ckpt)
        elif method == "mpqdm":
            from edgediff.methods.mpqdm import MPQDMConfig, run_mpqdm

            cfg = MPQDMConfig(base=base, **options)
            qmodel, recipe, record = run_mpqdm(fp, sched_cfg, bits, recipe, cfg, progress, ckpt)
        else:
            from edgediff.methods.mpqdmv2 import MPQDMv2Config, run_mpqdmv2

            cfg = MPQDMv2Config(base=base, **options)
            qmodel, recipe, record = run_mpqdmv2(fp, sched_cfg, bits, recipe, cfg, progress, checkpoints=ckpt)
    meta = {
        "method": method,
        "bits": bits.upper(),
        "source_model": "reference" if str(model) == "reference" else str(source.resolve()),
        "seed": seed,
        "num_steps": num_steps,
        "seconds": round(time.perf_counter() - t0, 1),
        "training": record,
    }
    base_config = {k: v for k, v in dict(fp.config).items() if not k.startswith("_")}
    sched_cfg = {k: v for k, v in sched_cfg.items() if not k.startswith("_")}
    meta["device"] = str(target)
    if is_main_process():
        save_quantized(qmodel.cpu(), recipe, out, base_config, sched_cfg, meta)
        shutil.rmtree(checkpoint_folder(out), ignore_errors=True)
    return meta


def checkpoint_folder(out: str | Path) -> Path:
    """`OUT.ckpt/`: the fine-tuning checkpoint of the quantized folder `OUT` (gone once it is saved)."""
    out = Path(out)
    return out.with_name(out.name + ".ckpt")


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
    if method not in ("mpqdm", "mpqdmv2"):
        raise EdgediffError(
            f"option {next(iter(options))!r} applies to mpqdm/mpqdmv2 only; drop it for --method {method}"
        )
    from dataclasses import fields

    from edgediff.methods.mpqdm import MPQDMConfig
    from edgediff.methods.mpqdmv2 import MPQDMv2Config

    cls = MPQDMConfig if method == "mpqdm" else MPQDMv2Config
    names = {f.name for f in fields(cls)} - {"base"}
    for key in options:
        if key not in names:
            raise EdgediffError(f"option {key!r} applies to mpqdmv2 only; use --method mpqdmv2 or drop it")
