"""lint(): each rule with a tiny graph that violates it and one that passes."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgediff_export import ops
from edgediff_export.passes.lint import TRT_SUPPORTED_OPS, Violation, format_violations, lint
from tests.export.passes.graphs import make_model, vi

ORIN = {
    "name": "jetson-orin-nano-8gb",
    "tensorrt": "10.3",
    "precisions": ["fp32", "fp16", "int8", "int4-weight-only"],
    "max_opset": 21,
    "plugin_flavour": "ipluginv3-cpp",
}
XAVIER = {**ORIN, "name": "jetson-xavier-nx", "tensorrt": "8.5", "precisions": ["fp32", "fp16", "int8"]}
CPU = {
    "name": "x86-cpu",
    "precisions": ["fp32", "int8", "int4-weight-only"],
    "max_opset": 21,
    "plugin_flavour": "none",
}
NP = helper.tensor_dtype_to_np_dtype


def _rules(model, profile=ORIN):
    return {v.rule for v in lint(model, profile)}


def _weight_dq_model(elem=TensorProto.INT8, zero=0, opset=21, block=False):
    """x [2, 4] @ DQ(weight [4, 8] of ``elem``, per-axis, zero point ``zero``)."""
    inits = [
        numpy_helper.from_array(np.ones((4, 8)).astype(NP(elem)), "w"),
        numpy_helper.from_array(np.full(8, 0.1, np.float32), "s"),
        numpy_helper.from_array(np.full(8, zero).astype(NP(elem)), "z"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wd"], axis=1, name="w_dq"),
        helper.make_node("MatMul", ["x", "wd"], ["y"], name="mm"),
    ]
    return make_model(nodes, [vi("x", [2, 4])], [vi("y", [2, 8])], inits, opset)


def _act_qdq_model(elem=TensorProto.INT8, zero=0, runtime_scale=False, opset=21):
    scale = "scale_in" if runtime_scale else "s"
    inits = [numpy_helper.from_array(np.full((), zero).astype(NP(elem)), "z")]
    if not runtime_scale:
        inits.append(numpy_helper.from_array(np.array(0.1, np.float32), "s"))
    nodes = [
        helper.make_node("QuantizeLinear", ["x", scale, "z"], ["xq"], name="act_q"),
        helper.make_node("DequantizeLinear", ["xq", scale, "z"], ["y"], name="act_dq"),
    ]
    inputs = [vi("x", [2, 4])] + ([vi("scale_in", [])] if runtime_scale else [])
    return make_model(nodes, inputs, [vi("y", [2, 4])], inits, opset)


def test_opset():
    assert "opset" in _rules(_weight_dq_model(opset=22))
    assert "opset" not in _rules(_weight_dq_model(opset=21))


def test_qdq_symmetric():
    assert "qdq-asymmetric" in _rules(_weight_dq_model(zero=3))
    assert "qdq-asymmetric" in _rules(_act_qdq_model(elem=TensorProto.UINT8, zero=0))
    assert _rules(_weight_dq_model()) == set()
    assert _rules(_act_qdq_model()) == set()
    assert _rules(_weight_dq_model(zero=3), CPU) == set()  # ONNX Runtime profile: asymmetric is fine


def test_constant_scales():
    v = lint(_act_qdq_model(runtime_scale=True), ORIN)
    assert {x.rule for x in v} == {"qdq-dynamic-scale"} and {x.node for x in v} == {"act_q", "act_dq"}
    assert "qdq-dynamic-scale" not in _rules(_act_qdq_model(runtime_scale=True), CPU)


def test_low_bit_activation():
    assert "low-bit-activation" in _rules(_act_qdq_model(elem=TensorProto.INT4))
    assert "low-bit-activation" in _rules(_act_qdq_model(elem=TensorProto.INT4), CPU)
    assert "low-bit-activation" not in _rules(_act_qdq_model(elem=TensorProto.INT8))


def test_int4_weight_only_needs_the_precision():
    assert _rules(_weight_dq_model(elem=TensorProto.INT4)) == set()
    assert "weight-container" in _rules(_weight_dq_model(elem=TensorProto.INT4), XAVIER)
    assert "weight-container" in _rules(_weight_dq_model(elem=TensorProto.INT2, opset=21))
    assert "qdq-asymmetric" in _rules(_weight_dq_model(elem=TensorProto.UINT4, zero=8))


def test_precisions_the_device_lacks():
    fp8 = make_model(
        [
            helper.make_node("Cast", ["x"], ["x8"], to=TensorProto.FLOAT8E4M3FN, name="to_fp8"),
            helper.make_node("Cast", ["x8"], ["y"], to=TensorProto.FLOAT, name="from_fp8"),
        ],
        [vi("x", [2])],
        [vi("y", [2])],
        [],
    )
    v = [x for x in lint(fp8, ORIN) if x.rule == "precision"]
    assert v and "FLOAT8E4M3FN" in v[0].message and "'fp8'" in v[0].message
    assert "precision" not in _rules(fp8, {**ORIN, "precisions": [*ORIN["precisions"], "fp8"]})
    half = make_model(
        [helper.make_node("Relu", ["x"], ["y"])], [vi("x", [2], TensorProto.FLOAT16)], [vi("y", [2], 10)], []
    )
    assert "precision" in _rules(half, CPU) and "precision" not in _rules(half, ORIN)


def test_unsupported_ops():
    bad = make_model(
        [
            helper.make_node("BitShift", ["a", "b"], ["c"], direction="LEFT", name="shift"),
            helper.make_node("Relu", ["x"], ["y"], name="relu"),
            helper.make_node("FastGelu", ["y"], ["z"], domain="com.microsoft", name="ms"),
        ],
        [vi("a", [2], TensorProto.UINT8), vi("b", [2], TensorProto.UINT8), vi("x", [2])],
        [vi("c", [2], TensorProto.UINT8), vi("z", [2])],
        [],
    )
    bad.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    v = [x for x in lint(bad, ORIN) if x.rule == "unsupported-op"]
    assert {x.node for x in v} == {"shift", "ms"}
    assert "Relu" in TRT_SUPPORTED_OPS and "BitwiseAnd" not in TRT_SUPPORTED_OPS
    assert "unsupported-op" not in _rules(bad, CPU)


def _edgediff_model(**node_changes):
    rng = np.random.default_rng(0)
    inits, names = ops.make_residual_binary_initializers(
        "l",
        wq=rng.integers(-128, 128, (4, 10)),
        w_scale=np.ones(4),
        w_zero=np.zeros(4),
        signs=np.ones((2, 10)),
        alpha=np.ones(2),
        channels=np.array([0, 3]),
    )
    node = ops.make_residual_binary_linear_node(["x", *names], "y", in_features=10, name="res_lin")
    if "drop_attr" in node_changes:
        keep = [a for a in node.attribute if a.name != node_changes["drop_attr"]]
        del node.attribute[:]
        node.attribute.extend(keep)
    if "inputs" in node_changes:
        del node.input[node_changes["inputs"] :]
    for i, t in enumerate(inits):
        if t.name == "l.Wq" and "wq_type" in node_changes:
            inits[i] = numpy_helper.from_array(
                numpy_helper.to_array(t).astype(node_changes["wq_type"]), t.name
            )
        if t.name == "l.signs" and "signs_type" in node_changes:
            inits[i] = numpy_helper.from_array(
                numpy_helper.to_array(t).astype(node_changes["signs_type"]), t.name
            )
    model = make_model([node], [vi("x", [2, 10])], [vi("y", [2, 4])], inits)
    return ops.remove_edgediff_functions(model)


@pytest.mark.parametrize(
    "change",
    [{"drop_attr": "plugin_version"}, {"drop_attr": "plugin_namespace"}, {"inputs": 6}],
    ids=["no-version", "no-namespace", "6-inputs"],
)
def test_custom_op_malformed(change):
    v = [x for x in lint(_edgediff_model(**change), ORIN) if x.rule == "custom-op"]
    assert v and v[0].node == "res_lin"


def test_custom_op_types_function_and_flavour():
    assert _rules(_edgediff_model()) == set()
    assert "custom-op" in _rules(_edgediff_model(wq_type=np.int16))
    assert "custom-op" in _rules(_edgediff_model(signs_type=np.int8))
    with_function = ops.add_edgediff_functions(_edgediff_model())
    assert _rules(with_function) == {"custom-op-function"}
    assert "custom-op" in _rules(_edgediff_model(), {**ORIN, "plugin_flavour": "none"})


def test_format_violations_one_line_each_with_node():
    v = lint(_weight_dq_model(zero=3, opset=22), ORIN)
    text = format_violations(v)
    assert len(text.splitlines()) == len(v) == 2
    assert "w_dq: [qdq-asymmetric]" in text and "<model>: [opset]" in text
    assert format_violations([Violation("n", "r", "m")]) == "n: [r] m"


def test_format_grouped_counts_each_rule_once_with_examples_and_a_fix():
    from edgediff_export.passes.lint import RULE_FIXES, format_grouped

    same = [Violation(f"q{i}", "qdq-asymmetric", "UINT8 Q/DQ: signed only") for i in range(240)]
    other = [Violation("w", "qdq-asymmetric", "nonzero zero point"), Violation("<model>", "opset", "too new")]
    lines = format_grouped(same + other).splitlines()
    assert lines[0] == "[qdq-asymmetric] 241 findings"
    assert lines[1] == "  240x UINT8 Q/DQ: signed only"
    assert lines[2] == "      at q0, q1, q2, +237 more"
    assert lines[3] == "  1x nonzero zero point"
    assert lines[5] == f"  fix: {RULE_FIXES['qdq-asymmetric']}"
    assert lines[6] == "[opset] 1 finding"
    assert len(lines) == 10
    found = lint(_weight_dq_model(zero=3, opset=22), ORIN)
    assert found and all(v.rule in RULE_FIXES for v in found)
