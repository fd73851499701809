"""Export-time PyTorch custom ops and their ONNX translations
(docs/design.md section 2, docs/deployment.md 11).

The exporter replaces every quantized layer by an export module (`modules.py`) whose forward
calls these ops on integer codes and constant (or per-step gathered) scales. The dynamo
exporter maps them through `TRANSLATION_TABLE` to standard ONNX nodes:

* `qdq(x, scale, zero_point, qmin, qmax)` -> [Clip] -> QuantizeLinear -> DequantizeLinear.
  The Clip to `[(qmin - z) s, (qmax - z) s]` makes a b-bit quantizer (b < 8, or a symmetric
  int8 container for TensorRT) out of an 8-bit Q/DQ pair exactly (docs/methods.md 1.7, 6.13.3).
* `dq_weight(codes, scale, zero_point)` -> DequantizeLinear(axis 0) of an integer initializer.
* `residual_binary_linear` / `residual_binary_conv` -> one `edgediff.ResidualBinaryLinear` /
  `edgediff.ResidualBinaryConv` node (docs/methods.md 2.4); `ops.add_edgediff_functions` later adds
  the standard-op function bodies so ONNX Runtime runs the same file.

Each op's eager kernel computes exactly what the ONNX nodes compute (round half to even).
"""

from __future__ import annotations

import torch
from onnxscript import opset21 as op
from onnxscript.values import Opset
from torch import Tensor

from edgediff_export.signs import unpack_signs

EDGEDIFF_DOMAIN = "edgediff"
edgediff_opset = Opset(EDGEDIFF_DOMAIN, 1)


def _col(v: Tensor, ndim: int) -> Tensor:
    return v.reshape(-1, *([1] * (ndim - 1)))


@torch.library.custom_op("edgediff_export::qdq", mutates_args=())
def qdq(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> Tensor:
    """`s * (clip(round(x / s) + z, qmin, qmax) - z)` with a scalar scale and zero point."""
    z = zero_point.to(torch.float32)
    return ((torch.clamp(torch.round(x / scale) + z, qmin, qmax) - z) * scale).to(x.dtype)


@qdq.register_fake
def _(x, scale, zero_point, qmin, qmax):
    return torch.empty_like(x)


@torch.library.custom_op("edgediff_export::clip_qdq", mutates_args=())
def clip_qdq(
    x: Tensor, lo: Tensor, hi: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int
) -> Tensor:
    """`qdq(clip(x, lo, hi), ...)`: a symmetric int8 Q/DQ that keeps an asymmetric float range."""
    return qdq(torch.minimum(torch.maximum(x, lo), hi), scale, zero_point, qmin, qmax)


@clip_qdq.register_fake
def _(x, lo, hi, scale, zero_point, qmin, qmax):
    return torch.empty_like(x)


@torch.library.custom_op("edgediff_export::dq_weight", mutates_args=())
def dq_weight(codes: Tensor, scale: Tensor, zero_point: Tensor) -> Tensor:
    """Per-output-channel dequantization `s_c * (q - z_c)` of integer weight codes."""
    n = codes.dim()
    return (codes.to(torch.float32) - _col(zero_point.to(torch.float32), n)) * _col(scale, n)


@dq_weight.register_fake
def _(codes, scale, zero_point):
    return torch.empty(codes.shape, dtype=torch.float32, device=codes.device)


def unpack_signs_torch(signs: Tensor, n: int) -> Tensor:
    """uint8 [K, ceil(n/8)] packed signs -> float [K, n] of ±1, decoded by `signs.unpack_signs`."""
    decoded = unpack_signs(signs.detach().cpu().numpy(), n)
    return torch.from_numpy(decoded).to(device=signs.device, dtype=torch.float32)


def _residual_weight(
    wq: Tensor, w_scale: Tensor, w_zero: Tensor, signs: Tensor, alpha: Tensor, channels: Tensor
) -> Tensor:
    n = wq.dim()
    w = (wq.to(torch.float32) - _col(w_zero.to(torch.float32), n)) * _col(w_scale, n)
    if channels.numel():
        rows = unpack_signs_torch(signs, w[0].numel()) * alpha.reshape(-1, 1)
        w = w.clone()
        w[channels] = w[channels] + rows.reshape(-1, *w.shape[1:])
    return w


@torch.library.custom_op("edgediff_export::residual_binary_linear", mutates_args=())
def residual_binary_linear(
    x: Tensor,
    wq: Tensor,
    w_scale: Tensor,
    w_zero: Tensor,
    signs: Tensor,
    alpha: Tensor,
    channels: Tensor,
    bias: Tensor,
    in_features: int,
) -> Tensor:
    """`x W^T + b` with `W = s(Wq - z) + alpha_k sign_k` on the residual rows (docs/methods.md 2.4)."""
    w = _residual_weight(wq, w_scale, w_zero, signs, alpha, channels)
    return torch.nn.functional.linear(x, w, bias)


@residual_binary_linear.register_fake
def _(x, wq, w_scale, w_zero, signs, alpha, channels, bias, in_features):
    return x.new_empty((*x.shape[:-1], wq.shape[0]))


@torch.library.custom_op("edgediff_export::residual_binary_conv", mutates_args=())
def residual_binary_conv(
    x: Tensor,
    wq: Tensor,
    w_scale: Tensor,
    w_zero: Tensor,
    signs: Tensor,
    alpha: Tensor,
    channels: Tensor,
    bias: Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    kernel_shape: list[int],
) -> Tensor:
    """Conv variant of `residual_binary_linear`; `padding` is symmetric `[ph, pw]`."""
    w = _residual_weight(wq, w_scale, w_zero, signs, alpha, channels)
    return torch.nn.functional.conv2d(x, w, bias, stride, padding, dilation, groups)


@residual_binary_conv.register_fake
def _(x, wq, w_scale, w_zero, signs, alpha, channels, bias, stride, padding, dilation, groups, kernel_shape):
    kh, kw = wq.shape[2], wq.shape[3]
    h = (x.shape[2] + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    w = (x.shape[3] + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return x.new_empty((x.shape[0], wq.shape[0], h, w))


# ------------------------------------------------------------------ ONNX translations


def _qdq_onnx(x, scale, zero_point, qmin: int, qmax: int):
    zf = op.Cast(zero_point, to=1)
    full = (qmin, qmax) in ((0, 255), (-128, 127))
    if not full:
        lo = op.Mul(op.Sub(op.Constant(value_float=float(qmin)), zf), scale)
        hi = op.Mul(op.Sub(op.Constant(value_float=float(qmax)), zf), scale)
        x = op.Clip(x, lo, hi)
    q = op.QuantizeLinear(x, scale, zero_point)
    return op.DequantizeLinear(q, scale, zero_point)


def _clip_qdq_onnx(x, lo, hi, scale, zero_point, qmin: int, qmax: int):
    q = op.QuantizeLinear(op.Clip(x, lo, hi), scale, zero_point)
    return op.DequantizeLinear(q, scale, zero_point)


def _dq_weight_onnx(codes, scale, zero_point):
    return op.DequantizeLinear(codes, scale, zero_point, axis=0)


def _residual_linear_onnx(x, wq, w_scale, w_zero, signs, alpha, channels, bias, in_features: int):
    return edgediff_opset.ResidualBinaryLinear(
        x,
        wq,
        w_scale,
        w_zero,
        signs,
        alpha,
        channels,
        bias,
        in_features=in_features,
        plugin_namespace="edgediff",
        plugin_version="1",
    )


def _residual_conv_onnx(
    x,
    wq,
    w_scale,
    w_zero,
    signs,
    alpha,
    channels,
    bias,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    kernel_shape: list[int],
):
    return edgediff_opset.ResidualBinaryConv(
        x,
        wq,
        w_scale,
        w_zero,
        signs,
        alpha,
        channels,
        bias,
        kernel_shape=kernel_shape,
        strides=stride,
        pads=[padding[0], padding[1], padding[0], padding[1]],
        dilations=dilation,
        group=groups,
        plugin_namespace="edgediff",
        plugin_version="1",
    )


TRANSLATION_TABLE = {
    torch.ops.edgediff_export.qdq.default: _qdq_onnx,
    torch.ops.edgediff_export.clip_qdq.default: _clip_qdq_onnx,
    torch.ops.edgediff_export.dq_weight.default: _dq_weight_onnx,
    torch.ops.edgediff_export.residual_binary_linear.default: _residual_linear_onnx,
    torch.ops.edgediff_export.residual_binary_conv.default: _residual_conv_onnx,
}
