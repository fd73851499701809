"""Tiny ONNX graphs built with onnx.helper for the pass tests (no torch)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CPU = ["CPUExecutionProvider"]


def make_model(nodes, inputs, outputs, inits, opset: int = 20) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
    return model


def vi(name: str, shape, elem=TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def run(model: onnx.ModelProto, feeds: dict, so=None) -> list[np.ndarray]:
    import onnxruntime as ort

    if so is None:
        so = ort.SessionOptions()
        so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=CPU).run(None, feeds)


def fake_quant_weight(rng, shape, axis: int, bits: int, mode: str):
    """Float weight on a ``bits``-bit per-channel grid plus the int8 Q/DQ parameters that reproduce it.

    ``mode``: ``sym`` (codes in [-2^(b-1), 2^(b-1)-1], zero point 0), ``asym`` (same span around a
    random zero point), ``onesided`` (codes in [z, z + 2^b - 1]: q - z does not fit a signed b-bit
    container, so an unsigned shifted one is needed).
    """
    c = shape[axis]
    bshape = [1] * len(shape)
    bshape[axis] = c
    s = rng.uniform(0.01, 0.1, c).astype(np.float32)
    if mode == "sym":
        z = np.zeros(c, np.int64)
        lo = np.full(c, -(2 ** (bits - 1)))
    elif mode == "asym":
        z = rng.integers(-20, 20, c)
        lo = z - 2 ** (bits - 1)
    else:
        z = rng.integers(-100, -50, c)
        lo = z
    hi = lo + 2**bits - 1
    codes = rng.integers(lo.reshape(bshape), hi.reshape(bshape) + 1, size=shape)
    w = (codes - z.reshape(bshape)) * s.reshape(bshape)
    w = w + rng.uniform(-0.3, 0.3, shape) * s.reshape(bshape)  # off-grid: Q must round back
    return w.astype(np.float32), s, z.astype(np.int8)


def qdq_weight_nodes(prefix: str, w, s, z, axis: int):
    inits = [
        numpy_helper.from_array(w, f"{prefix}.weight"),
        numpy_helper.from_array(s, f"{prefix}.scale"),
        numpy_helper.from_array(z, f"{prefix}.zero_point"),
    ]
    names = [f"{prefix}.weight", f"{prefix}.scale", f"{prefix}.zero_point"]
    nodes = [
        helper.make_node("QuantizeLinear", names, [f"{prefix}.wq"], axis=axis, name=f"{prefix}_wQ"),
        helper.make_node(
            "DequantizeLinear",
            [f"{prefix}.wq", names[1], names[2]],
            [f"{prefix}.w"],
            axis=axis,
            name=f"{prefix}_wDQ",
        ),
    ]
    return nodes, inits


def conv_matmul_model(rng, bits: int, mode: str, n_out: int = 6, opset: int = 20) -> onnx.ModelProto:
    """x [2,3,8,8] -> Conv(Q/DQ weight, stride 2, pad 1) -> Relu -> Reshape -> MatMul(Q/DQ weight)."""
    w1, s1, z1 = fake_quant_weight(rng, (8, 3, 3, 3), 0, bits, mode)
    w2, s2, z2 = fake_quant_weight(rng, (8 * 4 * 4, n_out), 1, bits, mode)
    n1, i1 = qdq_weight_nodes("conv", w1, s1, z1, 0)
    n2, i2 = qdq_weight_nodes("fc", w2, s2, z2, 1)
    nodes = n1 + [
        helper.make_node("Conv", ["x", "conv.w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Reshape", ["r", "shape"], ["f"], name="flat"),
        *n2,
        helper.make_node("MatMul", ["f", "fc.w"], ["y"], name="fc"),
    ]
    inits = i1 + i2 + [numpy_helper.from_array(np.array([2, -1], np.int64), "shape")]
    return make_model(nodes, [vi("x", [2, 3, 8, 8])], [vi("y", [2, n_out])], inits, opset)


def act_qdq(x: str, prefix: str, scale: float, zero: int, dtype=np.uint8):
    """Activation ``Q -> DQ`` pair on ``x``; output ``{prefix}.dq``."""
    inits = [
        numpy_helper.from_array(np.array(scale, np.float32), f"{prefix}.s"),
        numpy_helper.from_array(np.array(zero, dtype), f"{prefix}.z"),
    ]
    nodes = [
        helper.make_node(
            "QuantizeLinear", [x, f"{prefix}.s", f"{prefix}.z"], [f"{prefix}.q"], name=f"{prefix}_Q"
        ),
        helper.make_node(
            "DequantizeLinear",
            [f"{prefix}.q", f"{prefix}.s", f"{prefix}.z"],
            [f"{prefix}.dq"],
            name=f"{prefix}_DQ",
        ),
    ]
    return nodes, inits


def int8_weight_dq(rng, prefix: str, shape, axis: int):
    """Folded int8 weight + per-axis DQ; output ``{prefix}.w``."""
    c = shape[axis]
    inits = [
        numpy_helper.from_array(rng.integers(-127, 128, shape).astype(np.int8), f"{prefix}.wq"),
        numpy_helper.from_array(rng.uniform(0.001, 0.01, c).astype(np.float32), f"{prefix}.ws"),
    ]
    nodes = [
        helper.make_node(
            "DequantizeLinear",
            [f"{prefix}.wq", f"{prefix}.ws"],
            [f"{prefix}.w"],
            axis=axis,
            name=f"{prefix}_wDQ",
        )
    ]
    return nodes, inits


def qdq_conv_relu_conv_matmul(rng) -> onnx.ModelProto:
    """x -> [Q/DQ] Conv1 -> Relu -> [Q/DQ] Conv2 -> Reshape -> [Q/DQ] MatMul -> y (input pairs only)."""
    nodes, inits = [], []
    for n, i in (act_qdq("x", "a1", 0.02, 128), int8_weight_dq(rng, "c1", (8, 4, 3, 3), 0)):
        nodes += n
        inits += i
    nodes += [
        helper.make_node("Conv", ["a1.dq", "c1.w"], ["c1.y"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1.y"], ["r1"], name="relu1"),
    ]
    for n, i in (act_qdq("r1", "a2", 0.02, 0), int8_weight_dq(rng, "c2", (8, 8, 3, 3), 0)):
        nodes += n
        inits += i
    nodes += [
        helper.make_node("Conv", ["a2.dq", "c2.w"], ["c2.y"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Reshape", ["c2.y", "shp"], ["f"], name="flat"),
    ]
    inits.append(numpy_helper.from_array(np.array([1, -1], np.int64), "shp"))
    for n, i in (act_qdq("f", "a3", 0.05, 128), int8_weight_dq(rng, "m1", (8 * 6 * 6, 16), 1)):
        nodes += n
        inits += i
    nodes.append(helper.make_node("MatMul", ["a3.dq", "m1.w"], ["y"], name="mm1"))
    return make_model(nodes, [vi("x", [1, 4, 6, 6])], [vi("y", [1, 16])], inits)
