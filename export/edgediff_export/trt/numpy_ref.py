"""NumPy reference of edgediff::ResidualBinaryLinear / ResidualBinaryConv (docs/methods.md section 2.4).

The oracle for the CUDA kernels and the TensorRT plugin. It follows the op contract literally:
the main branch and the binary residual are computed separately (in float64) and added.

    main weight   W[c, j] = w_scale[c] * (Wq[c, j] - w_zero[c])
    residual      Y[..., channels[k]] += alpha[k] * sum_j X[..., j] * sign[k, j]
    sign bits     bit b (LSB first) of byte j of row k is the sign of column 8j+b: 1 -> +1, 0 -> -1

It imports only numpy and ``edgediff_export.signs`` (the sign layout, numpy only), so the GPU
check (``bench/gpu_check.py``) runs it without torch or onnx.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgediff_export.signs import pack_signs, unpack_signs

__all__ = [
    "conv_output_size",
    "dense_weight",
    "dequantize_main",
    "pack_signs",
    "residual_binary_conv",
    "residual_binary_linear",
    "unpack_signs",
]


def dequantize_main(wq: np.ndarray, w_scale: np.ndarray, w_zero: np.ndarray) -> np.ndarray:
    """w_scale[c] * (Wq[c, ...] - w_zero[c]) in float64, same shape as Wq."""
    q = np.asarray(wq).astype(np.float64)
    shape = (-1,) + (1,) * (q.ndim - 1)
    scale = np.asarray(w_scale, dtype=np.float64).reshape(shape)
    zero = np.asarray(w_zero).astype(np.float64).reshape(shape)
    return scale * (q - zero)


def _residual_rows(
    signs: np.ndarray, alpha: np.ndarray, channels: np.ndarray, cout: int, row_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """Validated (channels as int64 [K], alpha[k] * sign[k, :] as float64 [K, row_len])."""
    chans = np.asarray(channels).astype(np.int64).reshape(-1)
    a = np.asarray(alpha, dtype=np.float64).reshape(-1)
    k = chans.shape[0]
    if a.shape[0] != k or np.asarray(signs).shape[0] != k:
        raise ValueError(
            f"signs, alpha and channels must have K rows, got {np.asarray(signs).shape[0]}, {a.shape[0]}, {k}"
        )
    if k and (chans.min() < 0 or chans.max() >= cout or np.any(np.diff(chans) <= 0)):
        raise ValueError("channels must be sorted unique indices in [0, Cout)")
    if k == 0:
        return chans, np.zeros((0, row_len))
    return chans, a[:, None] * unpack_signs(signs, row_len).astype(np.float64)


def dense_weight(
    wq: np.ndarray,
    w_scale: np.ndarray,
    w_zero: np.ndarray,
    signs: np.ndarray,
    alpha: np.ndarray,
    channels: np.ndarray,
) -> np.ndarray:
    """The effective float64 weight (main + residual), shape of Wq: the baseline a GEMM would use."""
    w = dequantize_main(wq, w_scale, w_zero)
    row_len = int(np.prod(w.shape[1:]))
    chans, res = _residual_rows(signs, alpha, channels, w.shape[0], row_len)
    flat = w.reshape(w.shape[0], row_len)
    flat[chans] += res
    return flat.reshape(w.shape)


def residual_binary_linear(
    x: np.ndarray,
    wq: np.ndarray,
    w_scale: np.ndarray,
    w_zero: np.ndarray,
    signs: np.ndarray,
    alpha: np.ndarray,
    channels: np.ndarray,
    bias: np.ndarray | None = None,
    out_dtype: np.dtype | type | None = None,
) -> np.ndarray:
    """Y[..., Cout] = X.W^T + bias + residual; computed in float64, returned as out_dtype (default X's)."""
    x64 = np.asarray(x).astype(np.float64)
    cout, cin = np.asarray(wq).shape
    if x64.shape[-1] != cin:
        raise ValueError(f"X has {x64.shape[-1]} features, Wq expects {cin}")
    y = x64 @ dequantize_main(wq, w_scale, w_zero).T
    chans, res = _residual_rows(signs, alpha, channels, cout, cin)
    if chans.size:
        y[..., chans] += x64 @ res.T
    if bias is not None:
        y += np.asarray(bias, dtype=np.float64)
    return y.astype(out_dtype or np.asarray(x).dtype)


def conv_output_size(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int, dilation: int) -> int:
    """ONNX Conv output extent for one spatial axis."""
    return (size + pad_begin + pad_end - dilation * (kernel - 1) - 1) // stride + 1


def conv2d(
    x: np.ndarray,
    w: np.ndarray,
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
    group: int,
) -> np.ndarray:
    """Plain float64 grouped NCHW convolution (ONNX pads [top, left, bottom, right])."""
    n, cin, h, wd = x.shape
    cout, cin_pg, kh, kw = w.shape
    if cin != cin_pg * group or cout % group:
        raise ValueError(f"X has {cin} channels; Wq {w.shape} with group={group} does not match")
    sh, sw = strides
    dh, dw = dilations
    pt, pl, pb, pr = pads
    ho = conv_output_size(h, kh, sh, pt, pb, dh)
    wo = conv_output_size(wd, kw, sw, pl, pr, dw)
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    out = np.zeros((n, cout, ho, wo))
    cout_pg = cout // group
    for g in range(group):
        xg = xp[:, g * cin_pg : (g + 1) * cin_pg]
        wg = w[g * cout_pg : (g + 1) * cout_pg]
        for dy in range(kh):
            for dx in range(kw):
                patch = xg[
                    :,
                    :,
                    dy * dh : dy * dh + sh * (ho - 1) + 1 : sh,
                    dx * dw : dx * dw + sw * (wo - 1) + 1 : sw,
                ]
                # [n, c, ho, wo] x [o, c] -> [n, ho, wo, o] (tensordot runs on BLAS, einsum may not)
                contrib = np.tensordot(patch, wg[:, :, dy, dx], axes=([1], [1]))
                out[:, g * cout_pg : (g + 1) * cout_pg] += contrib.transpose(0, 3, 1, 2)
    return out


def residual_binary_conv(
    x: np.ndarray,
    wq: np.ndarray,
    w_scale: np.ndarray,
    w_zero: np.ndarray,
    signs: np.ndarray,
    alpha: np.ndarray,
    channels: np.ndarray,
    bias: np.ndarray | None = None,
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: Sequence[int] = (1, 1),
    group: int = 1,
    out_dtype: np.dtype | type | None = None,
) -> np.ndarray:
    """NCHW conv with the same weight contract; signs pack the flattened (Cin/group, kh, kw) row."""
    x64 = np.asarray(x).astype(np.float64)
    q = np.asarray(wq)
    if x64.ndim != 4 or q.ndim != 4:
        raise ValueError(f"X and Wq must be 4-D, got {x64.shape} and {q.shape}")
    cout = q.shape[0]
    row_len = int(np.prod(q.shape[1:]))
    y = conv2d(x64, dequantize_main(q, w_scale, w_zero), strides, pads, dilations, group)
    chans, res = _residual_rows(signs, alpha, channels, cout, row_len)
    if chans.size:
        r = np.zeros((cout, row_len))
        r[chans] = res
        y += conv2d(x64, r.reshape(q.shape), strides, pads, dilations, group)
    if bias is not None:
        y += np.asarray(bias, dtype=np.float64).reshape(1, -1, 1, 1)
    return y.astype(out_dtype or np.asarray(x).dtype)
