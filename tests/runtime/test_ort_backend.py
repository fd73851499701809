"""ORT backend IO binding: same outputs as ``session.run``, outputs written into reused arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402

from edgediff_runtime.backends.ort import OrtBackend  # noqa: E402
from edgediff_runtime.errors import RuntimeStageError  # noqa: E402


def _model(path: Path) -> Path:
    """y = x * 2 + t (t broadcast per sample), z = sum(x) per sample: two outputs, dynamic batch."""
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "two"], ["x2"]),
            helper.make_node("Unsqueeze", ["t", "axes"], ["t4"]),
            helper.make_node("Add", ["x2", "t4"], ["y"]),
            helper.make_node("ReduceSum", ["x", "raxes"], ["z"], keepdims=0),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 3]),
            helper.make_tensor_value_info("t", TensorProto.FLOAT, ["batch"]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, 3]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch"]),
        ],
        [
            helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
            helper.make_tensor("axes", TensorProto.INT64, [2], [1, 2]),
            helper.make_tensor("raxes", TensorProto.INT64, [2], [1, 2]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


def _feeds(batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x": rng.normal(size=(batch, 2, 3)).astype(np.float32),
        "t": rng.normal(size=batch).astype(np.float32),
    }


def _expected(f: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"y": f["x"] * 2 + f["t"][:, None, None], "z": f["x"].sum(axis=(1, 2))}


def test_cpu_io_binding_matches_session_run_and_reuses_outputs(tmp_path):
    path = _model(tmp_path / "m.onnx")
    bound, plain = OrtBackend(path, threads=1), OrtBackend(path, threads=1, io_binding=False)
    assert bound.io_binding and not plain.io_binding and bound.device == "cpu"
    first = bound.run(_feeds(3, 0))
    for name, value in _expected(_feeds(3, 0)).items():
        np.testing.assert_allclose(first[name], value, rtol=1e-6)
    y_first = first["y"].copy()
    second = bound.run(_feeds(3, 1))  # same shapes: written into the first call's arrays
    assert second["y"] is first["y"] and second["z"] is first["z"]
    for name, value in _expected(_feeds(3, 1)).items():
        np.testing.assert_allclose(second[name], value, rtol=1e-6)
        np.testing.assert_array_equal(second[name], plain.run(_feeds(3, 1))[name])
    assert not np.allclose(second["y"], y_first)
    other = bound.run(_feeds(5, 2))  # another batch: its own arrays, the batch-3 ones untouched
    assert other["y"].shape == (5, 2, 3) and other["y"] is not first["y"]
    np.testing.assert_allclose(other["y"], _expected(_feeds(5, 2))["y"], rtol=1e-6)
    np.testing.assert_allclose(first["y"], _expected(_feeds(3, 1))["y"], rtol=1e-6)


def test_io_binding_errors_are_one_line(tmp_path):
    backend = OrtBackend(_model(tmp_path / "m.onnx"), threads=1)
    bad = {"x": np.zeros((2, 2, 3), np.float32), "t": np.zeros(2, np.float64)}
    with pytest.raises(RuntimeStageError, match="ONNX Runtime failed to run the model") as err:
        backend.run(bad)
    assert "\n" not in str(err.value)
