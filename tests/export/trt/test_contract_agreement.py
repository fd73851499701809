"""The plugin's oracle (trt/numpy_ref.py) and the exporter's ONNX nodes agree on the op contract.

The exporter (edgediff_export.ops) writes the edgediff nodes plus model-local functions of standard
ops; ONNX Runtime runs those. If both sides read the contract the same way (bit order, zero points,
channel scatter, conv pads order), ONNX Runtime's output equals numpy_ref's, so the kernels,
tested against numpy_ref, compute what the exported file means. Skipped if the exporter's helpers
are not there.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgediff_export.trt import numpy_ref as ref

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
ops = pytest.importorskip("edgediff_export.ops")

_NEEDED = (
    "make_residual_binary_initializers",
    "make_residual_binary_linear_node",
    "make_residual_binary_conv_node",
    "add_edgediff_functions",
)
if not all(hasattr(ops, name) for name in _NEEDED):
    pytest.skip("edgediff_export.ops lacks the node helpers", allow_module_level=True)


def _run(node, inits, x: np.ndarray, y_shape: tuple[int, ...]) -> np.ndarray:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, list(y_shape))],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    ops.add_edgediff_functions(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"X": x})[0]


def _weights(rng: np.random.Generator, cout: int, row_shape: tuple[int, ...], k: int):
    row = int(np.prod(row_shape))
    return dict(
        wq=rng.integers(-8, 8, size=(cout, *row_shape)).astype(np.int8),
        w_scale=rng.uniform(0.01, 0.05, size=cout).astype(np.float32),
        w_zero=rng.integers(-2, 3, size=cout).astype(np.int8),
        signs=rng.choice([-1, 1], size=(k, row)).astype(np.int8),
        alpha=rng.uniform(0.01, 0.03, size=k).astype(np.float32),
        channels=np.sort(rng.choice(cout, size=k, replace=False)).astype(np.int64),
        bias=rng.normal(size=cout).astype(np.float32),
    )


def _oracle_args(w: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    return (
        w["wq"],
        w["w_scale"],
        w["w_zero"],
        ref.pack_signs(w["signs"]),
        w["alpha"],
        w["channels"],
        w["bias"],
    )


def test_linear_file_matches_numpy_ref():
    rng = np.random.default_rng(7)
    w = _weights(rng, 12, (21,), 4)
    inits, names = ops.make_residual_binary_initializers("l", **w)
    node = ops.make_residual_binary_linear_node(["X", *names], "Y", in_features=21)
    x = rng.normal(size=(3, 21)).astype(np.float32)
    got = _run(node, inits, x, (3, 12))
    want = ref.residual_binary_linear(x, *_oracle_args(w), out_dtype=np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_conv_file_matches_numpy_ref():
    rng = np.random.default_rng(8)
    w = _weights(rng, 6, (2, 3, 2), 3)  # group 2 over 4 input channels, row 12 bits
    inits, names = ops.make_residual_binary_initializers("c", **w)
    conv = dict(strides=(2, 1), pads=(1, 0, 2, 1), dilations=(2, 1), group=2)
    node = ops.make_residual_binary_conv_node(["X", *names], "Y", kernel_shape=(3, 2), **conv)
    x = rng.normal(size=(2, 4, 9, 7)).astype(np.float32)
    want = ref.residual_binary_conv(x, *_oracle_args(w), out_dtype=np.float64, **conv)
    got = _run(node, inits, x, want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
