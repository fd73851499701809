"""`QuantLayerSpec`: what a quantized layer hands the exporter, and its float reference.

The spec holds plain tensors only (integer weight codes, per-channel scales and integer zero
points, bits per channel, activation quantizer description, smoothing δ, binary residual,
low-rank and additive-LoRA factors). Merged LoRA is always already inside the codes, and so is
smoothing (codes are of `W̃ = (W + ΔW)·δ`; the input must still be divided by `δ`).

`dequant(spec, x, step)` rebuilds the layer's fake-quant forward from the spec alone
(docs/methods.md 6.13: fold, then dequantize); it matches the layer's forward to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from edgediff.errors import EdgediffError
from edgediff.quant.branches import lora_delta, lowrank_apply, tqe_apply
from edgediff.quant.primitives import dynamic_token_params, fake_quant_math


@dataclass(frozen=True)
class ActSpec:
    """Activation quantizer on the layer input: `x_hat = s(clip(round(x/s)+z, qmin, qmax) - z)`.

    `mode`: static (scale/zero_point shape (1,)), per_step (shape (num_steps,), entry i for
    sampler step i) or dynamic_per_token (scale/zero None: min-max per token over
    `channel_dim`, computed at run time, docs/methods.md 6.4).
    """

    mode: str
    bits: int
    qmin: int
    qmax: int
    scale: Tensor | None
    zero_point: Tensor | None
    channel_dim: int


@dataclass(frozen=True)
class ResidualCodes:
    """Binary residual (docs/methods.md 2.4): rows `channels` add `alphas[k]·signs[k]` (int8 ±1)."""

    channels: Tensor
    signs: Tensor
    alphas: Tensor


@dataclass(frozen=True)
class LowRankFactors:
    """FP branch `Q(X)·Aᵀ·Bᵀ`, frame blocks of tokens scaled by `M` when given (docs/methods.md 3.2)."""

    A: Tensor
    B: Tensor
    M: Tensor | None


@dataclass(frozen=True)
class TQEFactors:
    """Q-VDiT TQE branch `((M ⊙ X̂)·α)·βᵀ`, `M` per frame from the input (docs/methods.md 3.2, 3.7)."""

    alpha: Tensor  # (Cin, r)
    beta: Tensor  # (Cout, r)
    frames: int
    layout: str  # spatial | temporal (edgediff.quant.branches.frame_blocks)
    tokens: int | None
    use_m: bool

    def apply(self, x: Tensor, xq: Tensor) -> Tensor:
        """The branch output for the (pre-quantization) input `x` and the quantized input `xq`."""
        return tqe_apply(x, xq, self.alpha, self.beta, self.frames, self.layout, self.tokens, self.use_m)


@dataclass(frozen=True)
class LoRAFactors:
    """Additive LoRA (docs/methods.md 6.7): weight `B·A` (per kernel tap for conv) on the quantized input."""

    A: Tensor
    B: Tensor

    def delta(self) -> Tensor:
        """ΔW shaped like the layer weight."""
        return lora_delta(self.A, self.B)


@dataclass(frozen=True)
class QuantLayerSpec:
    """Everything needed to run or export one quantized layer."""

    name: str
    kind: str  # "linear" | "conv2d"
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int] | None
    stride: tuple[int, int] | None
    padding: tuple[int, int] | str | None
    dilation: tuple[int, int] | None
    groups: int
    weight_codes: Tensor  # uint8, weight shape, in [0, 2^bits_c - 1]
    weight_scale: Tensor  # float (Cout,)
    weight_zero_point: Tensor  # int32 (Cout,)
    weight_bits: Tensor  # int32 (Cout,)
    bias: Tensor | None
    act: ActSpec | None
    smooth: Tensor | None  # δ (Cin,): the input is divided by δ
    residual: ResidualCodes | None
    lowrank: LowRankFactors | None
    lora: LoRAFactors | None  # additive LoRA only; merged LoRA is folded into the codes
    tqe: TQEFactors | None = None  # Q-VDiT TQE branch (runs beside the integer GEMM)


def _col(v: Tensor, ndim: int) -> Tensor:
    return v.reshape(-1, *([1] * (ndim - 1)))


def dequant_weight(spec: QuantLayerSpec) -> Tensor:
    """The float weight the layer multiplies the quantized input with (main + residual + branches)."""
    n = spec.weight_codes.dim()
    z = _col(spec.weight_zero_point, n).to(spec.weight_scale.dtype)
    w = (spec.weight_codes.to(spec.weight_scale.dtype) - z) * _col(spec.weight_scale, n)
    if spec.residual is not None:
        r = spec.residual
        alpha = torch.zeros_like(spec.weight_scale)
        alpha[r.channels] = r.alphas.to(alpha.dtype)
        signs = torch.ones_like(w)
        signs[r.channels] = r.signs.to(w.dtype)
        w = w + _col(alpha, n) * signs
    if spec.lora is not None:
        w = w + spec.lora.delta()
    if spec.lowrank is not None and spec.lowrank.M is None:
        A, B = spec.lowrank.A, spec.lowrank.B
        w = w + (B @ A.reshape(A.shape[0], -1)).reshape(w.shape)
    return w


def _prescale(spec: QuantLayerSpec, x: Tensor) -> Tensor:
    if spec.smooth is None:
        return x
    shape = [1] * x.dim()
    shape[-1 if spec.kind == "linear" else 1] = -1
    return x / spec.smooth.reshape(shape)


def dequant_input(spec: QuantLayerSpec, x: Tensor, step: int | None = None) -> Tensor:
    """Smoothing division and activation fake quantization of the layer input."""
    x = _prescale(spec, x)
    a = spec.act
    if a is None:
        return x
    if a.mode == "dynamic_per_token":
        scale, zero = dynamic_token_params(x, a.qmin, a.qmax, a.channel_dim)
        return fake_quant_math(x.float(), scale, zero, a.qmin, a.qmax).to(x.dtype)
    if a.mode == "per_step":
        if step is None or not 0 <= step < a.scale.shape[0]:
            raise EdgediffError(
                f"layer {spec.name}: pass step in 0..{a.scale.shape[0] - 1} for its per-step table"
            )
        i = step
    else:
        i = 0
    return fake_quant_math(x, a.scale[i], a.zero_point[i], a.qmin, a.qmax)


def dequant(spec: QuantLayerSpec, x: Tensor, step: int | None = None) -> Tensor:
    """Float forward rebuilt from the spec alone; equals the quantized layer's forward."""
    xq = dequant_input(spec, x, step)
    w = dequant_weight(spec)
    if spec.kind == "linear":
        y = F.linear(xq, w, spec.bias)
    else:
        y = F.conv2d(xq, w, spec.bias, spec.stride, spec.padding, spec.dilation, spec.groups)
    if spec.lowrank is not None and spec.lowrank.M is not None:
        y = y + lowrank_apply(xq, spec.lowrank.A, spec.lowrank.B, spec.lowrank.M)
    if spec.tqe is not None:
        y = y + spec.tqe.apply(_prescale(spec, x), xq).to(y.dtype)
    return y
