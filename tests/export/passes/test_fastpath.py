"""Float-overhead passes: outputs before/after on tiny graphs, checked with numpy and ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgediff_export.errors import ExportError
from edgediff_export.passes.fastpath import (
    PASSES,
    apply_passes,
    groupnorm_to_instancenorm,
    remove_noop_casts,
)

ort = pytest.importorskip("onnxruntime")


def _run(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def _groupnorm_model(shape, groups, opset=21, eps=1e-5, seed=0) -> onnx.ModelProto:
    c = shape[1]
    rng = np.random.default_rng(seed)
    scale = numpy_helper.from_array(rng.uniform(0.5, 2.0, c).astype(np.float32), "scale")
    bias = numpy_helper.from_array(rng.normal(size=c).astype(np.float32), "bias")
    dims = ["batch", *shape[1:]]
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node(
                "GroupNormalization",
                ["r", "scale", "bias"],
                ["gn"],
                num_groups=groups,
                epsilon=eps,
                name="gn0",
            ),
            helper.make_node("Sigmoid", ["gn"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
        [scale, bias],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _groupnorm_numpy(x, groups, scale, bias, eps):
    """Wu & He 2018, eq. 1-2: statistics over (C/G, spatial) per sample and group."""
    n, c = x.shape[:2]
    g = x.reshape(n, groups, -1).astype(np.float64)
    mu = g.mean(axis=-1, keepdims=True)
    var = g.var(axis=-1, keepdims=True)
    y = ((g - mu) / np.sqrt(var + eps)).reshape(x.shape)
    bshape = (1, c) + (1,) * (x.ndim - 2)
    return y * scale.reshape(bshape) + bias.reshape(bshape)


@pytest.mark.parametrize(
    "shape,groups", [((2, 8, 5, 3), 4), ((3, 6, 7), 3), ((1, 4, 2, 2, 3), 4), ((2, 8, 4, 4), 1)]
)
def test_groupnorm_rewrite_matches_groupnorm(shape, groups):
    model = _groupnorm_model(shape, groups, eps=1e-3)
    out, count = groupnorm_to_instancenorm(model)
    assert count == 1
    onnx.checker.check_model(out, full_check=True)
    ops = [n.op_type for n in out.graph.node]
    assert "GroupNormalization" not in ops and "InstanceNormalization" in ops
    assert [n.op_type for n in model.graph.node].count("GroupNormalization") == 1  # input untouched
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32) * 3 + 1
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    ref = 1 / (1 + np.exp(-_groupnorm_numpy(np.maximum(x, 0), groups, inits["scale"], inits["bias"], 1e-3)))
    before, after = _run(model, {"x": x}), _run(out, {"x": x})
    np.testing.assert_allclose(before, ref, atol=2e-6)
    np.testing.assert_allclose(after, ref, atol=2e-6)
    np.testing.assert_allclose(after, before, atol=2e-6)


def test_groupnorm_rewrite_is_wrong_with_the_wrong_groups():
    """The check above can fail: the rewrite's statistics must be the group statistics."""
    shape, groups = (2, 8, 4, 4), 4
    model = _groupnorm_model(shape, groups)
    x = (np.random.default_rng(2).normal(size=shape) + np.arange(8).reshape(1, 8, 1, 1)).astype(np.float32)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    wrong = 1 / (1 + np.exp(-_groupnorm_numpy(np.maximum(x, 0), 2, inits["scale"], inits["bias"], 1e-5)))
    after = _run(groupnorm_to_instancenorm(model)[0], {"x": x})
    assert np.abs(after - wrong).max() > 1e-2


def test_groupnorm_opset18_and_dynamic_scale_left_alone():
    model = _groupnorm_model((2, 4, 3, 3), 2, opset=18)
    # opset 18 scale is per group: make it valid for that contract
    for t in model.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(np.ones(2, np.float32), t.name))
    out, count = groupnorm_to_instancenorm(model)
    assert count == 0 and [n.op_type for n in out.graph.node] == [n.op_type for n in model.graph.node]
    dyn = _groupnorm_model((2, 4, 3, 3), 2)
    dyn.graph.input.append(helper.make_tensor_value_info("scale", TensorProto.FLOAT, [4]))
    assert groupnorm_to_instancenorm(dyn)[1] == 0


def _cast_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["x"], ["c1"], to=TensorProto.FLOAT),  # no-op
            helper.make_node("Relu", ["c1"], ["r"]),
            helper.make_node("Cast", ["r"], ["c2"], to=TensorProto.INT32),  # real
            helper.make_node("Cast", ["c2"], ["c3"], to=TensorProto.INT32),  # no-op
            helper.make_node("Cast", ["c3"], ["y"], to=TensorProto.FLOAT),  # real, graph output
            helper.make_node("Cast", ["y"], ["z"], to=TensorProto.FLOAT),  # no-op, graph output: kept
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def test_remove_noop_casts():
    model = _cast_model()
    out, count = remove_noop_casts(model)
    assert count == 2
    assert [n.output[0] for n in out.graph.node] == ["r", "c2", "y", "z"]
    onnx.checker.check_model(out, full_check=True)
    x = np.array([[-1.7, 0.4, 2.6], [3.2, -0.1, 9.9]], np.float32)
    before, after = _run(model, {"x": x}), _run(out, {"x": x})
    np.testing.assert_array_equal(after, before)
    np.testing.assert_array_equal(after, np.trunc(np.maximum(x, 0)))


def test_apply_passes_records_counts_and_refuses_unknown():
    model = _groupnorm_model((2, 4, 3, 3), 2)
    result = apply_passes(model, list(PASSES))
    assert result.applied == {name: int(name == "groupnorm") for name in PASSES}
    with pytest.raises(ExportError, match="unknown graph pass"):
        apply_passes(model, ["fuse-everything"])
