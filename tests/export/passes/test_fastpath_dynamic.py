"""`dynamic-linears`: the rewrite happens, equals its formula, and stays within quantization error of
the static graph it replaces."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from edgediff_export.passes.fastpath import PASSES, apply_passes
from edgediff_export.passes.fastpath_dynamic import dynamic_linears
from tests.export.passes.graphs import make_model, vi

ort = pytest.importorskip("onnxruntime")

X_SCALE = 0.05  # the static per-tensor activation scale of the unrewritten graph


def _run(model: onnx.ModelProto, feeds: dict, optimize: bool = False) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def _model(seed: int = 0, transposed: bool = True):
    """x [2, 6, 16] -> Q/DQ (static) -> MatMul(., Transpose(DQ(W [8, 16], per-output-channel))) -> + b."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(-127, 128, size=(8, 16)).astype(np.int8)
    w_scale = rng.uniform(0.01, 0.04, 8).astype(np.float32)
    bias = rng.normal(size=8).astype(np.float32)
    stored = codes if transposed else codes.T.copy()
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "ws"], ["wd"], axis=0 if transposed else 1),
    ]
    if transposed:
        nodes.append(helper.make_node("Transpose", ["wd"], ["wt"], perm=[1, 0]))
    nodes += [
        helper.make_node("MatMul", ["xd", "wt" if transposed else "wd"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.float32(X_SCALE), "xs"),
        numpy_helper.from_array(np.uint8(128), "xz"),
        numpy_helper.from_array(stored, "w"),
        numpy_helper.from_array(w_scale, "ws"),
        numpy_helper.from_array(bias, "b"),
    ]
    model = make_model(nodes, [vi("x", [2, 6, 16])], [vi("y", [2, 6, 8])], inits, opset=21)
    return model, codes.astype(np.float64) * w_scale[:, None].astype(np.float64), bias


def _per_token_reference(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Module docstring formula in float64: symmetric int8 codes per token, exact integer sum."""
    s = np.maximum(np.abs(x).max(axis=-1, keepdims=True).astype(np.float32) / np.float32(127), 1e-8)
    q = np.clip(np.round((x / s).astype(np.float32)), -127, 127).astype(np.float64)
    return (q @ weight.T) * s + bias


@pytest.mark.parametrize("transposed", [True, False])
def test_dynamic_linears_rewrites_and_matches_the_formula(transposed):
    model, weight, bias = _model(transposed=transposed)
    out, count = dynamic_linears(model)
    assert count == 1
    onnx.checker.check_model(out, full_check=True)
    ops = [n.op_type for n in out.graph.node]
    assert "MatMulInteger" in ops and "MatMul" not in ops and "Transpose" not in ops
    x = np.random.default_rng(5).normal(size=(2, 6, 16)).astype(np.float32)
    x[0, 1] *= 20  # one loud token: a per-tensor scale would crush the others
    got = _run(out, {"x": x})
    np.testing.assert_allclose(got, _per_token_reference(x, weight, bias), rtol=1e-5, atol=1e-4)
    assert np.allclose(_run(out, {"x": x}, optimize=True), got, rtol=1e-5, atol=1e-4)  # ORT's fusions too


def test_dynamic_linears_stays_within_quantization_error_of_the_static_graph():
    """|y_dyn - y_static| <= sum_k |W_kn| (s_token + s_static) / 2 per output (both round to half a step)."""
    model, weight, _ = _model(seed=1)
    out, _ = dynamic_linears(model)
    x = np.random.default_rng(6).uniform(-3, 3, size=(2, 6, 16)).astype(np.float32)  # inside the static range
    before, after = _run(model, {"x": x}), _run(out, {"x": x})
    s_tok = np.abs(x).max(axis=-1, keepdims=True) / 127
    bound = (s_tok + X_SCALE) / 2 * np.abs(weight).sum(axis=1) + 1e-4
    assert np.all(np.abs(after - before) <= bound)
    assert not np.array_equal(after, before)  # really the dynamic path, not the static one


def test_dynamic_linears_leaves_activation_products():
    nodes = [helper.make_node("MatMul", ["a", "b"], ["y"])]
    model = make_model(nodes, [vi("a", [2, 3]), vi("b", [3, 4])], [vi("y", [2, 4])], [], opset=21)
    assert dynamic_linears(model)[1] == 0
    assert apply_passes(model, ["dynamic-linears"]).applied == {"dynamic-linears": 0}


def _gemm_model(seed: int = 2):
    """x [6, 16] -> Q/DQ -> Gemm(., DQ(W [8, 16]), b, transB=1): the exporter's form of some linears."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(-127, 128, size=(8, 16)).astype(np.int8)
    w_scale = rng.uniform(0.01, 0.04, 8).astype(np.float32)
    bias = rng.normal(size=8).astype(np.float32)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "ws"], ["wd"], axis=0),
        helper.make_node("Gemm", ["xd", "wd", "b"], ["y"], transB=1),
    ]
    inits = [
        numpy_helper.from_array(np.float32(X_SCALE), "xs"),
        numpy_helper.from_array(np.uint8(128), "xz"),
        numpy_helper.from_array(codes, "w"),
        numpy_helper.from_array(w_scale, "ws"),
        numpy_helper.from_array(bias, "b"),
    ]
    model = make_model(nodes, [vi("x", [6, 16])], [vi("y", [6, 8])], inits, opset=21)
    return model, codes.astype(np.float64) * w_scale[:, None].astype(np.float64), bias


def test_dynamic_linears_rewrites_gemm_with_bias():
    model, weight, bias = _gemm_model()
    out, count = dynamic_linears(model)
    assert count == 1 and "Gemm" not in [n.op_type for n in out.graph.node]
    onnx.checker.check_model(out, full_check=True)
    x = np.random.default_rng(7).normal(size=(6, 16)).astype(np.float32)
    got = _run(out, {"x": x})
    np.testing.assert_allclose(got, _per_token_reference(x, weight, bias), rtol=1e-5, atol=1e-4)
    alpha = helper.make_attribute("alpha", 0.5)  # a scaled Gemm is not a plain linear: left alone
    model.graph.node[-1].attribute.append(alpha)
    assert dynamic_linears(model)[1] == 0


def _token_fake_quant_model(seed: int = 3, signed: bool = False):
    """x [2, 5, 16] -> the exporter's per-token asymmetric fake quantization (fake_quant_math with
    dynamic_token_params) -> MatMul(., DQ(W [16, 8], per column, zero point)) -> + b."""
    rng = np.random.default_rng(seed)
    lo_q, hi_q = (-128.0, 127.0) if signed else (0.0, 255.0)
    codes = rng.integers(-127, 128, size=(16, 8)).astype(np.int8)
    w_zero = rng.integers(-3, 4, size=8).astype(np.int8)
    w_scale = rng.uniform(0.01, 0.04, 8).astype(np.float32)
    bias = rng.normal(size=8).astype(np.float32)
    c = {
        "axes": np.array([-1], dtype=np.int64),
        "zero": np.float32(0.0),
        "span": np.float32(hi_q - lo_q),
        "eps": np.float32(1e-8),
        "qmin": np.float32(lo_q),
        "qmax": np.float32(hi_q),
    }
    nodes = [
        helper.make_node("ReduceMin", ["x", "axes"], ["mn"], keepdims=1),
        helper.make_node("ReduceMax", ["x", "axes"], ["mx"], keepdims=1),
        helper.make_node("Min", ["mn", "zero"], ["lo"]),
        helper.make_node("Max", ["mx", "zero"], ["hi"]),
        helper.make_node("Sub", ["hi", "lo"], ["rng"]),
        helper.make_node("Div", ["rng", "span"], ["s0"]),
        helper.make_node("Max", ["s0", "eps"], ["s"]),
        helper.make_node("Div", ["lo", "s"], ["los"]),
        helper.make_node("Sub", ["qmin", "los"], ["z0"]),
        helper.make_node("Round", ["z0"], ["z1"]),
        helper.make_node("Clip", ["z1", "qmin", "qmax"], ["z"]),
        helper.make_node("Div", ["x", "s"], ["xs"]),
        helper.make_node("Round", ["xs"], ["xr"]),
        helper.make_node("Add", ["xr", "z"], ["xz"]),
        helper.make_node("Clip", ["xz", "qmin", "qmax"], ["q"]),
        helper.make_node("Sub", ["q", "z"], ["qc"]),
        helper.make_node("Mul", ["qc", "s"], ["xfq"]),
        helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=1),
        helper.make_node("MatMul", ["xfq", "wd"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["y"]),
    ]
    inits = [numpy_helper.from_array(v, k) for k, v in c.items()]
    inits += [
        numpy_helper.from_array(codes, "w"),
        numpy_helper.from_array(w_scale, "ws"),
        numpy_helper.from_array(w_zero, "wz"),
        numpy_helper.from_array(bias, "b"),
    ]
    return make_model(nodes, [vi("x", [2, 5, 16])], [vi("y", [2, 5, 8])], inits, opset=21)


@pytest.mark.parametrize("signed", [False, True])
def test_dynamic_linears_reuses_the_exported_token_codes_exactly(signed):
    model = _token_fake_quant_model(signed=signed)
    out, count = dynamic_linears(model)
    assert count == 1
    onnx.checker.check_model(out, full_check=True)
    ops = [n.op_type for n in out.graph.node]
    assert "MatMulInteger" in ops and "MatMul" not in ops
    assert "Abs" not in ops  # no second quantizer: the graph's own codes feed the integer product
    x = np.random.default_rng(8).normal(size=(2, 5, 16)).astype(np.float32) * 3
    x[1, 2] += 4  # a one-sided token
    before, after = _run(model, {"x": x}), _run(out, {"x": x})
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=2e-5)


def test_dynamic_linears_sym_replaces_the_exported_quantizer():
    """`dynamic-linears-sym`: the exported fake quantization is bypassed (its nodes are gone) and the
    result is the symmetric per-token formula on the float input."""
    model = _token_fake_quant_model(seed=4)
    out, count = PASSES["dynamic-linears-sym"](model)
    assert count == 1
    ops = [n.op_type for n in out.graph.node]
    assert "MatMulInteger" in ops and "Abs" in ops and "Clip" not in ops and "Round" not in ops
    inits = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    weight = ((inits["w"] - inits["wz"]) * inits["ws"]).T  # [N, K] as _per_token_reference takes it
    x = np.random.default_rng(9).normal(size=(2, 5, 16)).astype(np.float32)
    got = _run(out, {"x": x})
    np.testing.assert_allclose(got, _per_token_reference(x, weight, inits["b"]), rtol=1e-5, atol=1e-4)
