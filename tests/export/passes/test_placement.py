"""Q/DQ placement: ONNX Runtime fuses the ort placement; the trt placement is symmetric, inputs only."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgediff_export.errors import ExportError
from edgediff_export.passes.lint import lint
from edgediff_export.passes.placement import (
    find_quantized_nodes,
    needs_matmul_add_fusion_disabled,
    ort_session_options,
    place_qdq,
)
from tests.export.passes.graphs import (
    act_qdq,
    int8_weight_dq,
    make_model,
    qdq_conv_relu_conv_matmul,
    run,
    vi,
)

RNG = np.random.default_rng(0)
X = RNG.standard_normal((1, 4, 6, 6)).astype(np.float32)
ORIN = {
    "name": "jetson-orin-nano-8gb",
    "tensorrt": "10.3",
    "precisions": ["fp32", "fp16", "int8", "int4-weight-only"],
    "max_opset": 21,
    "plugin_flavour": "ipluginv3-cpp",
}


def _calibrate(model, names):
    """uint8 (scale, zero point) of each named intermediate tensor, from a float run on X."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for n in names.values():
        if n not in {o.name for o in m.graph.output}:
            m.graph.output.append(vi(n, None))
    outs = dict(zip([o.name for o in m.graph.output], run(m, {"x": X})))
    qp = {}
    for node, tensor in names.items():
        o = outs[tensor]
        lo, hi = min(float(o.min()), 0.0), max(float(o.max()), 0.0)
        scale = (hi - lo) / 255
        qp[node] = (scale, int(round(-lo / scale)))
    return qp


def _optimized_ops(model, tmp_path, name):
    path = tmp_path / f"{name}.onnx"
    so = ort_session_options(model, optimized_model_path=str(path))
    y = run(model, {"x": X}, so)[0]
    return [n.op_type for n in onnx.load(str(path)).graph.node], y


def test_ort_placement_fuses_to_qlinear_ops(tmp_path):
    model = qdq_conv_relu_conv_matmul(np.random.default_rng(1))
    ref = run(model, {"x": X})[0]
    qp = _calibrate(model, {"conv1": "c1.y", "conv2": "c2.y", "mm1": "y"})
    placed = place_qdq(model, "ort", output_qparams=qp)
    onnx.checker.check_model(placed, full_check=True)
    for qn in find_quantized_nodes(placed):
        users = [n for n in placed.graph.node if qn.node.output[0] in n.input]
        assert [u.op_type for u in users] == ["QuantizeLinear"]
    ops, y = _optimized_ops(placed, tmp_path, "ort")
    assert ops.count("QLinearConv") == 2 and "QLinearMatMul" in ops
    assert "Conv" not in ops and "FusedConv" not in ops and "MatMul" not in ops
    assert np.abs(y - ref).max() <= 0.05 * np.abs(ref).max()


def test_ort_placement_skips_outputs_that_already_reach_a_fusable_q(tmp_path):
    model = qdq_conv_relu_conv_matmul(np.random.default_rng(2))
    qp = _calibrate(model, {"mm1": "y"})  # conv1 -> Relu -> Q(zp 0), conv2 -> Reshape -> Q: nothing to add
    placed = place_qdq(model, "ort", output_qparams=qp)
    assert sum(n.op_type == "QuantizeLinear" for n in placed.graph.node) == 4
    ops, _ = _optimized_ops(placed, tmp_path, "skip")
    assert ops.count("QLinearConv") == 2 and "QLinearMatMul" in ops
    with pytest.raises(ExportError, match="node mm1: no output scale"):
        place_qdq(model, "ort", output_qparams={})


def test_shared_input_pair_is_dedicated_per_consumer(tmp_path):
    rng = np.random.default_rng(3)
    nodes, inits = act_qdq("x", "a", 0.02, 128)
    for k in (1, 2):
        n, i = int8_weight_dq(rng, f"c{k}", (4, 4, 3, 3), 0)
        nodes += [
            *n,
            helper.make_node("Conv", ["a.dq", f"c{k}.w"], [f"y{k}"], pads=[1, 1, 1, 1], name=f"conv{k}"),
        ]
        inits += i
    model = make_model(
        nodes, [vi("x", [1, 4, 6, 6])], [vi("y1", [1, 4, 6, 6]), vi("y2", [1, 4, 6, 6])], inits
    )
    qp = _calibrate(model, {"conv1": "y1", "conv2": "y2"})
    placed = place_qdq(model, "ort", output_qparams=qp)
    act_dqs = [qn.act_dq.output[0] for qn in find_quantized_nodes(placed)]
    assert len(set(act_dqs)) == 2  # one DQ per consumer
    ops, _ = _optimized_ops(placed, tmp_path, "shared")
    assert ops.count("QLinearConv") == 2


def test_trt_placement_is_symmetric_inputs_only_and_lints_clean():
    model = qdq_conv_relu_conv_matmul(np.random.default_rng(4))
    qp = _calibrate(model, {"conv1": "c1.y", "conv2": "c2.y", "mm1": "y"})
    for source in (model, place_qdq(model, "ort", output_qparams=qp)):
        trt = place_qdq(source, "trt")
        onnx.checker.check_model(trt, full_check=True)
        qs = [n for n in trt.graph.node if n.op_type == "QuantizeLinear"]
        assert len(qs) == 3  # inputs of conv1, conv2, mm1; output pairs removed
        inits = {t.name: t for t in trt.graph.initializer}
        for n in trt.graph.node:
            if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
                assert n.input[1] in inits  # constant scale
                if len(n.input) > 2 and n.input[2]:
                    z = inits[n.input[2]]
                    assert z.data_type == TensorProto.INT8 and not numpy_helper.to_array(z).any()
        assert [v for v in lint(trt, ORIN) if v.rule.startswith("qdq")] == []
        meta = {p.key for p in trt.metadata_props}
        assert "edgediff.trt_requantized.a1_Q" in meta  # uint8 zp 128 re-expressed as int8
        y, ref = run(trt, {"x": X})[0], run(model, {"x": X})[0]
        assert np.abs(y - ref).max() <= 0.1 * np.abs(ref).max()


def test_trt_placement_rejects_runtime_scales():
    rng = np.random.default_rng(5)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "step_scale"], ["xq"], name="q_dyn"),
        helper.make_node("DequantizeLinear", ["xq", "step_scale"], ["xd"]),
    ]
    n, inits = int8_weight_dq(rng, "c", (4, 4, 1, 1), 0)
    nodes += [*n, helper.make_node("Conv", ["xd", "c.w"], ["y"], name="conv")]
    model = make_model(nodes, [vi("x", [1, 4, 2, 2]), vi("step_scale", [])], [vi("y", [1, 4, 2, 2])], inits)
    with pytest.raises(ExportError, match="q_dyn: activation scale 'step_scale' is computed at run time"):
        place_qdq(model, "trt")
    with pytest.raises(ExportError, match="unknown placement"):
        place_qdq(model, "tensorrt")


def test_matmul_add_fusion_disabled_keeps_integer_path(tmp_path):
    rng = np.random.default_rng(6)
    nodes, inits = act_qdq("x", "a", 0.02, 128)
    n, i = int8_weight_dq(rng, "m", (16, 8), 1)
    nodes += [
        *n,
        helper.make_node("MatMul", ["a.dq", "m.w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["y"]),
    ]
    inits += [*i, numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b")]
    model = make_model(nodes, [vi("x", [4, 16])], [vi("y", [4, 8])], inits)
    assert needs_matmul_add_fusion_disabled(model)
    x = rng.standard_normal((4, 16)).astype(np.float32)
    found = {}
    for disable in (False, True):
        path = tmp_path / f"mma{disable}.onnx"
        so = ort_session_options(optimized_model_path=str(path), disable_matmul_add_fusion=disable)
        run(model, {"x": x}, so)
        found[disable] = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "Gemm" in found[False] and "MatMulIntegerToFloat" not in found[False]
    assert "MatMulIntegerToFloat" in found[True]
    so = ort_session_options(model)  # decided from the model
    assert so.get_session_config_entry("optimization.disable_specified_optimizers") == "MatMulAddFusion"
    assert so.get_session_config_entry("session.qdq_matmulnbits_accuracy_level") == "0"


def test_trt_placement_folds_unfolded_weights_first():
    from tests.export.passes.graphs import fake_quant_weight, qdq_weight_nodes

    rng = np.random.default_rng(7)
    w, s, z = fake_quant_weight(rng, (4, 4, 3, 3), 0, 8, "asym")
    wn, wi = qdq_weight_nodes("c", w, s, z, 0)
    an, ai = act_qdq("x", "a", 0.02, 0, np.int8)
    nodes = [*an, *wn, helper.make_node("Conv", ["a.dq", "c.w"], ["y"], pads=[1, 1, 1, 1], name="conv")]
    model = make_model(nodes, [vi("x", [1, 4, 6, 6])], [vi("y", [1, 4, 6, 6])], ai + wi)
    assert [qn.node.name for qn in find_quantized_nodes(model)] == ["conv"]
    trt = place_qdq(model, "trt")
    types = {t.name: t.data_type for t in trt.graph.initializer}
    assert types["c.weight"] == TensorProto.INT8
    assert [n.op_type for n in trt.graph.node].count("QuantizeLinear") == 1  # the activation Q only
    assert lint(trt, ORIN) == []
    np.testing.assert_allclose(run(trt, {"x": X})[0], run(model, {"x": X})[0], rtol=1e-5, atol=1e-5)


def test_disabled_optimizers_for_2bit_weights():
    from edgediff_export.passes.placement import has_2bit_weights, ort_disabled_optimizers

    codes = helper.make_tensor("w", TensorProto.UINT2, [4], [0, 1, 2, 3])
    scale = numpy_helper.from_array(np.array(0.5, np.float32), "s")
    node = helper.make_node("DequantizeLinear", ["w", "s"], ["y"])
    model = helper.make_model(
        helper.make_graph([node], "g", [], [vi("y", [4])], [codes, scale]),
        opset_imports=[helper.make_opsetid("", 25)],
    )
    assert has_2bit_weights(model)
    assert ort_disabled_optimizers(model) == ["ConstantFolding"]
    so = ort_session_options(model)
    assert so.get_session_config_entry("optimization.disable_specified_optimizers") == "ConstantFolding"
    so = ort_session_options(model, disable_matmul_add_fusion=True)
    assert so.get_session_config_entry("optimization.disable_specified_optimizers") == (
        "MatMulAddFusion;ConstantFolding"
    )
