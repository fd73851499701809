"""The CUDA kernels on a GPU through CuPy's RawModule, against numpy_ref (excluded by default: -m gpu).

Same cases as gpu_check.py (linear fp32/fp16, conv with stride/padding/dilation/groups, K = 0,
INT32 sign/channel storage, a conv row longer than one shared-memory chunk, the large timing
shapes). On a CUDA machine: ``python -m pytest -m gpu tests/export/trt``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu

GPU_CHECK = Path(__file__).resolve().parents[3] / "bench" / "gpu_check.py"


def _gpu_check():
    name = "edgediff_gpu_check_for_gpu_tests"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, GPU_CHECK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runner():
    cp = pytest.importorskip("cupy")
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except Exception as exc:  # no driver / no device
        pytest.skip(f"no usable CUDA device: {exc}")
    return _gpu_check().KernelRunner(cp)


def _cases():
    gc = _gpu_check()
    return [*gc.LINEAR_CASES, *gc.CONV_CASES, *gc.BIG_CASES]


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c.name)
def test_kernel_matches_numpy_reference(runner, case):
    result = _gpu_check().check_case(runner, case)
    assert result.passed, (
        f"{case.name}: max_rel {result.max_rel:.3e} > {result.tolerance:.0e} "
        f"(max_abs {result.max_abs:.3e}) {result.error}"
    )
