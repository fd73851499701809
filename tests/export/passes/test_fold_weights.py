"""fold_weights / symmetrize_int8 / probe_int2_support on tiny Conv + MatMul graphs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgediff_export import ops
from edgediff_export.errors import ExportError
from edgediff_export.passes.fold_weights import (
    CONTAINER_KEY,
    fold_weights,
    probe_2bit_details,
    probe_int2_support,
    symmetrize_int8,
    upgrade_opset,
)
from tests.export.passes.graphs import conv_matmul_model, make_model, run, vi

X = np.random.default_rng(99).standard_normal((2, 3, 8, 8)).astype(np.float32)


def _containers(model):
    return {
        p.key[len(CONTAINER_KEY) :]: p.value for p in model.metadata_props if p.key.startswith(CONTAINER_KEY)
    }


def _types(model):
    return {t.name: t.data_type for t in model.graph.initializer}


@pytest.mark.parametrize(
    ("bits", "mode", "n_out", "conv", "fc", "opset"),
    [
        (8, "sym", 6, "int8", "int8", 20),
        (8, "asym", 6, "int8", "int8", 20),
        (4, "sym", 6, "int4", "int4", 21),
        (3, "asym", 6, "int4", "int4", 21),
        (4, "onesided", 6, "uint4", "uint4", 21),
        (2, "sym", 8, "int2", "int2", 25),
        (2, "onesided", 8, "uint2", "uint2", 25),
    ],
)
def test_fold_is_exact_and_picks_smallest_container(bits, mode, n_out, conv, fc, opset):
    if bits == 2 and not probe_int2_support():
        pytest.skip("this ONNX Runtime does not run 2-bit DequantizeLinear")
    model = conv_matmul_model(np.random.default_rng(bits * 7 + len(mode)), bits, mode, n_out)
    res = fold_weights(model)
    out = res.model
    onnx.checker.check_model(out, full_check=True)
    assert not any(n.op_type == "QuantizeLinear" for n in out.graph.node)
    assert res.containers == {"conv.weight": conv, "fc.weight": fc} == _containers(out)
    assert res.opset_after == opset and out.opset_import[0].version == opset
    assert res.bytes_after < res.bytes_before
    np.testing.assert_array_equal(run(out, {"x": X})[0], run(model, {"x": X})[0])
    assert model.graph.node[0].op_type == "QuantizeLinear"  # input model untouched


def test_two_bit_avoids_unaligned_matmul_when_probe_says_so():
    details = probe_2bit_details()
    assert set(details) == {
        f"{t}.{k}" for t in ("int2", "uint2") for k in ("conv", "gemm", "matmul_aligned", "matmul_unaligned")
    }
    if not probe_int2_support():
        pytest.skip("no 2-bit support")
    model = conv_matmul_model(np.random.default_rng(5), 2, "sym", n_out=6)
    res = fold_weights(model)
    expected_fc = "int2" if details["int2.matmul_unaligned"] else "int4"
    assert res.containers == {"conv.weight": "int2", "fc.weight": expected_fc}
    np.testing.assert_array_equal(run(res.model, {"x": X})[0], run(model, {"x": X})[0])


def test_limits_min_bits_max_opset_and_int2_flag():
    model = conv_matmul_model(np.random.default_rng(1), 2, "sym", n_out=8)
    assert set(fold_weights(model, min_bits=8).containers.values()) == {"int8"}
    r21 = fold_weights(model, max_opset=21)
    assert set(r21.containers.values()) == {"int4"} and r21.opset_after == 21
    assert r21.model.ir_version == 10  # lowest IR for opset 21 (TensorRT 10.x parses IR 10)
    r20 = fold_weights(model, max_opset=20)
    assert set(r20.containers.values()) == {"int8"} and r20.opset_after == 20
    assert set(fold_weights(model, int2=False).containers.values()) == {"int4"}
    with pytest.raises(ExportError, match="min_bits"):
        fold_weights(model, min_bits=3)


def test_shared_float_weight_keeps_float_copy():
    model = conv_matmul_model(np.random.default_rng(2), 8, "sym")
    model.graph.output.append(vi("conv.weight", [8, 3, 3, 3]))  # float weight also a graph output
    res = fold_weights(model)
    names = _types(res.model)
    assert names["conv.weight"] == TensorProto.FLOAT and names["conv.weight_quantized"] == TensorProto.INT8
    assert res.containers["conv.weight_quantized"] == "int8"


def test_blocked_qdq_folds_to_uint4():
    rng = np.random.default_rng(3)
    k, n, bs = 32, 8, 16
    z = rng.integers(-100, -50, (k // bs, n))
    s = rng.uniform(0.01, 0.1, (k // bs, n)).astype(np.float32)
    codes = rng.integers(0, 16, (k, n)) + np.repeat(z, bs, axis=0)
    w = ((codes - np.repeat(z, bs, axis=0)) * np.repeat(s, bs, axis=0)).astype(np.float32)
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(s, "s"),
        numpy_helper.from_array(z.astype(np.int8), "z"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["w", "s", "z"], ["wq"], axis=0, block_size=bs),
        helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["wd"], axis=0, block_size=bs),
        helper.make_node("MatMul", ["x", "wd"], ["y"]),
    ]
    model = make_model(nodes, [vi("x", [3, k])], [vi("y", [3, n])], inits, opset=21)
    res = fold_weights(model, min_bits=4)
    assert res.containers == {"w": "uint4"}
    x = rng.standard_normal((3, k)).astype(np.float32)
    np.testing.assert_array_equal(run(res.model, {"x": x})[0], run(model, {"x": x})[0])


@pytest.mark.parametrize(("bits", "mode"), [(8, "asym"), (4, "onesided"), (2, "onesided")])
def test_symmetrize_int8_is_exact(bits, mode):
    model = conv_matmul_model(np.random.default_rng(11), bits, mode, n_out=8)
    folded = fold_weights(model).model
    sym = symmetrize_int8(folded)
    for n in sym.graph.node:
        if n.op_type == "DequantizeLinear":
            assert len(n.input) == 2  # zero point removed (= 0)
    assert set(_types(sym).values()) >= {TensorProto.INT8}
    assert set(_containers(sym).values()) == {"int8"}
    onnx.checker.check_model(sym, full_check=True)
    np.testing.assert_array_equal(run(sym, {"x": X})[0], run(folded, {"x": X})[0])


def test_symmetrize_keep_int4_and_out_of_range_error():
    folded = fold_weights(conv_matmul_model(np.random.default_rng(12), 4, "onesided")).model
    wide = symmetrize_int8(folded, keep_int4=True)  # q - z in [0, 15] does not fit int4: widened
    assert set(_containers(wide).values()) == {"int8"}

    rng = np.random.default_rng(13)
    inits = [
        numpy_helper.from_array(
            rng.integers(0, 16, (4, 8)).astype(helper.tensor_dtype_to_np_dtype(21)), "wq"
        ),
        numpy_helper.from_array(rng.uniform(0.1, 1, 8).astype(np.float32), "s"),
        numpy_helper.from_array(np.full(8, 8).astype(helper.tensor_dtype_to_np_dtype(21)), "z"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["w"], axis=1),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
    ]
    uint4 = make_model(nodes, [vi("x", [2, 4])], [vi("y", [2, 8])], inits, opset=21)
    sym4 = symmetrize_int8(uint4, keep_int4=True)
    assert _types(sym4)["wq"] == TensorProto.INT4 and _containers(sym4) == {"wq": "int4"}
    x = rng.standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_array_equal(run(sym4, {"x": x})[0], run(uint4, {"x": x})[0])

    inits = [
        numpy_helper.from_array(np.array([[200, 10]], np.uint8), "wq"),
        numpy_helper.from_array(np.array([0.1], np.float32), "s"),
        numpy_helper.from_array(np.array([0], np.uint8), "z"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["w"], axis=0),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
    ]
    bad = make_model(nodes, [vi("x", [1, 1])], [vi("y", [1, 2])], inits)
    with pytest.raises(ExportError, match=r"wq: symmetric codes .* outside int8"):
        symmetrize_int8(bad)
    assert symmetrize_int8(bad, exact_8bit_only=True).graph.initializer[0].data_type == TensorProto.UINT8


def test_exact_8bit_only_converts_mid_zero_point_uint8_to_int8():
    """uint8 codes with z = 128 (a `w_symmetric` quantizer) become int8 with zero point 0, exactly."""
    rng = np.random.default_rng(14)
    inits = [
        numpy_helper.from_array(rng.integers(0, 256, (4, 8)).astype(np.uint8), "wq"),
        numpy_helper.from_array(rng.uniform(0.1, 1, 8).astype(np.float32), "s"),
        numpy_helper.from_array(np.full(8, 128, np.uint8), "z"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["w"], axis=1),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
    ]
    model = make_model(nodes, [vi("x", [2, 4])], [vi("y", [2, 8])], inits)
    sym = symmetrize_int8(model, exact_8bit_only=True)
    assert _types(sym)["wq"] == TensorProto.INT8
    assert all(len(n.input) == 2 for n in sym.graph.node if n.op_type == "DequantizeLinear")
    x = rng.standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_array_equal(run(sym, {"x": x})[0], run(model, {"x": x})[0])


def test_opset_upgrade_keeps_edgediff_functions():
    rng = np.random.default_rng(21)
    model = conv_matmul_model(rng, 4, "sym")
    inits, names = ops.make_residual_binary_initializers(
        "res",
        wq=rng.integers(-128, 128, (5, 6)),
        w_scale=rng.uniform(0.01, 0.1, 5),
        w_zero=np.zeros(5),
        signs=rng.choice([-1, 1], (2, 6)),
        alpha=np.ones(2),
        channels=np.array([0, 3]),
    )
    model.graph.initializer.extend(inits)
    model.graph.node.append(
        ops.make_residual_binary_linear_node(["y", *names], "z", in_features=6, name="res")
    )
    del model.graph.output[:]
    model.graph.output.append(vi("z", [2, 5]))
    ops.add_edgediff_functions(model)
    res = fold_weights(model)
    assert res.opset_after == 21
    assert [(f.name, f.opset_import[0].version) for f in res.model.functions] == [
        ("ResidualBinaryLinear", 21)
    ]
    onnx.checker.check_model(res.model, full_check=True)
    np.testing.assert_array_equal(run(res.model, {"x": X})[0], run(model, {"x": X})[0])


def test_opset_upgrade_leaves_no_intermediate_value_info():
    """The version converter's shape inference results are not shipped (ORT re-infers them)."""
    model = conv_matmul_model(np.random.default_rng(22), 4, "sym")
    up = upgrade_opset(model, 25)
    assert not up.graph.value_info
    np.testing.assert_array_equal(run(up, {"x": X})[0], run(model, {"x": X})[0])
