"""Save and load a quantized diffusers model as one folder (docs/design.md 2: one checkpoint).

Folder contents (written atomically: a failure leaves nothing behind):
`recipe.json`, `model.safetensors` (full state dict incl. quantizer buffers),
`unet_config.json` (diffusers config with `_class_name`), `scheduler_config.json`,
`edgediff_meta.json` (the caller's meta plus an `_edgediff` section: format, model class,
per-step table size, dtype, library versions, and digests of the recipe and of the caller's meta).

On load the three parts are checked against each other (`_check_consistent`): the recipe's bit
widths against the bit vectors stored with the weights, zero points against their code range,
the meta's `bits` label against the recipe, and both digests; a folder whose parts come from
different models is refused with a one-line error instead of being used silently.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import diffusers
import torch
from safetensors.torch import load_model, save_model
from torch import nn

from edgediff.bitspec import BitSetting
from edgediff.errors import EdgediffError
from edgediff.quant.layers import QuantLayer
from edgediff.quant.primitives import qrange
from edgediff.quant.quantize import quantize_
from edgediff.quant.quantizers import ActQuantizer, WeightQuantizer
from edgediff.quant.recipe import Recipe
from edgediff.utils.atomic import atomic_dir

FILES = (
    "recipe.json",
    "model.safetensors",
    "unet_config.json",
    "scheduler_config.json",
    "edgediff_meta.json",
)
FORMAT = 1
_RESERVED = "_edgediff"


def _dumps(obj: Any, what: str) -> str:
    try:
        return json.dumps(obj, indent=2, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise EdgediffError(
            f"{what} is not JSON-serializable ({exc}); pass plain str/int/float/list/dict values"
        ) from exc


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def recipe_digest(recipe: Recipe) -> str:
    """sha256 of the recipe's canonical JSON (whitespace and key order do not matter)."""
    return _digest(recipe.to_json())


def meta_digest(meta: dict) -> str:
    """sha256 of the caller's meta (without the `_edgediff` section) as canonical JSON."""
    return _digest(json.dumps({k: v for k, v in meta.items() if k != _RESERVED}, sort_keys=True))


def folder_digest(path: str | Path) -> str:
    """Identity of a quantized folder: sha256 over its recipe digest and the bytes of its weights.

    The export records it in the bundle manifest, so `export validate` can tell whether a folder
    is the bundle's source.
    """
    path = Path(path)
    h = hashlib.sha256()
    recipe = Recipe.from_dict(_read_json(path, "recipe.json"))
    h.update(recipe_digest(recipe).encode())
    with (path / "model.safetensors").open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def step_table_size(model: nn.Module) -> int | None:
    """Entries of the model's per-step activation tables (the sampler step count it was calibrated
    for), or None when every activation quantizer is static or dynamic."""
    sizes = {m.num_steps for m in model.modules() if isinstance(m, ActQuantizer) and m.mode == "per_step"}
    if len(sizes) > 1:
        raise EdgediffError(
            f"per-step tables of different sizes {sorted(sizes)}; quantize with one num_steps"
        )
    return sizes.pop() if sizes else None


def _model_class(model: nn.Module) -> str:
    name = type(model).__name__
    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.ModelMixin)):
        raise EdgediffError(f"save_quantized needs a diffusers model (ModelMixin); got {name}")
    return name


def save_quantized(
    model: nn.Module,
    recipe: Recipe,
    out: str | Path,
    base_config: dict,
    scheduler_config: dict,
    meta: dict,
    label_table=None,
) -> Path:
    """Write the quantized `model` to folder `out` atomically; returns `out`. A `label_table`
    (`edgediff.models.label_table.LabelTable`) goes to `conditioning/` as in the FP folder."""
    cls_name = _model_class(model)
    weight = next((p for p in model.parameters() if p.is_floating_point()), None)
    unet_cfg = {**dict(base_config), "_class_name": dict(base_config).get("_class_name", cls_name)}
    _dumps(dict(meta), "meta")  # refuse a non-JSON meta before its digest is taken
    extra = {
        "format": FORMAT,
        "model_class": cls_name,
        "num_steps": step_table_size(model),
        "dtype": str(weight.dtype).removeprefix("torch.") if weight is not None else "float32",
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "recipe_sha256": recipe_digest(recipe),
        "meta_sha256": meta_digest(dict(meta)),
    }
    texts = {
        "recipe.json": recipe.to_json(),
        "unet_config.json": _dumps(unet_cfg, "base_config"),
        "scheduler_config.json": _dumps(dict(scheduler_config), "scheduler_config"),
        "edgediff_meta.json": _dumps({**dict(meta), _RESERVED: extra}, "meta"),
    }
    out = Path(out)
    with atomic_dir(out) as tmp:
        for name, text in texts.items():
            (tmp / name).write_text(text + "\n", encoding="utf-8")
        save_model(model, str(tmp / "model.safetensors"))
        if label_table is not None:
            label_table.save(tmp)
    return out


def _read_json(path: Path, name: str) -> dict:
    f = path / name
    if not f.is_file():
        raise EdgediffError(
            f"missing {name} in {path}: not a complete quantized folder (write it with save_quantized)"
        )
    try:
        d = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgediffError(f"corrupt {name} in {path} ({type(exc).__name__}); re-save the model") from exc
    if not isinstance(d, dict):
        raise EdgediffError(f"corrupt {name} in {path} (expected a JSON object); re-save the model")
    return d


def load_quantized(path: str | Path) -> tuple[nn.Module, Recipe, dict, dict]:
    """Rebuild `(model, recipe, scheduler_config, meta)` from a `save_quantized` folder.

    The model is built from `unet_config.json`, quantized with `recipe.json` (per-step tables
    of the saved size), and loaded strictly from `model.safetensors`; outputs are bit-exact.
    """
    path = Path(path)
    if not path.is_dir():
        raise EdgediffError(f"quantized model folder not found: {path} (write it with save_quantized)")
    texts = {name: _read_json(path, name) for name in FILES if name.endswith(".json")}
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise EdgediffError(f"missing model.safetensors in {path}: not a complete quantized folder")
    try:
        recipe = Recipe.from_dict(texts["recipe.json"])
    except EdgediffError as exc:
        raise EdgediffError(f"invalid recipe.json in {path}: {exc}") from exc
    unet_cfg = texts["unet_config.json"]
    meta = dict(texts["edgediff_meta.json"])
    extra = meta.pop(_RESERVED, None)
    if not isinstance(extra, dict) or extra.get("format") != FORMAT:
        raise EdgediffError(
            f"edgediff_meta.json in {path} lacks a format-{FORMAT} '{_RESERVED}' section; re-save"
        )
    cls = getattr(diffusers, str(unet_cfg.get("_class_name")), None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.ModelMixin)):
        raise EdgediffError(
            f"unet_config.json in {path} names no diffusers model class ({unet_cfg.get('_class_name')!r})"
        )
    try:
        model = cls.from_config({k: v for k, v in unet_cfg.items() if not k.startswith("_")})
    except (TypeError, ValueError) as exc:
        raise EdgediffError(f"unet_config.json in {path} does not build a {cls.__name__}: {exc}") from exc
    dtype = getattr(torch, str(extra.get("dtype", "float32")), torch.float32)
    if dtype != torch.float32:
        model.to(dtype)
    try:
        quantize_(model, recipe, num_steps=extra.get("num_steps"))
    except EdgediffError as exc:
        raise EdgediffError(f"recipe.json in {path} does not fit unet_config.json: {exc}") from exc
    recipe_bits = {n: m.bits.clone() for n, m in model.named_modules() if isinstance(m, WeightQuantizer)}
    try:
        missing, unexpected = load_model(model, str(weights), strict=False)
    except Exception as exc:  # safetensors raises its own error type for corrupt headers
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise EdgediffError(f"corrupt model.safetensors in {path}: {first}") from exc
    missing, unexpected = sorted(missing), sorted(unexpected)
    if missing or unexpected:
        raise EdgediffError(
            f"model.safetensors in {path} does not match recipe.json (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}); re-save the model"
        )
    _check_consistent(path, model, recipe, recipe_bits, meta, extra)
    model.eval()
    return model, recipe, texts["scheduler_config.json"], meta


def _main_setting(layer: QuantLayer) -> tuple[int, int | None]:
    """A layer's (weight bits, activation bits); a per-channel bit vector counts as its most common value."""
    bits = [int(b) for b in layer.weight_quant.bits.flatten().tolist()]
    w = Counter(bits).most_common(1)[0][0]
    return w, (layer.act_quant.bits if layer.act_quant is not None else None)


def _check_consistent(
    path: Path, model: nn.Module, recipe: Recipe, recipe_bits: dict, meta: dict, extra: dict
) -> None:
    """Recipe vs weights vs meta (see the module docstring); one-line EdgediffError on a contradiction."""
    for name, quantizer in model.named_modules():
        if not isinstance(quantizer, WeightQuantizer):
            continue
        expected, stored = recipe_bits[name], quantizer.bits
        if expected.shape != stored.shape or not bool((expected == stored).all()):
            raise EdgediffError(
                f"model.safetensors in {path} stores {sorted(set(stored.flatten().tolist()))}-bit weights in "
                f"{name.removesuffix('.weight_quant')} but recipe.json says "
                f"{sorted(set(expected.flatten().tolist()))}: recipe and weights come from different "
                "models; re-quantize or restore the folder's own recipe.json"
            )
        lo, hi = qrange(stored)
        z = quantizer.zero_point.to(torch.int64)
        if bool(((z < lo.to(z.dtype).expand_as(z)) | (z > hi.to(z.dtype).expand_as(z))).any()):
            raise EdgediffError(
                f"model.safetensors in {path}: zero points of {name} lie outside the "
                f"{stored.min().item()}-bit code range; the weights are corrupt, re-quantize"
            )
    for name, quantizer in model.named_modules():
        if isinstance(quantizer, ActQuantizer) and hasattr(quantizer, "zero_point"):
            z = quantizer.zero_point
            if bool(((z < quantizer.qmin) | (z > quantizer.qmax)).any()):
                raise EdgediffError(
                    f"model.safetensors in {path}: activation zero points of {name} lie outside the "
                    f"{quantizer.bits}-bit range of recipe.json; recipe and weights do not belong together"
                )
    if "bits" in meta:
        try:
            bits = BitSetting.parse(str(meta["bits"]))
        except EdgediffError as exc:
            raise EdgediffError(f"edgediff_meta.json in {path}: {exc}") from exc
        settings = {_main_setting(layer) for layer in model.modules() if isinstance(layer, QuantLayer)}
        if settings and (bits.w, bits.a) not in settings:
            have = ", ".join(f"W{w}A{a or 16}" for w, a in sorted(settings, key=str))
            raise EdgediffError(
                f"edgediff_meta.json in {path} says {meta['bits']} but recipe.json quantizes its layers "
                f"as {have}; restore the folder's own files or re-quantize"
            )
    if extra.get("recipe_sha256") not in (None, recipe_digest(recipe)):
        raise EdgediffError(
            f"recipe.json in {path} was changed after the folder was written (digest mismatch); "
            "restore it or re-quantize"
        )
    if extra.get("meta_sha256") not in (None, meta_digest(meta)):
        raise EdgediffError(
            f"edgediff_meta.json in {path} was edited after the folder was written (digest mismatch); "
            "restore it or re-quantize"
        )
