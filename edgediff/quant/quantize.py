"""`quantize_`: swap a model's Linear/Conv2d layers for quantized ones in place (docs/design.md 2).

Also `set_step` (tell per-step activation quantizers the sampler step), `quant_layers` and
`quant_disabled` (run the float path, e.g. for calibration).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn

from edgediff.errors import EdgediffError
from edgediff.quant.layers import QuantConv2d, QuantLayer, QuantLinear
from edgediff.quant.quantizers import ActQuantizer
from edgediff.quant.recipe import Recipe

try:  # diffusers' LoRA-compatible layers subclass nn.Linear/nn.Conv2d (deprecated, still in 0.42)
    from diffusers.models.lora import LoRACompatibleConv, LoRACompatibleLinear
except ImportError:  # pragma: no cover - removed in a later diffusers
    LoRACompatibleConv = LoRACompatibleLinear = None

# nn.MultiheadAttention reads out_proj.weight directly and never calls it: swapping it would
# silently leave it unquantized, so it is reported as skipped.
_SKIP = (nn.modules.linear.NonDynamicallyQuantizableLinear,)


@dataclass(frozen=True)
class QuantReport:
    """What `quantize_` did: layer name -> setting label, layers kept FP, parameter counts."""

    model_class: str
    quantized: dict[str, str]
    kept_fp: tuple[str, ...]
    skipped: tuple[str, ...]
    params_quantized: int
    params_fp: int
    mean_weight_bits: float

    def summary(self) -> str:
        """Human-readable multi-line summary."""
        counts: dict[str, int] = {}
        for label in self.quantized.values():
            counts[label] = counts.get(label, 0) + 1
        lines = [
            f"{self.model_class}: {len(self.quantized)} layers quantized "
            f"({self.params_quantized:,} weights, mean {self.mean_weight_bits:.2f} bits), "
            f"{len(self.kept_fp)} kept FP ({self.params_fp:,} weights)"
        ]
        lines += [f"  {label}: {n} layers" for label, n in sorted(counts.items())]
        if self.skipped:
            lines.append(f"  skipped (unsupported): {', '.join(self.skipped)}")
        return "\n".join(lines)


def quant_layers(model: nn.Module) -> dict[str, QuantLayer]:
    """All quantized layers of `model` by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLayer)}


def set_step(model: nn.Module, i: int | None) -> None:
    """Select sampler step `i` (0 = first/noisiest call) in every per-step activation quantizer.

    Pass as `ddim_sample(..., set_step=lambda i: set_step(model, i))`. `None` clears it.
    """
    for m in model.modules():
        if isinstance(m, ActQuantizer):
            m.set_step(i)


@contextlib.contextmanager
def quant_disabled(model: nn.Module, weights: bool = True, acts: bool = True) -> Iterator[nn.Module]:
    """Temporarily turn off weight and/or activation quantizers (restores the previous flags)."""
    layers = quant_layers(model).values()
    saved = [
        (layer.weight_quant.enabled, layer.act_quant.enabled if layer.act_quant else True) for layer in layers
    ]
    try:
        for layer, (w, a) in zip(layers, saved):
            layer.set_quant_enabled(weights=w and not weights, acts=a and not acts)
        yield model
    finally:
        for layer, (w, a) in zip(layers, saved):
            layer.set_quant_enabled(weights=w, acts=a)


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def quantize_(model: nn.Module, recipe: Recipe, num_steps: int | None = None) -> QuantReport:
    """Replace every Linear/Conv2d that `recipe` assigns a `LayerQuant` by QuantLinear/QuantConv2d.

    All or nothing: the layers are built first (weights copied), then swapped in. Weight ranges
    start at min-max (run `calibrate` for the recipe's
    `w_range` and the activation ranges). `num_steps` sizes per-step activation tables.
    Raises EdgediffError on an already quantized model, a rule matching no module, a
    per-step recipe without `num_steps`, or a LoRA-compatible layer with an unfused LoRA.
    """
    if quant_layers(model):
        raise EdgediffError("model is already quantized; start from the float model (or load_quantized)")
    recipe.validate(model)
    if num_steps is not None and (not isinstance(num_steps, int) or num_steps < 1):
        raise EdgediffError(f"num_steps must be a positive int (the sampler's step count), got {num_steps!r}")
    quantized: dict[str, str] = {}
    kept, skipped = [], []
    swaps: list[tuple[str, QuantLayer]] = []
    params_q = params_fp = 0
    bit_sum = 0.0
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    for name, module in targets:
        if isinstance(module, _SKIP):
            skipped.append(name)
            continue
        _, lq = recipe.match(name)
        if lq is None:
            kept.append(name)
            params_fp += module.weight.numel()
            continue
        if getattr(module, "lora_layer", None) is not None:
            raise EdgediffError(
                f"layer {name} carries an unfused diffusers LoRA; call model.fuse_lora() first"
            )
        if lq.a_mode == "per_step" and lq.a_bits is not None and num_steps is None:
            raise EdgediffError(
                f"recipe gives layer {name} per_step activation quantizers: "
                "pass num_steps= (the sampler's step count)"
            )
        cls = QuantLinear if isinstance(module, nn.Linear) else QuantConv2d
        new = cls.from_float(module, lq, num_steps)
        new.train(module.training)
        new.name = name
        if new.act_quant is not None:
            new.act_quant.name = name
        swaps.append((name, new))
        quantized[name] = lq.label + ("" if lq.a_bits is None else f" {lq.a_mode}")
        n = module.weight.numel()
        params_q += n
        bit_sum += float(new.weight_quant.bits.float().mean()) * n
    for name, new in swaps:  # only after every layer was built: all or nothing
        _set_submodule(model, name, new)
    return QuantReport(
        model_class=type(model).__name__,
        quantized=quantized,
        kept_fp=tuple(kept),
        skipped=tuple(skipped),
        params_quantized=params_q,
        params_fp=params_fp,
        mean_weight_bits=bit_sum / params_q if params_q else 0.0,
    )
