"""edgediff custom ops: packing, schemas, function bodies run by ONNX Runtime, standard lowering."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from edgediff_export import ops
from edgediff_export.errors import ExportError
from tests.export.passes.graphs import make_model, run, vi

# ---------------------------------------------------------------------------- packing


def test_pack_signs_layout_lsb_first_and_padding_zero():
    signs = np.array([[1, -1, -1, 1, -1, -1, -1, -1, 1, 1]], np.int8)  # n = 10 -> 2 bytes
    packed = ops.pack_signs(signs)
    assert packed.dtype == np.uint8 and packed.shape == (1, 2)
    assert packed[0, 0] == 0b00001001  # columns 0 and 3 -> bits 0 and 3
    assert packed[0, 1] == 0b00000011  # columns 8, 9 -> bits 0, 1; padding bits 2..7 are 0


@settings(max_examples=40, deadline=None)
@given(k=st.integers(0, 5), n=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_pack_unpack_roundtrip(k, n, seed):
    signs = np.random.default_rng(seed).choice(np.array([-1, 1], np.int8), size=(k, n))
    packed = ops.pack_signs(signs)
    assert packed.shape == (k, (n + 7) // 8)
    assert not np.unpackbits(packed, axis=1, bitorder="little")[:, n:].any()  # padding bits are 0
    np.testing.assert_array_equal(ops.unpack_signs(packed, n), signs)


def test_pack_signs_rejects_non_pm1():
    with pytest.raises(ExportError, match="-1, \\+1"):
        ops.pack_signs(np.array([[0, 1]]))


# ---------------------------------------------------------------------------- models


def _residual_operands(rng, wshape, k):
    cout = wshape[0]
    row = int(np.prod(wshape[1:]))
    return dict(
        wq=rng.integers(-128, 128, wshape),
        w_scale=rng.uniform(0.01, 0.1, cout),
        w_zero=rng.integers(-5, 5, cout),
        signs=rng.choice([-1, 1], (k, row)),
        alpha=rng.uniform(0.1, 1.0, k),
        channels=np.sort(rng.choice(cout, k, replace=False)),
    )


def _linear_model(rng, cin, cout, k, bias, lead=(2, 3)):
    a = _residual_operands(rng, (cout, cin), k)
    b = rng.standard_normal(cout) if bias else None
    inits, names = ops.make_residual_binary_initializers("lin", bias=b, **a)
    node = ops.make_residual_binary_linear_node(["x", *names], "y", in_features=cin, name="lin")
    model = make_model([node], [vi("x", [*lead, cin])], [vi("y", [*lead, cout])], inits)
    x = rng.standard_normal((*lead, cin)).astype(np.float32)
    packed = ops.pack_signs(a["signs"]) if k else np.zeros((0, (cin + 7) // 8), np.uint8)
    ref = ops.reference_residual_binary_linear(
        x, a["wq"], a["w_scale"], a["w_zero"], packed, a["alpha"], a["channels"], b
    )
    return model, x, ref


def _conv_model(rng, cin, cout, k, kernel, strides, pads, dilations, group, bias):
    a = _residual_operands(rng, (cout, cin // group, *kernel), k)
    b = rng.standard_normal(cout) if bias else None
    inits, names = ops.make_residual_binary_initializers("cv", bias=b, **a)
    node = ops.make_residual_binary_conv_node(
        ["x", *names], "y", kernel_shape=kernel, strides=strides, pads=pads, dilations=dilations, group=group
    )
    model = make_model([node], [vi("x", [2, cin, 9, 8])], [vi("y", [2, cout, None, None])], inits)
    x = rng.standard_normal((2, cin, 9, 8)).astype(np.float32)
    packed = ops.pack_signs(a["signs"]) if k else np.zeros((0, 1), np.uint8)
    ref = ops.reference_residual_binary_conv(
        x,
        a["wq"],
        a["w_scale"],
        a["w_zero"],
        packed,
        a["alpha"],
        a["channels"],
        b,
        strides=strides,
        pads=pads,
        dilations=dilations,
        group=group,
    )
    return model, x, ref


def _check_runs(model, x, ref):
    ops.add_edgediff_functions(model)
    onnx.checker.check_model(model, full_check=True)
    y = run(model, {"x": x})[0]
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))
    lowered = onnx.ModelProto()
    lowered.CopyFrom(model)
    assert ops.lower_residual_to_standard(lowered) is lowered  # in place
    assert not any(n.domain == ops.EDGEDIFF_DOMAIN for n in lowered.graph.node)
    assert not lowered.functions and all(o.domain != ops.EDGEDIFF_DOMAIN for o in lowered.opset_import)
    onnx.checker.check_model(lowered, full_check=True)
    np.testing.assert_array_equal(run(lowered, {"x": x})[0], y)
    return model


@pytest.mark.parametrize(
    ("cin", "cout", "k", "bias"),
    [(13, 6, 3, True), (13, 6, 0, True), (13, 6, 6, False), (16, 5, 5, True)],
    ids=["cin13-k3", "k0", "k=cout-nobias", "cin16"],
)
def test_linear_function_matches_numpy(cin, cout, k, bias):
    rng = np.random.default_rng(cin * 100 + k)
    model, x, ref = _linear_model(rng, cin, cout, k, bias)
    model = _check_runs(model, x, ref)
    fn = model.functions[0]
    assert (fn.domain, fn.name) == ("edgediff", "ResidualBinaryLinear")
    assert {"BitShift", "BitwiseAnd", "ScatterND", "DequantizeLinear", "Gemm"} <= {n.op_type for n in fn.node}
    assert any(o.domain == "edgediff" and o.version == 1 for o in model.opset_import)


@pytest.mark.parametrize(
    ("cin", "cout", "k", "kernel", "strides", "pads", "dilations", "group", "bias"),
    [
        (6, 4, 2, (3, 3), (2, 1), (1, 0, 2, 1), (1, 2), 2, True),
        (5, 7, 7, (2, 3), (1, 1), (0, 0, 0, 0), (1, 1), 1, False),
        (4, 4, 0, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 4, True),
    ],
    ids=["stride-pad-dil-group2", "k=cout-nobias", "k0-depthwise"],
)
def test_conv_function_matches_numpy(cin, cout, k, kernel, strides, pads, dilations, group, bias):
    rng = np.random.default_rng(cin * 10 + k)
    model, x, ref = _conv_model(rng, cin, cout, k, kernel, strides, pads, dilations, group, bias)
    _check_runs(model, x, ref)


def test_node_attributes_follow_the_plugin_contract():
    node = ops.make_residual_binary_conv_node(
        ["x", "a", "b", "c", "d", "e", "f"], "y", kernel_shape=(3, 3), pads=(1, 2, 1, 2), group=2
    )
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert node.domain == "edgediff" and node.op_type == "ResidualBinaryConv"
    assert attrs["plugin_namespace"] == b"edgediff" and attrs["plugin_version"] == b"1"
    assert attrs["pads"] == [1, 2, 1, 2] and attrs["group"] == 2 and attrs["kernel_shape"] == [3, 3]
    lin = ops.make_residual_binary_linear_node(["x", "a", "b", "c", "d", "e", "f", ""], "y", in_features=5)
    assert len(lin.input) == 7  # empty bias name dropped
    with pytest.raises(ExportError, match="7 named inputs"):
        ops.make_residual_binary_linear_node(["x", "a"], "y", in_features=5)


def test_initializer_validation():
    rng = np.random.default_rng(0)
    a = _residual_operands(rng, (4, 10), 2)
    a["channels"] = a["channels"][::-1].copy()
    with pytest.raises(ExportError, match="sorted"):
        ops.make_residual_binary_initializers("p", **a)
    a = _residual_operands(rng, (4, 10), 2)
    a["wq"] = a["wq"] + 200
    with pytest.raises(ExportError, match="int8"):
        ops.make_residual_binary_initializers("p", **a)


def test_schema_registration_is_idempotent_and_types_the_plugin_file():
    rng = np.random.default_rng(3)
    model, _, _ = _linear_model(rng, 9, 4, 2, True)
    ops.register_edgediff_schemas()
    ops.register_edgediff_schemas()
    assert onnx.defs.has("ResidualBinaryLinear", "edgediff") and onnx.defs.has(
        "ResidualBinaryConv", "edgediff"
    )
    plugin_file = ops.remove_edgediff_functions(model)  # what TensorRT gets: node, no function
    assert not plugin_file.functions
    onnx.checker.check_model(plugin_file, full_check=True)


def test_function_bodies_need_opset_18():
    rng = np.random.default_rng(4)
    model, _, _ = _linear_model(rng, 9, 4, 2, True)
    model.opset_import[0].version = 17
    with pytest.raises(ExportError, match="opset >= 18"):
        ops.add_edgediff_functions(model)


def test_empty_bias_name_as_emitted_by_the_torch_translation():
    rng = np.random.default_rng(8)
    model, x, ref = _linear_model(rng, 11, 5, 2, bias=False)
    model.graph.node[0].input.append("")  # 8 inputs, optional bias left empty
    ops.add_edgediff_functions(model)
    np.testing.assert_allclose(run(model, {"x": x})[0], ref, rtol=1e-4, atol=1e-5)
    ops.lower_residual_to_standard(model)
    assert not model.functions and all(n.domain == "" for n in model.graph.node)
    np.testing.assert_allclose(run(model, {"x": x})[0], ref, rtol=1e-4, atol=1e-5)
