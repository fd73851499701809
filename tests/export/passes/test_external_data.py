"""save_model: inline below the threshold, one model.onnx.data file above it."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from edgediff_export.errors import ExportError
from edgediff_export.passes.external_data import DEFAULT_THRESHOLD, model_bytes, save_model
from tests.export.passes.graphs import make_model, vi


def _model():
    w = np.arange(64 * 32, dtype=np.float32).reshape(64, 32) / 1000
    b = np.arange(32, dtype=np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    return make_model(nodes, [vi("x", [2, 64])], [vi("y", [2, 32])], inits)


def _run(path):
    x = np.ones((2, 64), np.float32)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_inline_below_threshold_and_external_above(tmp_path):
    model = _model()
    size = model_bytes(model)
    assert size < DEFAULT_THRESHOLD
    path = tmp_path / "model.onnx"

    files = save_model(model, path, threshold=size * 10)
    assert files == [path] and not (tmp_path / "model.onnx.data").exists()
    ref = _run(path)

    files = save_model(model, path, threshold=size // 2, min_tensor_bytes=1024)
    data = tmp_path / "model.onnx.data"
    assert files == [path, data] and data.exists()
    assert path.stat().st_size < 1024 < data.stat().st_size  # the 8 KB weight went out, the bias stayed
    assert data.stat().st_size == 64 * 32 * 4
    locations = {
        t.name: {e.key: e.value for e in t.external_data}.get("location")
        for t in onnx.load(str(path), load_external_data=False).graph.initializer
    }
    assert locations == {"w": "model.onnx.data", "b": None}
    np.testing.assert_array_equal(_run(path), ref)
    assert not model.graph.initializer[0].external_data  # caller's model untouched

    save_model(model, path, threshold=size * 10)  # back to inline: the stale data file goes
    assert not data.exists()
    np.testing.assert_array_equal(_run(path), ref)


def test_resave_external_does_not_grow_data_file(tmp_path):
    path = tmp_path / "m.onnx"
    save_model(_model(), path, threshold=1)
    first = (tmp_path / "m.onnx.data").stat().st_size
    save_model(_model(), path, threshold=1)
    assert (tmp_path / "m.onnx.data").stat().st_size == first


def test_path_must_end_in_onnx(tmp_path):
    with pytest.raises(ExportError, match=r"\.onnx"):
        save_model(_model(), tmp_path / "model.bin")
