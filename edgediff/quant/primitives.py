"""Fake-quantization primitives as `torch.library.custom_op`s (namespace `edgediff`).

Each op has an eager kernel (plain torch math), a fake kernel (`register_fake`, so
`torch.export` traces it with dynamic shapes) and a backward (`register_autograd`):

* `edgediff::fake_quant_per_tensor(x, scale, zero_point, qmin, qmax)`
* `edgediff::fake_quant_per_channel(x, scale, zero_point, qmin, qmax, axis)` with 1-D
  `scale`/`zero_point`/`qmin`/`qmax` along `axis` (per-channel bit widths)
* `edgediff::fake_quant_dynamic_per_token(x, qmin, qmax, dim)`

Forward (docs/methods.md notation, 6.1): `x_hat = s * (clip(round(x/s) + z, qmin, qmax) - z)`.
Backward: straight-through estimator for `x` (1 where `round(x/s) + z` lies in
`[qmin, qmax]`, 0 outside) and the LSQ step gradient without LSQ's scale factor
(`round(x/s) - x/s` inside, `qmin - z` / `qmax - z` outside). Zero points are integer
tensors and get no gradient. The dynamic op (docs/methods.md 6.4) takes an asymmetric min-max
range per token at run time (range widened to include 0) and passes gradients straight
through. The exporter maps these ops to ONNX QuantizeLinear/DequantizeLinear.
"""

from __future__ import annotations

import torch
from torch import Tensor

_EPS = 1e-8


def _channel_view(v: Tensor, ndim: int, axis: int) -> Tensor:
    """Reshape a 1-D per-channel vector so it broadcasts along `axis` of an `ndim` tensor."""
    shape = [1] * ndim
    shape[axis] = -1
    return v.reshape(shape)


def fake_quant_math(x: Tensor, scale: Tensor, zero_point: Tensor, qmin, qmax) -> Tensor:
    """Reference fake quantization `s * (clip(round(x/s) + z, qmin, qmax) - z)` (docs/methods.md 6.1).

    All arguments broadcast against `x`; `qmin`/`qmax` are ints or tensors. The spec-based
    dequantization (`spec.py`) uses exactly this sequence of operations, so both agree bitwise.
    """
    z = zero_point.to(scale.dtype)
    q = torch.div(x, scale).round_().add_(z)
    q = q.clamp_(min=qmin, max=qmax) if isinstance(qmin, Tensor) else q.clamp_(qmin, qmax)
    return q.sub_(z).mul_(scale).to(x.dtype)


def quant_codes(x: Tensor, scale: Tensor, zero_point: Tensor, qmin, qmax) -> Tensor:
    """Integer codes `clip(round(x/s) + z, qmin, qmax)` as int32 (broadcasting as above)."""
    z = zero_point.to(scale.dtype)
    return torch.clamp(torch.round(x / scale) + z, qmin, qmax).to(torch.int32)


def dynamic_token_params(x: Tensor, qmin: int, qmax: int, dim: int) -> tuple[Tensor, Tensor]:
    """Per-token asymmetric min-max `(scale, zero_point)` reduced over `dim` (docs/methods.md 6.4)."""
    xf = x.float()
    lo = xf.amin(dim=dim, keepdim=True).clamp(max=0.0)
    hi = xf.amax(dim=dim, keepdim=True).clamp(min=0.0)
    scale = ((hi - lo) / float(qmax - qmin)).clamp(min=_EPS)
    zero = torch.clamp(torch.round(qmin - lo / scale), qmin, qmax)
    return scale, zero


def _step_grad(grad: Tensor, x: Tensor, scale: Tensor, zero: Tensor, qmin, qmax) -> tuple[Tensor, Tensor]:
    """Elementwise STE gradient for x and LSQ step gradient for s (before reduction)."""
    z = zero.to(scale.dtype)
    xs = x / scale
    r = torch.round(xs) + z
    inside = (r >= qmin) & (r <= qmax)
    gx = grad * inside.to(grad.dtype)
    gs = grad * (torch.clamp(r, qmin, qmax) - z - torch.where(inside, xs, torch.zeros_like(xs)))
    return gx, gs


# ---------------------------------------------------------------- per tensor


@torch.library.custom_op("edgediff::fake_quant_per_tensor", mutates_args=())
def fake_quant_per_tensor(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> Tensor:
    """Per-tensor fake quantization; `scale`/`zero_point` hold one element."""
    return fake_quant_math(x, scale.reshape(()), zero_point.reshape(()), qmin, qmax)


@fake_quant_per_tensor.register_fake
def _(x, scale, zero_point, qmin, qmax):
    return torch.empty_like(x)


def _pt_setup(ctx, inputs, output):
    x, scale, zero_point, qmin, qmax = inputs
    ctx.save_for_backward(x, scale, zero_point)
    ctx.qrange = (qmin, qmax)


def _pt_backward(ctx, grad):
    x, scale, zero_point = ctx.saved_tensors
    qmin, qmax = ctx.qrange
    gx, gs = _step_grad(grad, x, scale.reshape(()), zero_point.reshape(()), qmin, qmax)
    return gx, gs.sum().reshape(scale.shape).to(scale.dtype), None, None, None


fake_quant_per_tensor.register_autograd(_pt_backward, setup_context=_pt_setup)


# ---------------------------------------------------------------- per channel


@torch.library.custom_op("edgediff::fake_quant_per_channel", mutates_args=())
def fake_quant_per_channel(
    x: Tensor, scale: Tensor, zero_point: Tensor, qmin: Tensor, qmax: Tensor, axis: int
) -> Tensor:
    """Per-channel fake quantization along `axis`; all four vectors have `x.shape[axis]` entries.

    `qmin`/`qmax` are integer vectors, so each channel can have its own bit width
    (docs/methods.md 1.2(4), 6.8).
    """
    n, a = x.dim(), axis % x.dim()
    return fake_quant_math(
        x,
        _channel_view(scale, n, a),
        _channel_view(zero_point, n, a),
        _channel_view(qmin, n, a).to(scale.dtype),
        _channel_view(qmax, n, a).to(scale.dtype),
    )


@fake_quant_per_channel.register_fake
def _(x, scale, zero_point, qmin, qmax, axis):
    return torch.empty_like(x)


def _pc_setup(ctx, inputs, output):
    x, scale, zero_point, qmin, qmax, axis = inputs
    ctx.save_for_backward(x, scale, zero_point, qmin, qmax)
    ctx.axis = axis


def _pc_backward(ctx, grad):
    x, scale, zero_point, qmin, qmax = ctx.saved_tensors
    n, a = x.dim(), ctx.axis % x.dim()
    gx, gs = _step_grad(
        grad,
        x,
        _channel_view(scale, n, a),
        _channel_view(zero_point, n, a),
        _channel_view(qmin, n, a).to(scale.dtype),
        _channel_view(qmax, n, a).to(scale.dtype),
    )
    dims = [d for d in range(n) if d != a]
    gs = gs.sum(dim=dims) if dims else gs
    return gx, gs.reshape(scale.shape).to(scale.dtype), None, None, None, None


fake_quant_per_channel.register_autograd(_pc_backward, setup_context=_pc_setup)


# ---------------------------------------------------------------- dynamic per token


@torch.library.custom_op("edgediff::fake_quant_dynamic_per_token", mutates_args=())
def fake_quant_dynamic_per_token(x: Tensor, qmin: int, qmax: int, dim: int) -> Tensor:
    """Dynamic per-token fake quantization: min-max over `dim` (the channel dim) per token."""
    scale, zero = dynamic_token_params(x, qmin, qmax, dim)
    return fake_quant_math(x.float(), scale, zero, qmin, qmax).to(x.dtype)


@fake_quant_dynamic_per_token.register_fake
def _(x, qmin, qmax, dim):
    return torch.empty_like(x)


def _dyn_setup(ctx, inputs, output):
    pass


def _dyn_backward(ctx, grad):
    return grad, None, None, None


fake_quant_dynamic_per_token.register_autograd(_dyn_backward, setup_context=_dyn_setup)


def qrange(bits: int | Tensor) -> tuple:
    """Unsigned code range `(0, 2^b - 1)` for an int or an integer tensor of bit widths."""
    if isinstance(bits, Tensor):
        return torch.zeros_like(bits), torch.pow(2, bits) - 1
    return 0, (1 << int(bits)) - 1
