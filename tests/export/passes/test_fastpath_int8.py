"""Integer-keeping passes: each rewrites a tiny graph and keeps its outputs (ONNX Runtime, optimizers off)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgediff_export.passes.fastpath import PASSES, apply_passes
from edgediff_export.passes.fastpath_int8 import drop_dq_q_pairs, drop_transpose_pairs, fold_weight_transposes
from tests.export.passes.graphs import make_model, vi

ort = pytest.importorskip("onnxruntime")


def _run(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    """ORT with graph optimizations off: the rewrite itself is tested, not ORT's own folding."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _init(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _linear_model(per_channel: bool) -> onnx.ModelProto:
    """x -> Q/DQ -> MatMul(., Transpose(DQ(W [out, in]))): how the exporter writes a linear."""
    rng = np.random.default_rng(0)
    codes = rng.integers(-127, 128, size=(5, 8)).astype(np.int8)
    w_scale = rng.uniform(0.01, 0.05, 5).astype(np.float32) if per_channel else np.float32(0.02)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "ws"], ["wd"], axis=0),
        helper.make_node("Transpose", ["wd"], ["wt"], perm=[1, 0]),
        helper.make_node("MatMul", ["xd", "wt"], ["y"]),
    ]
    inits = [
        _init("xs", np.float32(0.03)),
        _init("xz", np.uint8(128)),
        _init("w", codes),
        _init("ws", w_scale),
    ]
    return make_model(nodes, [vi("x", [2, 3, 8])], [vi("y", [2, 3, 5])], inits, opset=21)


@pytest.mark.parametrize("per_channel", [True, False])
def test_fold_weight_transposes_moves_the_transpose_into_the_codes(per_channel):
    model = _linear_model(per_channel)
    out, count = fold_weight_transposes(model)
    assert count == 1
    onnx.checker.check_model(out, full_check=True)
    assert "Transpose" not in _ops(out) and "Transpose" in _ops(model)
    weight_dq = next(n for n in out.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == "wt")
    stored = next(t for t in out.graph.initializer if t.name == weight_dq.input[0])
    assert list(stored.dims) == [8, 5] and stored.data_type == TensorProto.INT8
    if per_channel:  # the scale axis follows the output channels to axis 1
        assert helper.get_attribute_value(weight_dq.attribute[0]) == 1
    x = np.random.default_rng(1).normal(size=(2, 3, 8)).astype(np.float32) * 2
    np.testing.assert_allclose(_run(out, {"x": x}), _run(model, {"x": x}), rtol=0, atol=1e-6)


def test_fold_weight_transposes_leaves_activation_transposes():
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s"], ["d"]),
        helper.make_node("Transpose", ["d"], ["y"], perm=[1, 0]),
    ]
    model = make_model(nodes, [vi("x", [2, 3])], [vi("y", [3, 2])], [_init("s", np.float32(0.1))], opset=21)
    assert fold_weight_transposes(model)[1] == 0


def _pair_model(second_scale: float, moves: bool) -> onnx.ModelProto:
    """x -> Q/DQ (s) -> [Transpose -> Reshape] -> Q/DQ (s2) -> Relu."""
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q1"]),
        helper.make_node("DequantizeLinear", ["q1", "s", "z"], ["d1"]),
    ]
    mid = "d1"
    if moves:
        nodes += [
            helper.make_node("Transpose", ["d1"], ["t"], perm=[0, 2, 1]),
            helper.make_node("Reshape", ["t", "shape"], ["r"]),
        ]
        mid = "r"
    nodes += [
        helper.make_node("QuantizeLinear", [mid, "s2", "z"], ["q2"]),
        helper.make_node("DequantizeLinear", ["q2", "s2", "z"], ["d2"]),
        helper.make_node("Relu", ["d2"], ["y"]),
    ]
    inits = [
        _init("s", np.float32(0.05)),
        _init("s2", np.float32(second_scale)),
        _init("z", np.int8(3)),
        _init("shape", np.array([2, -1], dtype=np.int64)),
    ]
    out_shape = [2, 12] if moves else [2, 3, 4]
    return make_model(nodes, [vi("x", [2, 3, 4])], [vi("y", out_shape)], inits, opset=21)


@pytest.mark.parametrize("moves", [False, True])
def test_drop_dq_q_pairs_keeps_the_int8_tensor(moves):
    model = _pair_model(0.05, moves)
    out, count = drop_dq_q_pairs(model)
    assert count == 1
    onnx.checker.check_model(out, full_check=True)
    assert _ops(out).count("QuantizeLinear") == 1 and _ops(out).count("DequantizeLinear") == 1
    if moves:  # the data movement now runs on the int8 codes, straight before the remaining DQ
        dq = next(n for n in out.graph.node if n.op_type == "DequantizeLinear")
        producer = next(n for n in out.graph.node if dq.input[0] in n.output)
        assert producer.op_type == "Reshape"
    x = np.random.default_rng(2).normal(size=(2, 3, 4)).astype(np.float32) * 4
    np.testing.assert_array_equal(_run(out, {"x": x}), _run(model, {"x": x}))


def test_drop_dq_q_pairs_keeps_a_requantization():
    model = _pair_model(0.07, moves=True)  # a different scale changes values: must stay
    out, count = drop_dq_q_pairs(model)
    assert count == 0 and _ops(out) == _ops(model)


def _transpose_model(p1, p2) -> onnx.ModelProto:
    nodes = [
        helper.make_node("Transpose", ["x"], ["a"], perm=p1),
        helper.make_node("Transpose", ["a"], ["b"], perm=p2),
        helper.make_node("Relu", ["b"], ["y"]),
    ]
    shape = [2, 3, 4]
    out_shape = [shape[p1[i]] for i in p2]
    return make_model(nodes, [vi("x", shape)], [vi("y", out_shape)], [], opset=21)


def test_transpose_pairs_removes_inverse_pairs_only():
    model = _transpose_model([1, 2, 0], [2, 0, 1])  # inverse permutations
    out, count = drop_transpose_pairs(model)
    assert count == 1 and _ops(out) == ["Relu"]
    x = np.random.default_rng(3).normal(size=(2, 3, 4)).astype(np.float32)
    np.testing.assert_array_equal(_run(out, {"x": x}), _run(model, {"x": x}))
    other = _transpose_model([1, 2, 0], [1, 2, 0])  # composes to a real permutation
    assert drop_transpose_pairs(other)[1] == 0


def test_int8_passes_are_registered_and_switchable():
    assert {"fold-weight-transposes", "transpose-pairs", "drop-dq-q-pairs"} <= set(PASSES)
    model = _linear_model(True)
    assert apply_passes(model, ["transpose-pairs"]).applied == {"transpose-pairs": 0}
    assert "Transpose" in _ops(apply_passes(model, ["transpose-pairs"]).model)
