"""Storage accounting of a quantized model: bits per weight with every float part counted.

`storage_bits(model)` counts the weights of every `nn.Linear` / `nn.Conv2d` of the model, the
quantized ones and the ones left in floating point ("FP islands", e.g. MPQ-DM's shortcut and
downsampler convs), and charges

* integer weights: `Σ_c bits_c · weights_per_channel` over the output channels of each
  quantized layer, plus one sign bit per weight of every binary-residual channel;
* float layers: every weight of an unquantized conv/linear at the float width;
* float branches: additive LoRA factors `A`, `B`, low-rank branch factors (and frame scales),
  and the residual `α` of each residual channel, at the float width (a merged LoRA folds into
  the integer weights and costs nothing);
* per-channel metadata: weight-quantizer scales and zero points and the smoothing `δ`, at their
  stored widths (scales and `δ` at the float width).

`bits_per_weight = total bits / all conv/linear weights`; `weight_bits_per_weight` leaves the
per-channel metadata out (codes, residual signs, float layers and float branches only: the
bundle manifest's `quant.mean_weight_bits`, so a plain W8 model stores exactly 8). The float
width is the stored one (the tensor's element size, 32 for float32 checkpoints, 16 for an fp16
layer) unless `float_bits` is given (16 for an FP16 deployment). Biases, norms, embeddings and
activation scales are float in every method and not counted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import Tensor, nn

from edgediff.quant.layers import QuantLayer


@dataclass(frozen=True)
class StorageReport:
    """Counts and bits of one model's conv/linear weight storage (see module docstring)."""

    quantized_weights: int
    integer_bits: int  # Σ bits over the integer weights
    residual_sign_bits: int  # one per weight of a binary-residual channel
    float_layer_weights: int  # weights of conv/linear layers kept in floating point
    float_layer_bits: int
    float_branch_params: int  # additive LoRA, low-rank branch, residual α
    float_branch_bits: int
    metadata_bits: int  # weight scales, zero points, smoothing δ
    float_layers: tuple[str, ...] = ()

    @property
    def total_weights(self) -> int:
        return self.quantized_weights + self.float_layer_weights

    @property
    def total_bits(self) -> int:
        return (
            self.integer_bits
            + self.residual_sign_bits
            + self.float_layer_bits
            + self.float_branch_bits
            + self.metadata_bits
        )

    @property
    def weight_bits(self) -> int:
        """Bits of the weights and their branches alone (`total_bits` less the metadata)."""
        return self.total_bits - self.metadata_bits

    @property
    def weight_bits_per_weight(self) -> float:
        """Weight and branch storage over all conv/linear weights, metadata left out."""
        return self.weight_bits / max(self.total_weights, 1)

    @property
    def bits_per_weight(self) -> float:
        """All storage over all conv/linear weights."""
        return self.total_bits / max(self.total_weights, 1)

    @property
    def integer_bits_per_weight(self) -> float:
        """Mean stored bits of the quantized weights alone (residual signs included)."""
        return (self.integer_bits + self.residual_sign_bits) / max(self.quantized_weights, 1)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["float_layers"] = list(self.float_layers)
        out.update(
            total_weights=self.total_weights,
            total_bits=self.total_bits,
            weight_bits=self.weight_bits,
            weight_bits_per_weight=self.weight_bits_per_weight,
            bits_per_weight=self.bits_per_weight,
            integer_bits_per_weight=self.integer_bits_per_weight,
        )
        return out


def _width(t: Tensor, float_bits: int | None) -> int:
    if t.is_floating_point() and float_bits is not None:
        return float_bits
    return t.element_size() * 8


def storage_bits(model: nn.Module, float_bits: int | None = None) -> StorageReport:
    """The storage of `model`'s conv/linear weights (floats at `float_bits`, default: as stored)."""
    if float_bits is not None and float_bits < 1:
        raise ValueError(f"float_bits must be >= 1, got {float_bits}")
    quantized = integer = signs = 0
    branch_params = branch_bits = meta = 0
    float_weights = float_weight_bits = 0
    float_layers: list[str] = []
    inside_quant: set[int] = set()  # a quantized layer's own submodules are counted with it
    for name, m in model.named_modules():
        if id(m) in inside_quant:
            continue
        if isinstance(m, QuantLayer):
            inside_quant.update(id(sub) for sub in m.modules())
            per_row = m.weight[0].numel()
            quantized += m.weight.numel()
            integer += int(m.weight_quant.bits.long().sum()) * per_row
            wq = m.weight_quant
            meta += wq.scale.numel() * _width(wq.scale, float_bits)
            meta += wq.zero_point.numel() * _width(wq.zero_point, float_bits)
            if m.smooth is not None:
                meta += m.smooth.delta.numel() * _width(m.smooth.delta, float_bits)
            branch: list[Tensor] = []
            if m.lora is not None and m.lora.mode == "additive":
                branch += [m.lora.A, m.lora.B]
            if m.lowrank is not None:
                branch += [m.lowrank.A, m.lowrank.B] + ([m.lowrank.M] if m.lowrank.M is not None else [])
            for t in branch:
                branch_params += t.numel()
                branch_bits += t.numel() * _width(t, float_bits)
            if m.residual is not None:
                n = int(m.residual.mask.sum())
                signs += n * per_row
                branch_params += n
                branch_bits += n * _width(m.residual.alpha, float_bits)
        elif isinstance(m, (nn.Linear, nn.Conv2d)):
            w = m.weight
            float_weights += w.numel()
            float_weight_bits += w.numel() * _width(w, float_bits)
            float_layers.append(name)
    return StorageReport(
        quantized_weights=quantized,
        integer_bits=integer,
        residual_sign_bits=signs,
        float_layer_weights=float_weights,
        float_layer_bits=float_weight_bits,
        float_branch_params=branch_params,
        float_branch_bits=branch_bits,
        metadata_bits=meta,
        float_layers=tuple(float_layers),
    )


__all__ = ["StorageReport", "storage_bits"]
