"""ONNX Runtime backend (docs/deployment.md section 3): CPU, CUDA or TensorRT execution providers.

``onnxruntime`` is imported lazily. The model runs through IO binding: with the CUDA provider
inputs are copied once and outputs bound on the device and copied back; on the CPU inputs are bound
in place (no copy) and outputs are written straight into arrays preallocated per input shape (the
shapes learnt from the first call), so a sampling loop allocates nothing per step. ``io_binding=False``
falls back to ``session.run``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgediff_runtime.errors import RuntimeStageError

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}
OPT_LEVELS = ("disable", "basic", "extended", "all")


def import_onnxruntime() -> Any:
    """``import onnxruntime`` or a one-line error with the install command."""
    try:
        import onnxruntime
    except ImportError:
        raise RuntimeStageError(
            "onnxruntime is not installed; pip install onnxruntime (or onnxruntime-gpu from the Jetson Zoo)"
        ) from None
    return onnxruntime


def resolve_providers(requested: list[str] | None, available: list[str]) -> list[str]:
    """Map short names (cpu, cuda, tensorrt) to ORT provider names and check they are available."""
    if not requested:
        return ["CPUExecutionProvider"]
    out = []
    for name in requested:
        full = PROVIDER_ALIASES.get(name.lower(), name)
        if full not in available:
            raise RuntimeStageError(
                f"ONNX Runtime provider {full} is not available (have: {', '.join(available)}); "
                "install the matching onnxruntime build or choose another provider"
            )
        out.append(full)
    if "CPUExecutionProvider" not in out:
        out.append("CPUExecutionProvider")
    return out


class OrtBackend:
    """One ``onnxruntime.InferenceSession`` over ``model_path``."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        providers: list[str] | None = None,
        threads: int | None = None,
        optimization: str = "all",
        io_binding: bool | None = None,
        disabled_optimizers: list[str] | None = None,
    ) -> None:
        ort = import_onnxruntime()
        model_path = Path(model_path)
        if threads is not None and threads < 1:
            raise RuntimeStageError(f"--threads must be >= 1, got {threads}")
        if optimization not in OPT_LEVELS:
            raise RuntimeStageError(f"graph optimisation level '{optimization}' is unknown; use {OPT_LEVELS}")
        opts = ort.SessionOptions()
        # 4-bit weights fuse to MatMulNBits, exact only at accuracy level 0 (docs/deployment.md 11).
        opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
        if disabled_optimizers:  # from the manifest: passes this graph must not go through
            opts.add_session_config_entry(
                "optimization.disable_specified_optimizers", ";".join(disabled_optimizers)
            )
        if threads is not None:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[optimization]
        self.providers = resolve_providers(providers, list(ort.get_available_providers()))
        try:
            self.session = ort.InferenceSession(str(model_path), sess_options=opts, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RuntimeStageError(
                f"ONNX Runtime cannot load {model_path.name}: {first[:300]}; re-export the bundle"
            ) from None
        self._inputs = [i.name for i in self.session.get_inputs()]
        self._outputs = [o.name for o in self.session.get_outputs()]
        self.device = "cuda" if "CUDAExecutionProvider" in self.session.get_providers() else "cpu"
        self.io_binding = True if io_binding is None else bool(io_binding)
        self._out_buffers: dict[tuple, list[np.ndarray]] = {}  # input shapes -> preallocated outputs

    @property
    def input_names(self) -> list[str]:
        return list(self._inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; feeds must name exactly the graph inputs.

        With CPU IO binding the returned arrays are reused by the next call with the same input
        shapes: copy them to keep them longer.
        """
        missing = [n for n in self._inputs if n not in feeds]
        if missing:
            raise RuntimeStageError(
                f"model input(s) {missing} were not fed; the manifest does not match the graph"
            )
        if self.io_binding:
            return self._run_bound(feeds)
        try:
            values = self.session.run(self._outputs, {n: np.asarray(feeds[n]) for n in self._inputs})
        except Exception as exc:  # onnxruntime's InvalidArgument / Fail carry the reason
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RuntimeStageError(
                f"ONNX Runtime failed to run the model: {first[:300]}; the manifest does not match the "
                "graph, re-export the bundle"
            ) from None
        return dict(zip(self._outputs, values))

    def _run_bound(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        binding = self.session.io_binding()
        arrays = {n: np.ascontiguousarray(feeds[n]) for n in self._inputs}
        for name, value in arrays.items():
            binding.bind_cpu_input(name, value)
        key = tuple((n, a.shape, a.dtype.str) for n, a in arrays.items())
        buffers = self._out_buffers.get(key) if self.device == "cpu" else None
        for k, name in enumerate(self._outputs):
            if buffers is None:
                binding.bind_output(name, self.device)
            else:
                out = buffers[k]
                binding.bind_output(name, "cpu", 0, out.dtype, list(out.shape), out.ctypes.data)
        try:
            self.session.run_with_iobinding(binding)
        except Exception as exc:  # onnxruntime's InvalidArgument / Fail carry the reason
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RuntimeStageError(
                f"ONNX Runtime failed to run the model: {first[:300]}; the manifest does not match the "
                "graph, re-export the bundle"
            ) from None
        if buffers is None:
            buffers = binding.copy_outputs_to_cpu()
            if self.device == "cpu":  # next call at these shapes writes into these arrays
                self._out_buffers[key] = buffers
        return dict(zip(self._outputs, buffers))
