"""ONNX Runtime backend (docs/deployment.md section 3): CPU, CUDA or TensorRT execution providers.

``onnxruntime`` is imported lazily. With the CUDA provider the model runs through IO binding
(inputs copied once, outputs bound on the device and copied back), elsewhere ``session.run``.
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
        use_cuda = "CUDAExecutionProvider" in self.session.get_providers()
        self.io_binding = use_cuda if io_binding is None else (io_binding and use_cuda)

    @property
    def input_names(self) -> list[str]:
        return list(self._inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; feeds must name exactly the graph inputs."""
        missing = [n for n in self._inputs if n not in feeds]
        if missing:
            raise RuntimeStageError(
                f"model input(s) {missing} were not fed; the manifest does not match the graph"
            )
        if self.io_binding:
            binding = self.session.io_binding()
            for name in self._inputs:
                binding.bind_cpu_input(name, np.ascontiguousarray(feeds[name]))
            for name in self._outputs:
                binding.bind_output(name, "cuda")
            self.session.run_with_iobinding(binding)
            return dict(zip(self._outputs, binding.copy_outputs_to_cpu()))
        try:
            values = self.session.run(self._outputs, {n: np.asarray(feeds[n]) for n in self._inputs})
        except Exception as exc:  # onnxruntime's InvalidArgument / Fail carry the reason
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RuntimeStageError(
                f"ONNX Runtime failed to run the model: {first[:300]}; the manifest does not match the "
                "graph, re-export the bundle"
            ) from None
        return dict(zip(self._outputs, values))
