"""narrow_weight_containers: integer weights emitted by the exporter's modules, narrowed in place."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from edgediff_export.passes.containers import narrow_weight_containers
from edgediff_export.passes.fold_weights import CONTAINER_KEY, probe_int2_support
from tests.export.passes.graphs import make_model, run, vi


def _uint8_codes_model(bits: int, opset: int, n_out: int = 8):
    """Conv + MatMul whose weights are uint8 codes around a uint8 zero point (as modules.py emits)."""
    rng = np.random.default_rng(bits * 10 + opset)
    inits, nodes = [], []
    for name, shape, axis in (("conv", (8, 3, 3, 3), 0), ("fc", (8 * 8 * 8, n_out), 1)):
        c = shape[axis]
        bshape = [1] * len(shape)
        bshape[axis] = c
        z = rng.integers(100, 150, c)
        lo = (z - 2 ** (bits - 1)).reshape(bshape)
        codes = rng.integers(lo, lo + 2**bits, size=shape).astype(np.uint8)
        inits += [
            numpy_helper.from_array(codes, f"{name}.codes"),
            numpy_helper.from_array(rng.uniform(0.01, 0.1, c).astype(np.float32), f"{name}.scale"),
            numpy_helper.from_array(z.astype(np.uint8), f"{name}.zero"),
        ]
        nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [f"{name}.codes", f"{name}.scale", f"{name}.zero"],
                [f"{name}.w"],
                axis=axis,
            )
        )
    inits.append(numpy_helper.from_array(np.array([2, -1], np.int64), "shape"))
    nodes += [
        helper.make_node("Conv", ["x", "conv.w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["c", "shape"], ["f"]),
        helper.make_node("MatMul", ["f", "fc.w"], ["y"]),
    ]
    return make_model(nodes, [vi("x", [2, 3, 8, 8])], [vi("y", [2, n_out])], inits, opset)


X = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)


def test_narrow_keeps_opset_by_default():
    model = _uint8_codes_model(4, 20)
    assert narrow_weight_containers(model) == {}
    assert model.opset_import[0].version == 20

    model = _uint8_codes_model(4, 21)
    ref = run(model, {"x": X})[0]
    out = narrow_weight_containers(model)  # in place
    assert out == {"conv.codes": "int4", "fc.codes": "int4"}
    assert {p.key for p in model.metadata_props} == {CONTAINER_KEY + "conv.codes", CONTAINER_KEY + "fc.codes"}
    assert "conv.zero" not in {t.name for t in model.graph.initializer}
    onnx.checker.check_model(model, full_check=True)
    np.testing.assert_array_equal(run(model, {"x": X})[0], ref)


def test_narrow_to_two_bit_with_opset_upgrade():
    if not probe_int2_support():
        pytest.skip("no 2-bit DequantizeLinear")
    model = _uint8_codes_model(2, 20)
    ref = run(model, {"x": X})[0]
    assert narrow_weight_containers(model, max_opset=25) == {"conv.codes": "int2", "fc.codes": "int2"}
    assert model.opset_import[0].version == 25
    np.testing.assert_array_equal(run(model, {"x": X})[0], ref)
    assert narrow_weight_containers(model) == {}  # idempotent


def test_eight_bit_codes_stay():
    model = _uint8_codes_model(8, 21)
    assert narrow_weight_containers(model) == {}
