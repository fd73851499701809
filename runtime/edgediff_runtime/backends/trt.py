"""Native TensorRT backend (docs/deployment.md sections 2 and 6), written against the TensorRT 10 Python API.

Flow: load the plugin libraries (``ctypes.CDLL``, RTLD_GLOBAL) so their creators register, call
``trt.init_libnvinfer_plugins``, ``trt.Runtime(logger).deserialize_cuda_engine(bytes)``,
``engine.create_execution_context()``; per call ``set_input_shape`` + ``set_tensor_address`` for
every I/O tensor and ``execute_async_v3(stream)``. Device memory and copies go through
``cuda-python`` (``cuda.bindings.runtime``, or the older ``cuda.cudart``). Everything is imported
lazily; without TensorRT the backend raises a one-line :class:`RuntimeStageError`.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import numpy as np

from edgediff_runtime.errors import RuntimeStageError


def import_tensorrt() -> Any:
    """``import tensorrt`` or the install hint."""
    try:
        import tensorrt
    except ImportError:
        raise RuntimeStageError(
            "TensorRT is not installed on this host; use --backend ort or install the trt extra"
        ) from None
    return tensorrt


def import_cudart() -> Any:
    """The CUDA runtime bindings of ``cuda-python`` (new and old module layout)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError:
            raise RuntimeStageError(
                "the TensorRT backend needs cuda-python for device buffers; pip install cuda-python"
            ) from None
    return cudart


def load_plugin_libraries(paths: list[Path]) -> list[ctypes.CDLL]:
    """``dlopen`` each plugin library globally so TensorRT finds its plugin creators."""
    handles = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise RuntimeStageError(
                f"TensorRT plugin library {path} does not exist; build it from the bundle's trt/ sources "
                "(cmake) or pass --plugin PATH"
            )
        try:
            handles.append(ctypes.CDLL(str(path.resolve()), mode=ctypes.RTLD_GLOBAL))
        except OSError as exc:
            raise RuntimeStageError(
                f"cannot load TensorRT plugin library {path.name}: {exc}; rebuild it for this JetPack"
            ) from None
    return handles


def _check(result: Any, what: str) -> Any:
    """Unpack a cuda-python ``(err, *values)`` tuple, raising on a CUDA error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeStageError(f"CUDA call {what} failed with error {int(err)}; check the GPU and driver")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


class TrtBackend:
    """Runs a serialized TensorRT engine; inputs and outputs are host numpy arrays."""

    def __init__(self, engine_path: str | Path, plugin_libraries: list[Path] | None = None) -> None:
        trt = import_tensorrt()
        self._cudart = import_cudart()
        engine_path = Path(engine_path)
        if not engine_path.is_file():
            raise RuntimeStageError(
                f"TensorRT engine {engine_path} does not exist; build it on this device with the trtexec "
                "command in the bundle's trt/ folder, or pass --engine PATH"
            )
        self._plugins = load_plugin_libraries(list(plugin_libraries or []))
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self._logger, "")
        # edgediff's plugin library exports getCreators (IPluginV3): a plain dlopen registers nothing,
        # the plugin registry must load it (TensorRT 10 API).
        registry = trt.get_plugin_registry()
        for path in plugin_libraries or []:
            if hasattr(registry, "load_library"):
                registry.load_library(str(Path(path).resolve()))
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise RuntimeStageError(
                f"TensorRT could not deserialize {engine_path.name} (built for another GPU or TensorRT "
                "version, or a plugin library is missing); rebuild the engine on this device"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self._inputs = [n for n in names if is_input[n]]
        self._outputs = [n for n in names if not is_input[n]]
        self._dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity in bytes)
        self._stream = _check(self._cudart.cudaStreamCreate(), "cudaStreamCreate")

    @property
    def input_names(self) -> list[str]:
        return list(self._inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)

    def _device_buffer(self, name: str, nbytes: int) -> int:
        ptr, cap = self._buffers.get(name, (0, 0))
        if cap < nbytes:
            if ptr:
                _check(self._cudart.cudaFree(ptr), "cudaFree")
            ptr = int(_check(self._cudart.cudaMalloc(max(nbytes, 1)), "cudaMalloc"))
            self._buffers[name] = (ptr, max(nbytes, 1))
        return ptr

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Copy inputs to the GPU, ``execute_async_v3``, copy outputs back (one stream, synchronised)."""
        cudart = self._cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        missing = [n for n in self._inputs if n not in feeds]
        if missing:
            raise RuntimeStageError(
                f"engine input(s) {missing} were not fed; the manifest does not match the engine"
            )
        hosts = {}
        for name in self._inputs:
            arr = np.ascontiguousarray(feeds[name], dtype=self._dtypes[name])
            hosts[name] = arr
            if not self.context.set_input_shape(name, tuple(arr.shape)):
                raise RuntimeStageError(
                    f"input {name} shape {list(arr.shape)} is outside the engine's optimisation profile; "
                    "rebuild the engine with a wider --minShapes/--maxShapes"
                )
            ptr = self._device_buffer(name, arr.nbytes)
            copy = cudart.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, h2d, self._stream)
            _check(copy, "cudaMemcpyAsync")
            self.context.set_tensor_address(name, ptr)
        outs = {}
        for name in self._outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeStageError(f"output {name} has a data-dependent shape {shape}; not supported")
            outs[name] = np.empty(shape, dtype=self._dtypes[name])
            self.context.set_tensor_address(name, self._device_buffer(name, outs[name].nbytes))
        if not self.context.execute_async_v3(self._stream):
            raise RuntimeStageError("TensorRT execute_async_v3 failed; see the TensorRT log above")
        for name, arr in outs.items():
            ptr = self._buffers[name][0]
            copy = cudart.cudaMemcpyAsync(arr.ctypes.data, ptr, arr.nbytes, d2h, self._stream)
            _check(copy, "cudaMemcpyAsync")
        _check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return outs

    def close(self) -> None:
        """Free device buffers and the stream."""
        for ptr, _ in self._buffers.values():
            self._cudart.cudaFree(ptr)
        self._buffers.clear()
        if self._stream is not None:
            self._cudart.cudaStreamDestroy(self._stream)
            self._stream = None

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        try:
            self.close()
        except Exception:
            pass
