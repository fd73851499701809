"""TensorRT backend: the 'absent' error (always), the TRT 10 call sequence against a fake `tensorrt`
and `cuda-python` (always), and a real engine (``@pytest.mark.trt``, needs TensorRT + GPU)."""

from __future__ import annotations

import ctypes
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from edgediff_runtime.backends import open_backend
from edgediff_runtime.backends.trt import TrtBackend, load_plugin_libraries
from edgediff_runtime.errors import RuntimeStageError


def test_absent_tensorrt_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import raises ImportError
    with pytest.raises(RuntimeStageError) as err:
        TrtBackend(tmp_path / "model.engine")
    expected = "TensorRT is not installed on this host; use --backend ort or install the trt extra"
    assert str(err.value) == expected
    with pytest.raises(RuntimeStageError, match="needs an engine; pass --engine"):
        open_backend("trt", tmp_path / "model.onnx")


def test_missing_plugin_library(tmp_path):
    with pytest.raises(RuntimeStageError, match="plugin library .*libedgediff_trt_plugins.so does not exist"):
        load_plugin_libraries([tmp_path / "libedgediff_trt_plugins.so"])
    (tmp_path / "bad.so").write_bytes(b"not an ELF file")
    with pytest.raises(RuntimeStageError, match="cannot load TensorRT plugin library bad.so"):
        load_plugin_libraries([tmp_path / "bad.so"])


class _FakeCudart(types.ModuleType):
    """cuda-python's runtime API over host memory: enough to check pointers, sizes and copy directions."""

    class cudaMemcpyKind:  # noqa: N801 - mirrors cuda-python
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    def __init__(self) -> None:
        super().__init__("cudart")
        self.blocks: dict[int, ctypes.Array] = {}
        self.log: list[str] = []

    def cudaMalloc(self, n):  # noqa: N802
        buf = ctypes.create_string_buffer(n)
        self.blocks[ctypes.addressof(buf)] = buf
        return (0, ctypes.addressof(buf))

    def cudaFree(self, ptr):  # noqa: N802
        self.blocks.pop(ptr)
        return (0,)

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):  # noqa: N802
        self.log.append({1: "h2d", 2: "d2h"}[kind])
        ctypes.memmove(dst, src, n)
        return (0,)

    def cudaStreamCreate(self):  # noqa: N802
        return (0, 7)

    def cudaStreamSynchronize(self, stream):  # noqa: N802
        assert stream == 7
        return (0,)

    def cudaStreamDestroy(self, stream):  # noqa: N802
        return (0,)


def _fake_tensorrt(record: list) -> types.ModuleType:
    """A TensorRT 10 look-alike: one engine with input 'x' [N, 4] float32 and output 'y' = 2 * x."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    class TensorIOMode:
        INPUT, OUTPUT = 1, 2

    class Context:
        def __init__(self):
            self.shapes, self.addr = {}, {}

        def set_input_shape(self, name, shape):
            record.append(("set_input_shape", name, shape))
            self.shapes[name] = shape
            return shape[1] == 4

        def get_tensor_shape(self, name):
            return self.shapes["x"]

        def set_tensor_address(self, name, ptr):
            self.addr[name] = ptr

        def execute_async_v3(self, stream):
            record.append(("execute_async_v3", stream))
            n = int(np.prod(self.shapes["x"]))
            x = np.ctypeslib.as_array((ctypes.c_float * n).from_address(self.addr["x"]))
            y = np.ctypeslib.as_array((ctypes.c_float * n).from_address(self.addr["y"]))
            y[:] = 2 * x
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ["x", "y"][i]

        def get_tensor_mode(self, name):
            return TensorIOMode.INPUT if name == "x" else TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return "float32"

        def create_execution_context(self):
            return Context()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, blob):
            record.append(("deserialize", blob))
            return Engine() if blob == b"ENGINE" else None

    trt.Logger, trt.TensorIOMode, trt.Runtime = Logger, TensorIOMode, Runtime
    trt.nptype = lambda dt: np.float32
    trt.init_libnvinfer_plugins = lambda logger, ns: record.append(("init_plugins", ns))

    class Registry:
        def load_library(self, path):
            record.append(("load_library", path))

    trt.get_plugin_registry = lambda: Registry()
    return trt


def test_trt10_call_sequence_with_fakes(tmp_path, monkeypatch):
    record: list = []
    cudart = _FakeCudart()
    cuda_pkg = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = cudart
    cuda_pkg.bindings = bindings
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(record))
    monkeypatch.setitem(sys.modules, "cuda", cuda_pkg)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"ENGINE")

    backend = TrtBackend(engine, plugin_libraries=[])
    assert backend.input_names == ["x"] and backend.output_names == ["y"]
    x = np.arange(8, dtype=np.float64).reshape(2, 4)  # cast to the engine dtype on the way in
    out = backend.run({"x": x})
    np.testing.assert_array_equal(out["y"], 2 * x.astype(np.float32))
    assert out["y"].dtype == np.float32
    assert [r[0] for r in record] == ["init_plugins", "deserialize", "set_input_shape", "execute_async_v3"]
    assert cudart.log == ["h2d", "d2h"]
    backend.run({"x": np.ones((1, 4), np.float32)})  # smaller batch reuses the buffers
    assert len(cudart.blocks) == 2
    with pytest.raises(RuntimeStageError, match="outside the engine's optimisation profile"):
        backend.run({"x": np.ones((1, 5), np.float32)})
    with pytest.raises(RuntimeStageError, match=r"engine input\(s\) \['x'\] were not fed"):
        backend.run({})
    backend.close()
    assert cudart.blocks == {}

    engine.write_bytes(b"OTHER GPU")
    with pytest.raises(RuntimeStageError, match="could not deserialize model.engine"):
        TrtBackend(engine)
    with pytest.raises(RuntimeStageError, match="engine .*missing.engine does not exist"):
        TrtBackend(tmp_path / "missing.engine")


@pytest.mark.trt
def test_real_engine_matches_golden(tiny_bundle: Path, tmp_path: Path):
    """Build an FP32 engine from the tiny bundle on this GPU and run level-2 parity through TrtBackend."""
    trt = pytest.importorskip("tensorrt")
    from edgediff_runtime.bundle import load_bundle
    from edgediff_runtime.parity import run_parity

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse_from_file(str(tiny_bundle / "model.onnx")), parser.get_error(0)
    config = builder.create_builder_config()
    config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    profile.set_shape("sample", (1, 1, 8, 8), (3, 1, 8, 8), (8, 1, 8, 8))
    profile.set_shape("timestep", (1,), (3,), (8,))
    config.add_optimization_profile(profile)
    blob = builder.build_serialized_network(network, config)
    engine = tmp_path / "tiny.engine"
    engine.write_bytes(bytes(blob))
    bundle = load_bundle(tiny_bundle, backend="trt")
    report = run_parity(bundle, TrtBackend(engine), backend_name="trt")
    assert report["level2"]["latent_max_abs"] < 1e-3, report["level2"]
