"""The real fp32 CUDA kernel code, run on the CPU (kernel_host_emulation.cpp), against numpy_ref.

The device part of residual_binary_kernels.cu is compiled with g++ as plain C++: CUDA threads
become std::threads and __syncthreads() a std::barrier. This checks the kernels' indexing, tiling,
shared-memory staging, bit addressing and bounds on a machine with no GPU, through the same
gpu_check.py code path the GPU run uses. fp16 kernels need PTX conversions and are left to the GPU.
"""

from __future__ import annotations

import ctypes
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.export.trt.fake_cupy import KERNELS_CU, make_fake_cupy

HARNESS = Path(__file__).resolve().parent / "kernel_host_emulation.cpp"
GPU_CHECK = KERNELS_CU.parents[4] / "bench" / "gpu_check.py"
CTYPES = {"int": ctypes.c_int32, "long long": ctypes.c_int64, "float": ctypes.c_float}


@pytest.fixture(scope="module")
def emulator(tmp_path_factory) -> ctypes.CDLL:
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed")
    lib = tmp_path_factory.mktemp("emu") / "libkernel_emulation.so"
    cmd = ["g++", "-std=c++20", "-O1", "-pthread", "-shared", "-fPIC", "-Wno-unknown-pragmas",
           f"-I{KERNELS_CU.parent}", str(HARNESS), "-o", str(lib)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "barrier" in proc.stderr:
        pytest.skip("this g++ has no C++20 <barrier>")
    assert proc.returncode == 0, proc.stderr[-3000:]
    dll = ctypes.CDLL(str(lib))
    dll.emu_launch.restype = ctypes.c_int
    return dll


def _executor(dll: ctypes.CDLL):
    def run(
        name: str, grid: tuple[int, ...], block: tuple[int, ...], args: dict[str, Any], signature
    ) -> None:
        keep = []  # ctypes objects must outlive the call
        for ctype, pname in signature:
            value = args[pname]
            if ctype.endswith("*"):
                assert value.flags["C_CONTIGUOUS"], pname
                keep.append(ctypes.c_void_p(value.ctypes.data))
            else:
                keep.append(CTYPES[ctype](value.item()))
        argv = (ctypes.c_void_p * len(keep))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in keep])
        g = (*grid, 1, 1)[:3]
        b = (*block, 1, 1)[:3]
        status = dll.emu_launch(name.encode(), *g, *b, argv)
        assert status == 0, f"{name} is not emulated"

    return run


def _gpu_check():
    name = "edgediff_gpu_check_for_emulation"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, GPU_CHECK)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _fp32_cases():
    gc = _gpu_check()
    return [c for c in (*gc.LINEAR_CASES, *gc.CONV_CASES) if c.dtype == "float32"]


@pytest.mark.parametrize("case", _fp32_cases(), ids=lambda c: c.name)
def test_real_kernel_code_matches_numpy_ref(emulator, case):
    gc = _gpu_check()
    runner = gc.KernelRunner(make_fake_cupy(executor=_executor(emulator)))
    result = gc.check_case(runner, case)
    assert result.passed, (
        f"{case.name}: max_rel {result.max_rel:.3e} (abs {result.max_abs:.3e}) {result.error}"
    )
    assert result.max_rel < 1e-5


def test_partial_tiles_and_many_blocks(emulator):
    """rows and Cout just past a tile edge, Cin past a 16-feature step, 2x3 blocks."""
    gc = _gpu_check()
    case = gc.LinearCase("edges", (65, 17), 65, 7, signs_dtype="int32", seed=21)
    runner = gc.KernelRunner(make_fake_cupy(executor=_executor(emulator)))
    result = gc.check_case(runner, case)
    assert result.passed and result.max_rel < 1e-5, result
    y = runner.prepare(case, runner.upload(gc.make_linear_inputs(case)))()
    assert np.all(np.isfinite(y))
