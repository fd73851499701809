"""The CUDA kernel file compiles with nvcc for Jetson Orin (sm_87) and Hopper (sm_90); nothing runs."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from edgediff_export.trt.build import plugin_sources_dir

KERNELS = plugin_sources_dir() / "residual_binary_kernels.cu"
EXPECTED_KERNELS = {
    "edgediff_rbl_channel_map",
    "edgediff_rbl_linear_f32",
    "edgediff_rbl_linear_f16",
    "edgediff_rbl_conv2d_f32",
    "edgediff_rbl_conv2d_f16",
}


def _nvcc() -> str:
    nvcc = shutil.which("nvcc") or next(
        (p for p in ("/usr/local/cuda/bin/nvcc", "/usr/local/bin/nvcc") if Path(p).exists()), None
    )
    if nvcc is None:
        pytest.skip("nvcc (CUDA toolkit) is not installed on this machine")
    return nvcc


@pytest.mark.parametrize("arch", ["sm_87", "sm_90"])
def test_kernels_compile_with_nvcc(arch, tmp_path):
    nvcc = _nvcc()
    ptx = tmp_path / f"kernels_{arch}.ptx"
    obj = tmp_path / f"kernels_{arch}.o"
    # -c builds device code + the host launchers the plugin uses; -ptx shows the extern "C" names survive.
    for flags, out in ((["-c"], obj), (["-ptx"], ptx)):
        proc = subprocess.run(
            [nvcc, "-std=c++17", f"-arch={arch}", *flags, str(KERNELS), "-o", str(out)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert out.stat().st_size > 0
    entries = set(re.findall(r"\.entry\s+(\w+)\(", ptx.read_text()))
    assert entries == EXPECTED_KERNELS


def test_device_part_is_nvrtc_safe():
    """CuPy compiles the .cu with NVRTC: its device part may include nothing and define no host code."""
    source = KERNELS.read_text()
    device, _, host = source.partition("#if !defined(__CUDACC_RTC__)")
    assert host, "the host launchers must be fenced off from NVRTC"
    includes = re.findall(r"#include\s+(\S+)", device)
    assert includes == ['"residual_binary_kernels.cuh"']
    header = (plugin_sources_dir() / "residual_binary_kernels.cuh").read_text()
    header_device = header.split("#if !defined(__CUDACC_RTC__)")[0]
    assert "#include" not in header_device
    assert "<<<" not in device and "cudaError_t" not in device
