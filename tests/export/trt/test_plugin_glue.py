"""Build libedgediff_trt_plugins.so with CMake, check its TensorRT glue on the host (no GPU, no libnvinfer).

Needs the TensorRT headers, which no package here provides: point EDGEDIFF_TENSORRT_INCLUDE at a
folder with NvInferRuntime.h (for example the include/ folder of a TensorRT 10.3 tarball or of
the TensorRT OSS tree at tag v10.3.0). Skipped otherwise. plugin_glue_check.cpp exercises creators,
fields, supportsFormatCombination, output types and shapes (with a fake IExprBuilder),
configurePlugin, workspace size, serialization and clone; enqueue needs a GPU and TensorRT.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from edgediff_export.trt.build import PLUGIN_LIBRARY_NAME, plugin_sources_dir

HARNESS = Path(__file__).resolve().parent / "plugin_glue_check.cpp"


def _tools() -> tuple[Path, str]:
    include = os.environ.get("EDGEDIFF_TENSORRT_INCLUDE")
    if not include or not (Path(include) / "NvInferRuntime.h").is_file():
        pytest.skip(
            "TensorRT headers not available: set EDGEDIFF_TENSORRT_INCLUDE to a folder with NvInferRuntime.h"
        )
    for tool in ("cmake", "g++"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    nvcc = shutil.which("nvcc") or (
        "/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None
    )
    if nvcc is None:
        pytest.skip("nvcc (CUDA toolkit) is not installed")
    return Path(include), nvcc


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_plugin_library_builds_and_its_glue_behaves(tmp_path):
    include, nvcc = _tools()
    build_dir = tmp_path / "build"
    _run(
        [
            "cmake",
            "-S",
            str(plugin_sources_dir()),
            "-B",
            str(build_dir),
            "-DCMAKE_BUILD_TYPE=Release",
            "-DCMAKE_CUDA_ARCHITECTURES=87",
            f"-DCMAKE_CUDA_COMPILER={nvcc}",
            f"-DTENSORRT_ROOT={include.parent}",
        ]
    )
    _run(["cmake", "--build", str(build_dir), "-j", "2"])
    lib = build_dir / PLUGIN_LIBRARY_NAME
    assert lib.is_file()
    exported = _run(["nm", "-D", "--defined-only", str(lib)]).stdout.split()
    assert "getCreators" in exported and "setLoggerFinder" in exported

    candidates = [Path(nvcc).resolve().parent.parent / "include", Path("/usr/local/cuda/include")]
    candidates += [Path(os.environ[v]) / "include" for v in ("CUDA_HOME", "CUDA_PATH") if v in os.environ]
    cuda_include = next((p for p in candidates if (p / "cuda_runtime_api.h").is_file()), None)
    if cuda_include is None:
        pytest.skip("CUDA headers (cuda_runtime_api.h) not found")
    harness = tmp_path / "plugin_glue_check"
    _run(
        [
            "g++",
            "-std=c++17",
            "-isystem",
            str(include),
            "-isystem",
            str(cuda_include),
            str(HARNESS),
            "-ldl",
            "-o",
            str(harness),
        ]
    )
    proc = _run([str(harness), str(lib)])
    assert proc.stdout.strip().endswith("0 failed"), proc.stdout
