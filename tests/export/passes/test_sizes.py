"""Size measurement behind docs/export-passes.md (slow; run with ``pytest -m slow ... -s``).

A 16.8M-parameter stack of 34 3x3 convolutions (channels 4 -> 128 -> 256 -> 4, the widths of the
17.7M UNet in docs/deployment.md section 11) with per-channel symmetric fake-quantized weights exported as
float initializer -> QuantizeLinear -> DequantizeLinear, folded at 8, 4 and 2 bits.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from onnx import helper, numpy_helper

from edgediff_export.passes.fold_weights import fold_weights, probe_int2_support, symmetrize_int8
from tests.export.passes.graphs import make_model, run, vi

CHANNELS = [(4, 128)] + [(128, 128)] * 4 + [(128, 256)] + [(256, 256)] * 27 + [(256, 4)]


def _conv_stack(bits: int, rng) -> tuple:
    nodes, inits, x, params = [], [], "x", 0
    for i, (ci, co) in enumerate(CHANNELS):
        w = rng.standard_normal((co, ci, 3, 3)).astype(np.float32) * 0.05
        qmax = 2 ** (bits - 1) - 1
        s = (np.abs(w).reshape(co, -1).max(1) / qmax).astype(np.float32)
        w = (np.clip(np.rint(w / s[:, None, None, None]), -qmax - 1, qmax) * s[:, None, None, None]).astype(
            np.float32
        )
        inits += [
            numpy_helper.from_array(w, f"conv{i}.weight"),
            numpy_helper.from_array(s, f"conv{i}.scale"),
            numpy_helper.from_array(np.zeros(co, np.int8), f"conv{i}.zero_point"),
        ]
        nodes += [
            helper.make_node(
                "QuantizeLinear",
                [f"conv{i}.weight", f"conv{i}.scale", f"conv{i}.zero_point"],
                [f"q{i}"],
                axis=0,
            ),
            helper.make_node(
                "DequantizeLinear", [f"q{i}", f"conv{i}.scale", f"conv{i}.zero_point"], [f"w{i}"], axis=0
            ),
            helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
        ]
        x, params = f"c{i}", params + w.size
        if i < len(CHANNELS) - 1:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"]))
            x = f"r{i}"
    model = make_model(nodes, [vi("x", [1, 4, 8, 8])], [vi(x, [1, 4, 8, 8])], inits)
    return model, params


@pytest.mark.slow
@pytest.mark.parametrize("bits", [8, 4, 2])
def test_fold_sizes(bits):
    if bits == 2 and not probe_int2_support():
        pytest.skip("no 2-bit DequantizeLinear in this ONNX Runtime")
    rng = np.random.default_rng(0)
    model, params = _conv_stack(bits, rng)
    t0 = time.perf_counter()
    res = fold_weights(model)
    seconds = time.perf_counter() - t0
    x = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(run(res.model, {"x": x})[0], run(model, {"x": x})[0])
    trt = symmetrize_int8(res.model)
    trt4 = symmetrize_int8(res.model, keep_int4=True)
    print(
        f"\nW{bits}: {params / 1e6:.2f}M params; {res.summary()}; fold {seconds:.1f} s; "
        f"TensorRT int8 {trt.ByteSize() / 1e6:.2f} MB, keep_int4 {trt4.ByteSize() / 1e6:.2f} MB"
    )
    assert res.bytes_after < res.bytes_before / (32 / bits) * 1.05
