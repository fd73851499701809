"""numpy_ref (the kernels' oracle) against direct float computations written independently."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edgediff_export.trt import numpy_ref as ref


def _random_op(rng: np.random.Generator, cout: int, row_shape: tuple[int, ...], k: int):
    row_len = int(np.prod(row_shape))
    wq = rng.integers(-8, 8, size=(cout, *row_shape)).astype(np.int8)
    scale = rng.uniform(0.01, 0.1, size=cout).astype(np.float32)
    zero = rng.integers(-3, 4, size=cout).astype(np.int8)
    pm1 = rng.choice([-1, 1], size=(k, row_len))
    alpha = rng.uniform(0.01, 0.05, size=k).astype(np.float32)
    channels = np.sort(rng.choice(cout, size=k, replace=False)).astype(np.int64)
    bias = rng.normal(size=cout).astype(np.float32)
    return wq, scale, zero, pm1, alpha, channels, bias


def _sign_bit(packed: np.ndarray, k: int, j: int) -> float:
    """Bit-by-bit reading of the contract: bit (j % 8), LSB first, of byte j // 8; 1 -> +1, 0 -> -1."""
    return 1.0 if (int(packed[k, j // 8]) >> (j % 8)) & 1 else -1.0


def _direct_linear(x, wq, scale, zero, packed, alpha, channels, bias):
    """Scalar loops over the op definition (no vectorized helpers from numpy_ref)."""
    rows = x.reshape(-1, x.shape[-1])
    cout, cin = wq.shape
    out = np.zeros((rows.shape[0], cout))
    for m, c in itertools.product(range(rows.shape[0]), range(cout)):
        acc = sum(float(rows[m, j]) * float(scale[c]) * (int(wq[c, j]) - int(zero[c])) for j in range(cin))
        if bias is not None:
            acc += float(bias[c])
        out[m, c] = acc
    for k, c in enumerate(channels):
        for m in range(rows.shape[0]):
            out[m, c] += float(alpha[k]) * sum(
                float(rows[m, j]) * _sign_bit(packed, k, j) for j in range(cin)
            )
    return out.reshape(*x.shape[:-1], cout)


@pytest.mark.parametrize("cin,k,with_bias", [(13, 3, True), (8, 5, False), (21, 0, True), (1, 2, True)])
def test_linear_matches_direct_loops(cin, k, with_bias):
    rng = np.random.default_rng(cin * 10 + k)
    wq, scale, zero, pm1, alpha, channels, bias = _random_op(rng, 6, (cin,), k)
    packed = ref.pack_signs(pm1) if k else np.zeros((0, (cin + 7) // 8), np.uint8)
    x = rng.normal(size=(2, 3, cin)).astype(np.float32)
    b = bias if with_bias else None
    got = ref.residual_binary_linear(x, wq, scale, zero, packed, alpha, channels, b, out_dtype=np.float64)
    want = _direct_linear(x, wq, scale, zero, packed, alpha, channels, b)
    assert got.shape == (2, 3, 6)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_pack_unpack_roundtrip_and_padding_bits_ignored():
    rng = np.random.default_rng(0)
    pm1 = rng.choice([-1.0, 1.0], size=(4, 13))
    packed = ref.pack_signs(pm1)
    assert packed.dtype == np.uint8 and packed.shape == (4, 2)
    assert np.all(packed[:, 1] >> 5 == 0), "padding bits are written as 0"
    np.testing.assert_array_equal(ref.unpack_signs(packed, 13), pm1)
    dirty = packed.copy()
    dirty[:, 1] |= 0b11100000  # set the 3 padding bits: the contract says they are ignored
    np.testing.assert_array_equal(ref.unpack_signs(dirty, 13), pm1)
    # The INT32 storage TensorRT's parser makes of a UINT8 initializer reads the same.
    np.testing.assert_array_equal(ref.unpack_signs(packed.astype(np.int32), 13), pm1)


def test_residual_only_changes_listed_channels():
    rng = np.random.default_rng(1)
    wq, scale, zero, pm1, alpha, channels, bias = _random_op(rng, 10, (19,), 3)
    x = rng.normal(size=(5, 19))
    with_res = ref.residual_binary_linear(x, wq, scale, zero, ref.pack_signs(pm1), alpha, channels, bias)
    without = ref.residual_binary_linear(
        x, wq, scale, zero, np.zeros((0, 3), np.uint8), np.zeros(0), np.zeros(0, np.int64), bias
    )
    changed = np.nonzero(np.any(np.abs(with_res - without) > 0, axis=0))[0]
    np.testing.assert_array_equal(changed, channels)
    np.testing.assert_allclose((with_res - without)[:, channels], (x @ pm1.T) * alpha, rtol=1e-10)


def test_dense_weight_linear_equivalence_and_dtype():
    rng = np.random.default_rng(2)
    wq, scale, zero, pm1, alpha, channels, bias = _random_op(rng, 7, (10,), 4)
    packed = ref.pack_signs(pm1)
    x16 = rng.normal(size=(3, 10)).astype(np.float16)
    y = ref.residual_binary_linear(x16, wq, scale, zero, packed, alpha, channels, bias)
    assert y.dtype == np.float16
    dense = ref.dense_weight(wq, scale, zero, packed, alpha, channels)
    np.testing.assert_allclose(
        y.astype(np.float64), x16.astype(np.float64) @ dense.T + bias, rtol=2e-3, atol=2e-3
    )


def _direct_conv(x, w, bias, strides, pads, dilations, group):
    """Output-pixel loops over the ONNX Conv definition with an explicit zero-padding test."""
    n, cin, h, wd = x.shape
    cout, cin_pg, kh, kw = w.shape
    ho = ref.conv_output_size(h, kh, strides[0], pads[0], pads[2], dilations[0])
    wo = ref.conv_output_size(wd, kw, strides[1], pads[1], pads[3], dilations[1])
    out = np.zeros((n, cout, ho, wo))
    cout_pg = cout // group
    for b, c, oy, ox in itertools.product(range(n), range(cout), range(ho), range(wo)):
        g = c // cout_pg
        acc = float(bias[c]) if bias is not None else 0.0
        for ci, dy, dx in itertools.product(range(cin_pg), range(kh), range(kw)):
            iy = oy * strides[0] - pads[0] + dy * dilations[0]
            ix = ox * strides[1] - pads[1] + dx * dilations[1]
            if 0 <= iy < h and 0 <= ix < wd:
                acc += float(x[b, g * cin_pg + ci, iy, ix]) * float(w[c, ci, dy, dx])
        out[b, c, oy, ox] = acc
    return out


@pytest.mark.parametrize(
    "shape,cout,kernel,strides,pads,dilations,group,k",
    [
        ((2, 4, 7, 6), 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, 2),
        ((1, 6, 9, 8), 4, (3, 2), (2, 1), (1, 0, 2, 1), (2, 1), 2, 3),  # row 3*3*2 = 18 bits: not /8
        ((2, 3, 5, 5), 3, (3, 3), (1, 2), (2, 2, 2, 2), (2, 2), 3, 3),  # depthwise, every channel residual
        ((1, 5, 4, 4), 2, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, 0),  # K = 0
    ],
)
def test_conv_matches_direct_loops(shape, cout, kernel, strides, pads, dilations, group, k):
    rng = np.random.default_rng(sum(shape) + k)
    wq, scale, zero, pm1, alpha, channels, bias = _random_op(rng, cout, (shape[1] // group, *kernel), k)
    row_len = int(np.prod(wq.shape[1:]))
    packed = ref.pack_signs(pm1) if k else np.zeros((0, (row_len + 7) // 8), np.uint8)
    x = rng.normal(size=shape).astype(np.float32)
    got = ref.residual_binary_conv(
        x,
        wq,
        scale,
        zero,
        packed,
        alpha,
        channels,
        bias,
        strides=strides,
        pads=pads,
        dilations=dilations,
        group=group,
        out_dtype=np.float64,
    )
    # Build the effective weight here, bit by bit, rather than with ref.dense_weight.
    w = scale.astype(np.float64).reshape(-1, 1, 1, 1) * (wq.astype(np.float64) - zero.reshape(-1, 1, 1, 1))
    flat = w.reshape(cout, row_len)
    for kk, c in enumerate(channels):
        flat[c] += float(alpha[kk]) * np.array([_sign_bit(packed, kk, j) for j in range(row_len)])
    want = _direct_conv(x, flat.reshape(w.shape), bias, strides, pads, dilations, group)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_conv_matches_torch_on_a_larger_case():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    wq, scale, zero, pm1, alpha, channels, bias = _random_op(rng, 16, (8, 3, 3), 5)
    packed = ref.pack_signs(pm1)
    x = rng.normal(size=(2, 16, 12, 10)).astype(np.float32)
    got = ref.residual_binary_conv(
        x,
        wq,
        scale,
        zero,
        packed,
        alpha,
        channels,
        bias,
        strides=(2, 2),
        pads=(1, 2, 0, 1),
        dilations=(1, 2),
        group=2,
        out_dtype=np.float64,
    )
    dense = torch.tensor(ref.dense_weight(wq, scale, zero, packed, alpha, channels))
    xt = torch.nn.functional.pad(
        torch.tensor(x, dtype=torch.float64), (2, 1, 1, 0)
    )  # (left, right, top, bottom)
    want = torch.nn.functional.conv2d(
        xt, dense, torch.tensor(bias, dtype=torch.float64), stride=2, dilation=(1, 2), groups=2
    ).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_contract_violations_are_rejected():
    rng = np.random.default_rng(4)
    wq, scale, zero, pm1, alpha, channels, bias = _random_op(rng, 6, (9,), 2)
    packed = ref.pack_signs(pm1)
    x = rng.normal(size=(2, 9))
    with pytest.raises(ValueError, match="sorted unique"):
        ref.residual_binary_linear(x, wq, scale, zero, packed, alpha, channels[::-1].copy(), bias)
    with pytest.raises(ValueError, match="K rows"):
        ref.residual_binary_linear(x, wq, scale, zero, packed, alpha[:1], channels, bias)
    with pytest.raises(ValueError, match="bytes"):
        ref.residual_binary_linear(x, wq, scale, zero, packed[:, :1], alpha, channels, bias)
    with pytest.raises(ValueError, match="features"):
        ref.residual_binary_linear(x[:, :8], wq, scale, zero, packed, alpha, channels, bias)
