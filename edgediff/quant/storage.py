"""Stored weight bits of a (fake-)quantized model: what a deployed copy keeps per weight.

    mean bits = Σ stored bits / Σ main weights

over every `nn.Linear` / `nn.Conv2d` of the model, quantized or not. The numerator counts
* a quantized layer's integer codes at their per-channel width (`Σ_c b_c · row`);
* its binary residual: one sign bit per weight of each residual channel plus one `α` per
  channel at its float width;
* its additive LoRA and low-rank branch factors at their float width (merged LoRA lives inside
  the codes and costs nothing extra);
* a floating-point layer's weights at their stored width (32 or 16).
Biases, activation scales and the smoothing vector δ are not weights and are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from edgediff.quant.layers import QuantLayer


@dataclass(frozen=True)
class WeightStorage:
    """`weights`: main weight count; `bits`: stored bits of them plus every branch."""

    weights: int
    bits: float

    @property
    def mean_bits(self) -> float:
        """Stored bits per main weight (0 for a model without weights)."""
        return self.bits / self.weights if self.weights else 0.0


def _float_bits(*tensors: Tensor | None) -> float:
    return float(sum(t.numel() * t.element_size() * 8 for t in tensors if t is not None))


def weight_storage(model: nn.Module) -> WeightStorage:
    """Count the stored weight bits of `model` (see the module docstring for what counts)."""
    weights = 0
    bits = 0.0
    inside_quant: set[int] = set()
    for layer in model.modules():
        if isinstance(layer, QuantLayer):
            inside_quant.update(id(m) for m in layer.modules())
            row = layer.weight[0].numel()
            weights += layer.weight.numel()
            bits += float(layer.weight_quant.bits.double().sum()) * row
            if layer.residual is not None:
                k = int(layer.residual.mask.sum())
                bits += k * row + k * layer.residual.alpha.element_size() * 8
            if layer.lora is not None and layer.lora.mode == "additive":
                bits += _float_bits(layer.lora.A, layer.lora.B)
            if layer.lowrank is not None:
                bits += _float_bits(layer.lowrank.A, layer.lowrank.B, layer.lowrank.M)
    for layer in model.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)) and id(layer) not in inside_quant:
            weights += layer.weight.numel()
            bits += _float_bits(layer.weight)
    return WeightStorage(weights=weights, bits=bits)
