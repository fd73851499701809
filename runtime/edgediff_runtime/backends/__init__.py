"""Execution backends behind one protocol (docs/design.md section 1): ``run(feeds) -> outputs``.

``ort`` (ONNX Runtime: CPU, CUDA, TensorRT execution providers) and ``trt`` (native TensorRT
engines). Both import their engine library lazily, so ``import edgediff_runtime`` needs numpy only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from edgediff_runtime.errors import RuntimeStageError


@runtime_checkable
class Backend(Protocol):
    """Runs one model: numpy feeds in, numpy outputs out (host memory on both sides)."""

    @property
    def input_names(self) -> list[str]:
        """Graph input names."""
        ...

    @property
    def output_names(self) -> list[str]:
        """Graph output names."""
        ...

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model once."""
        ...


BACKENDS = ("ort", "trt")


def threads_for(requested: int | None, profile_threads: int | None) -> int | None:
    """ONNX Runtime intra-op threads: ``--threads`` if given, else the device profile's
    ``cpu_threads``, else None (ONNX Runtime's default, one per physical core)."""
    if requested is not None:
        if requested < 1:
            raise RuntimeStageError(f"--threads must be >= 1, got {requested}")
        return requested
    return profile_threads


def open_backend(
    kind: str,
    model_path: Path,
    *,
    threads: int | None = None,
    providers: list[str] | None = None,
    engine_path: Path | None = None,
    plugin_libraries: list[Path] | None = None,
    disabled_optimizers: list[str] | None = None,
) -> Backend:
    """Create backend ``kind`` ("ort" or "trt") for a bundle's model or engine.

    ``disabled_optimizers``: ONNX Runtime graph optimizers to turn off (the manifest's
    ``onnx.ort_disabled_optimizers``); ignored by ``trt``.
    """
    if kind == "ort":
        from edgediff_runtime.backends.ort import OrtBackend

        return OrtBackend(
            model_path, providers=providers, threads=threads, disabled_optimizers=disabled_optimizers
        )
    if kind == "trt":
        from edgediff_runtime.backends.trt import TrtBackend

        if engine_path is None:
            raise RuntimeStageError("the TensorRT backend needs an engine; pass --engine PATH")
        return TrtBackend(engine_path, plugin_libraries=plugin_libraries or [])
    raise RuntimeStageError(f"unknown backend '{kind}'; use one of {', '.join(BACKENDS)}")
