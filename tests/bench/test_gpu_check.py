"""gpu_check.py on the CPU: its import, arguments and flow run against a numpy emulation of the kernels.

What a GPU adds is only the kernels' own arithmetic; everything the script does around them
(case data, argument order and types, launch geometry, comparison, exit status) runs here, so the
device time goes to the kernels and not to a typo. The real run is test_gpu_kernels.py (gpu mark)
and ``python3 bench/gpu_check.py`` on a CUDA machine.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.export.trt.fake_cupy import KERNELS_CU, make_fake_cupy, parse_kernel_signatures

GPU_CHECK = KERNELS_CU.parents[4] / "bench" / "gpu_check.py"


def _load_gpu_check():
    """Import by path, as a standalone script is (registered first: dataclasses look the module up)."""
    name = "edgediff_gpu_check_under_test"
    spec = importlib.util.spec_from_file_location(name, GPU_CHECK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def gc():
    return _load_gpu_check()


def test_imports_without_cupy_and_exits_2_at_the_cupy_import(tmp_path):
    """Run the way a user would (python3 path/to/gpu_check.py), with cupy missing: stops at the import."""
    proc = subprocess.run(
        [sys.executable, str(GPU_CHECK), "--skip-nvcc"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    if "cupy" in sys.modules or importlib.util.find_spec("cupy") is not None:
        pytest.skip("cupy is installed here: the GPU tests cover the script")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "cupy is not importable" in proc.stdout


def test_every_launch_matches_the_cuda_signatures(gc):
    """Argument count, pointer dtypes and scalar types of each case against the .cu's extern "C" kernels."""
    signatures = parse_kernel_signatures(KERNELS_CU.read_text())
    assert set(signatures) == {
        "edgediff_rbl_channel_map",
        "edgediff_rbl_linear_f32",
        "edgediff_rbl_linear_f16",
        "edgediff_rbl_conv2d_f32",
        "edgediff_rbl_conv2d_f16",
    }
    assert [p for _, p in signatures["edgediff_rbl_linear_f32"]][:3] == ["x", "wq", "w_scale"]
    runner = gc.KernelRunner(make_fake_cupy())
    for case in [*gc.LINEAR_CASES, *gc.CONV_CASES]:
        run = runner.prepare(
            case,
            runner.upload(
                gc.make_linear_inputs(case) if isinstance(case, gc.LinearCase) else gc.make_conv_inputs(case)
            ),
        )
        y = run()  # FakeKernel checks the arguments against the signatures, then emulates
        assert np.all(np.isfinite(y)), case.name


def test_constants_are_read_from_the_header(gc):
    consts = gc.kernel_constants()
    assert consts["BM"] == 64 and consts["BN"] == 64 and consts["LINEAR_THREADS"] == 256
    assert consts["CONV_THREADS"] == 256 and consts["CONV_CHUNK"] == 2048 and consts["MAP_THREADS"] == 256
    source = gc.rtc_source()
    assert '#include "residual_binary_kernels.cuh"' not in source and "#pragma once" not in source
    assert "#define EDGEDIFF_RBL_BM 64" in source


def test_quick_run_passes_on_the_emulated_kernels(gc, monkeypatch, capsys, tmp_path):
    calls: list[str] = []
    monkeypatch.setitem(sys.modules, "cupy", make_fake_cupy(calls))
    out_json = tmp_path / "out" / "gpu_check.json"
    assert gc.main(["--quick", "--skip-nvcc", "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "FAIL" not in text
    assert text.count("PASS") >= len(gc.LINEAR_CASES) + len(gc.CONV_CASES)
    assert "device: FakeGPU (sm_90)" in text
    assert calls.count("edgediff_rbl_channel_map") == len(gc.LINEAR_CASES) + len(gc.CONV_CASES)
    assert '"passed": true' in out_json.read_text()


def test_a_wrong_kernel_fails_the_check(gc, monkeypatch, capsys):
    """If the device computed something else, the script must say FAIL and exit 1."""
    import tests.export.trt.fake_cupy as fake

    original = fake.emulate

    def off_by_one_channel(name, grid, block, args):
        original(name, grid, block, args)
        if name == "edgediff_rbl_channel_map" and int(args["num_residual"]) > 1:
            cmap = args["chan_map"]
            used = np.nonzero(cmap >= 0)[0]
            cmap[used[0]], cmap[used[1]] = cmap[used[1]], cmap[used[0]]  # swap two residual rows

    monkeypatch.setattr(fake, "emulate", off_by_one_channel)
    monkeypatch.setitem(sys.modules, "cupy", make_fake_cupy())
    assert gc.main(["--quick", "--skip-nvcc"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_timing_table_on_small_shapes(gc, capsys):
    runner = gc.KernelRunner(make_fake_cupy())
    rows = [
        gc.time_case(runner, gc.LinearCase("lin", (32, 24), 16, 4), warmup=1, iters=2),
        gc.time_case(
            runner,
            gc.ConvCase("conv", (2, 3, 6, 6), 5, (3, 3), 2, pads=(1, 1, 1, 1), dtype="float16"),
            warmup=1,
            iters=2,
        ),
    ]
    gc._print_timings(rows)
    text = capsys.readouterr().out
    assert "cupy.matmul(X, W_dense^T)" in text and "im2col not timed" in text
    assert rows[0].gflop == pytest.approx(2 * 32 * 24 * 16 / 1e9)
    assert rows[1].gflop == pytest.approx(2 * (2 * 6 * 6) * 27 * 5 / 1e9)


def test_im2col_matches_the_reference_conv(gc):
    case = gc.ConvCase("c", (2, 3, 7, 5), 4, (3, 2), 2, strides=(2, 1), pads=(1, 0, 2, 1), dilations=(2, 1))
    inputs = gc.make_conv_inputs(case)
    ref = gc.load_numpy_ref()
    dense = ref.dense_weight(
        inputs["wq"],
        inputs["w_scale"],
        inputs["w_zero"],
        inputs["signs"],
        inputs["alpha"],
        inputs["channels"],
    )
    cols = gc._im2col(inputs["x"].astype(np.float64), case)
    ho, wo = gc.conv_output_hw(case)
    got = (cols @ dense.reshape(4, -1).T + inputs["bias"]).reshape(2, ho, wo, 4).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, gc.reference(case, inputs), rtol=1e-10, atol=1e-10)


def test_nvcc_step_runs_here(gc):
    status, detail = gc.nvcc_compile("sm_90a")
    if status == "SKIP":
        pytest.skip(detail)
    assert status == "PASS", detail


def test_script_is_standalone():
    """Only numpy and the standard library at import time (cupy inside main, numpy_ref by path)."""
    code = (
        "import sys, importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('g', {str(GPU_CHECK)!r})\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['g'] = m; spec.loader.exec_module(m)\n"
        "names = ('cupy', 'torch', 'tensorrt', 'edgediff', 'edgediff_export')\n"
        "bad = [n for n in names if n in sys.modules]\n"
        "print(bad)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=Path(GPU_CHECK).parent
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
