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


# ---------------------------------------------------------------------------- residual node codes


def _residual_model(bits: int, opset: int, conv: bool = True):
    """One edgediff residual node whose int8 codes `q - 128` span `bits` bits around `z - 128`."""
    from edgediff_export import ops

    rng = np.random.default_rng(bits + opset)
    cout, cin = 6, 5
    shape = (cout, cin, 3, 3) if conv else (cout, cin)
    z = rng.integers(-128 + 2**bits, 100, cout)  # int8 zero points far from 0, as modules.py emits
    lo = (z - 2 ** (bits - 1)).reshape(-1, *([1] * (len(shape) - 1)))
    wq = rng.integers(lo, lo + 2**bits, size=shape)
    k = 2
    operands = dict(
        wq=wq,
        w_scale=rng.uniform(0.01, 0.1, cout),
        w_zero=z,
        signs=rng.choice([-1, 1], (k, int(np.prod(shape[1:])))),
        alpha=rng.uniform(0.1, 1.0, k),
        channels=np.array([1, 4]),
    )
    inits, names = ops.make_residual_binary_initializers("res", bias=rng.standard_normal(cout), **operands)
    if conv:
        node = ops.make_residual_binary_conv_node(
            ["x", *names],
            "y",
            kernel_shape=[3, 3],
            strides=[1, 1],
            pads=[1, 1, 1, 1],
            dilations=[1, 1],
            group=1,
        )
        x_shape, y_shape = [2, cin, 7, 7], [2, cout, 7, 7]
    else:
        node = ops.make_residual_binary_linear_node(["x", *names], "y", in_features=cin)
        x_shape, y_shape = [3, cin], [3, cout]
    model = make_model([node], [vi("x", x_shape)], [vi("y", y_shape)], inits, opset=opset)
    ops.add_edgediff_functions(model)
    return model, rng.standard_normal(x_shape).astype(np.float32)


@pytest.mark.parametrize("conv", [True, False], ids=["conv", "linear"])
@pytest.mark.parametrize(
    ("bits", "opset", "container"), [(2, 25, "uint2"), (4, 21, "uint4"), (3, 25, "uint4")]
)
def test_residual_codes_are_narrowed_behind_a_cast_and_outputs_do_not_change(bits, opset, container, conv):
    from edgediff_export.passes.containers import narrow_residual_codes

    if container == "uint2" and not probe_int2_support():
        pytest.skip("this onnxruntime has no 2-bit support")
    model, x = _residual_model(bits, opset, conv)
    before = run(model, {"x": x})[0]
    codes = next(t for t in model.graph.initializer if t.name == "res.Wq")
    n_codes, bytes_before = int(np.prod(codes.dims)), len(codes.raw_data)
    changed = narrow_residual_codes(model, int2=True if container == "uint2" else None)
    assert list(changed.values()) == [container]
    stored = next(t for t in model.graph.initializer if t.name in changed)
    assert stored.data_type == getattr(onnx.TensorProto, container.upper())
    cast = model.graph.node[0]
    assert cast.op_type == "Cast" and cast.input[0] == stored.name and cast.output[0] == "res.Wq"
    assert helper.get_attribute_value(cast.attribute[0]) == onnx.TensorProto.INT8
    assert {p.key: p.value for p in model.metadata_props}[CONTAINER_KEY + stored.name] == container
    per_byte = 8 // int(container[-1])
    assert len(stored.raw_data) == -(-n_codes // per_byte) < bytes_before == n_codes
    onnx.checker.check_model(model, full_check=True)
    np.testing.assert_array_equal(run(model, {"x": x})[0], before)


def test_residual_codes_wider_than_4_bits_or_old_opsets_stay_int8():
    from edgediff_export.passes.containers import narrow_residual_codes

    wide, _ = _residual_model(6, 21)
    assert narrow_residual_codes(wide) == {}
    old, _ = _residual_model(2, 20)
    assert narrow_residual_codes(old) == {}  # opset 20 has no 2- or 4-bit containers
    assert any(t.name == "res.Wq" and t.data_type == onnx.TensorProto.INT8 for t in old.graph.initializer)


def test_residual_codes_upgrade_the_opset_when_allowed():
    from edgediff_export.passes.containers import narrow_residual_codes
    from edgediff_export.passes.fold_weights import default_opset

    model, x = _residual_model(4, 20)
    before = run(model, {"x": x})[0]
    assert narrow_residual_codes(model, max_opset=21) != {}
    assert default_opset(model) == 21
    np.testing.assert_array_equal(run(model, {"x": x})[0], before)
