#!/usr/bin/env python3
"""GPU check of the binary-residual CUDA kernels, for a CUDA machine with CuPy (no TensorRT needed).

Run from the repository root:

    python3 bench/gpu_check.py [--json OUT.json] [--quick] [--skip-timing] [--skip-nvcc]

1. compiles ``export/edgediff_export/trt/plugin/residual_binary_kernels.cu`` with
   ``nvcc -arch=sm_90a -c`` (proves the plugin's kernel file builds for Hopper; SKIP if nvcc is
   not found);
2. compiles the same file with CuPy's RawModule (NVRTC, ``-std=c++17``) and runs correctness cases
   against ``numpy_ref.py`` (linear fp32/fp16, conv with stride/padding/dilation/groups, K = 0,
   the INT32 sign/channel storage TensorRT's ONNX parser produces), printing max abs / rel error
   and PASS/FAIL per case;
3. times the kernels at realistic sizes against a CuPy matmul baseline on the dequantized weight.

Exit status: 0 all passed, 1 a correctness case or the nvcc compile failed, 2 CuPy missing.
It needs no install and no torch: it imports numpy, cupy (inside ``main``) and the numpy
reference ``edgediff_export.trt.numpy_ref`` from this checkout (which imports only numpy and the
sign layout ``edgediff_export.signs``).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PLUGIN_DIR = REPO / "export" / "edgediff_export" / "trt" / "plugin"
KERNELS_CU = PLUGIN_DIR / "residual_binary_kernels.cu"
KERNELS_CUH = PLUGIN_DIR / "residual_binary_kernels.cuh"

TOLERANCE = {"float32": 2e-5, "float16": 2e-3}  # max |err| / max |ref|


@functools.lru_cache(maxsize=1)
def load_numpy_ref() -> ModuleType:
    """``edgediff_export.trt.numpy_ref``, from this checkout when edgediff is not installed."""
    for path in (REPO, REPO / "export"):  # `python3 bench/gpu_check.py` puts only bench/ on the path
        if str(path) not in sys.path:
            sys.path.append(str(path))
    return importlib.import_module("edgediff_export.trt.numpy_ref")


def kernel_constants() -> dict[str, int]:
    """The #define EDGEDIFF_RBL_* integers of the .cuh (tile sizes, thread counts)."""
    text = KERNELS_CUH.read_text()
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"#define EDGEDIFF_RBL_(\w+)\s+(\d+)", text)}


def rtc_source() -> str:
    """The .cu with the .cuh pasted in, so NVRTC needs no include path (and CuPy's cache key sees it)."""
    header = "\n".join(
        line for line in KERNELS_CUH.read_text().splitlines() if line.strip() != "#pragma once"
    )
    source = KERNELS_CU.read_text()
    include = '#include "residual_binary_kernels.cuh"'
    if include not in source:
        raise RuntimeError(f"{KERNELS_CU.name} no longer includes {KERNELS_CUH.name}")
    return source.replace(include, header)


# ---- cases -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinearCase:
    name: str
    x_shape: tuple[int, ...]
    cout: int
    k: int
    bias: bool = True
    dtype: str = "float32"
    signs_dtype: str = "uint8"  # "int32": the storage TensorRT's ONNX parser gives a UINT8 initializer
    channels_dtype: str = "int64"
    seed: int = 0


@dataclass(frozen=True)
class ConvCase:
    name: str
    x_shape: tuple[int, int, int, int]
    cout: int
    kernel: tuple[int, int]
    k: int
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: tuple[int, int] = (1, 1)
    group: int = 1
    bias: bool = True
    dtype: str = "float32"
    signs_dtype: str = "uint8"
    channels_dtype: str = "int64"
    seed: int = 0


BIG_LINEAR = LinearCase("linear_f32_4096x640x640_K64", (4096, 640), 640, 64)
BIG_LINEAR_F16 = LinearCase("linear_f16_4096x640x640_K64", (4096, 640), 640, 64, dtype="float16")
BIG_CONV = ConvCase("conv_f32_64x64x16x16_3x3_K8", (64, 64, 16, 16), 64, (3, 3), 8, pads=(1, 1, 1, 1))
BIG_CONV_F16 = ConvCase(
    "conv_f16_64x64x16x16_3x3_K8", (64, 64, 16, 16), 64, (3, 3), 8, pads=(1, 1, 1, 1), dtype="float16"
)

LINEAR_CASES: tuple[LinearCase, ...] = (
    LinearCase("linear_f32_cin45_bias", (2, 19, 45), 70, 9, seed=1),
    LinearCase("linear_f32_K0_nobias", (130, 64), 33, 0, bias=False, seed=2),
    LinearCase(
        "linear_f32_int32_storage", (67, 100), 129, 40, signs_dtype="int32", channels_dtype="int32", seed=3
    ),
    LinearCase("linear_f16_bias", (100, 200), 96, 12, dtype="float16", seed=4),
    LinearCase("linear_f32_all_residual_cin8", (5, 8), 3, 3, seed=5),
    LinearCase("linear_f32_cin1", (7, 1), 5, 2, seed=6),
)
CONV_CASES: tuple[ConvCase, ...] = (
    ConvCase(
        "conv_f32_stride_pad_dil_group2",
        (2, 6, 11, 13),
        8,
        (3, 2),
        3,
        strides=(2, 1),
        pads=(1, 0, 2, 1),
        dilations=(2, 1),
        group=2,
        seed=11,
    ),
    ConvCase("conv_f16_3x3_pad1", (1, 5, 9, 9), 7, (3, 3), 2, pads=(1, 1, 1, 1), dtype="float16", seed=12),
    ConvCase(
        "conv_f32_depthwise_dil2_int32_storage",
        (2, 4, 10, 10),
        4,
        (3, 3),
        4,
        pads=(2, 2, 2, 2),
        dilations=(2, 2),
        group=4,
        bias=False,
        signs_dtype="int32",
        channels_dtype="int32",
        seed=13,
    ),
    ConvCase("conv_f32_1x1_stride2_K0", (3, 16, 7, 7), 24, (1, 1), 0, strides=(2, 2), seed=14),
    ConvCase("conv_f32_row2700_two_chunks", (1, 300, 8, 8), 4, (3, 3), 2, pads=(1, 1, 1, 1), seed=15),
)
BIG_CASES: tuple[LinearCase | ConvCase, ...] = (BIG_LINEAR, BIG_LINEAR_F16, BIG_CONV, BIG_CONV_F16)


def _weights(
    rng: np.random.Generator,
    cout: int,
    row_shape: tuple[int, ...],
    k: int,
    bias: bool,
    signs_dtype: str,
    channels_dtype: str,
) -> dict[str, np.ndarray]:
    ref = load_numpy_ref()
    row_len = int(np.prod(row_shape))
    signs_pm1 = rng.choice(np.array([-1.0, 1.0]), size=(k, row_len))
    packed = ref.pack_signs(signs_pm1) if k else np.zeros((0, (row_len + 7) // 8), np.uint8)
    inputs = {
        "wq": rng.integers(-8, 8, size=(cout, *row_shape)).astype(np.int8),
        "w_scale": rng.uniform(0.01, 0.05, size=cout).astype(np.float32),
        "w_zero": rng.integers(-2, 3, size=cout).astype(np.int8),
        "signs": packed.astype(np.dtype(signs_dtype)),
        "alpha": rng.uniform(0.005, 0.02, size=k).astype(np.float32),
        "channels": np.sort(rng.choice(cout, size=k, replace=False)).astype(np.dtype(channels_dtype)),
    }
    if bias:
        inputs["bias"] = rng.normal(0.0, 0.1, size=cout).astype(np.float32)
    return inputs


def make_linear_inputs(case: LinearCase) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(case.seed)
    inputs = _weights(
        rng, case.cout, (case.x_shape[-1],), case.k, case.bias, case.signs_dtype, case.channels_dtype
    )
    inputs["x"] = rng.standard_normal(case.x_shape).astype(np.dtype(case.dtype))
    return inputs


def make_conv_inputs(case: ConvCase) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(case.seed)
    cin = case.x_shape[1]
    inputs = _weights(
        rng,
        case.cout,
        (cin // case.group, *case.kernel),
        case.k,
        case.bias,
        case.signs_dtype,
        case.channels_dtype,
    )
    inputs["x"] = rng.standard_normal(case.x_shape).astype(np.dtype(case.dtype))
    return inputs


def reference(case: LinearCase | ConvCase, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """float64 oracle output for one case."""
    ref = load_numpy_ref()
    args = (
        inputs["x"],
        inputs["wq"],
        inputs["w_scale"],
        inputs["w_zero"],
        inputs["signs"],
        inputs["alpha"],
        inputs["channels"],
        inputs.get("bias"),
    )
    if isinstance(case, LinearCase):
        return ref.residual_binary_linear(*args, out_dtype=np.float64)
    return ref.residual_binary_conv(
        *args,
        strides=case.strides,
        pads=case.pads,
        dilations=case.dilations,
        group=case.group,
        out_dtype=np.float64,
    )


def conv_output_hw(case: ConvCase) -> tuple[int, int]:
    ref = load_numpy_ref()
    _, _, h, w = case.x_shape
    (kh, kw), (sh, sw), (dh, dw) = case.kernel, case.strides, case.dilations
    pt, pl, pb, pr = case.pads
    return (ref.conv_output_size(h, kh, sh, pt, pb, dh), ref.conv_output_size(w, kw, sw, pl, pr, dw))


# ---- kernel arguments (order and C types of the extern "C" signatures in the .cu) -------------


def channel_map_args(d: dict[str, Any], cout: int, chan_map: Any) -> tuple[Any, ...]:
    k = int(d["channels"].shape[0])
    return (d["channels"], np.int32(d["channels"].dtype.itemsize), np.int32(k), np.int32(cout), chan_map)


def _weight_args(d: dict[str, Any], chan_map: Any) -> tuple[Any, ...]:
    signs = d["signs"]
    bias = d.get("bias")
    return (
        d["wq"],
        d["w_scale"],
        d["w_zero"],
        signs,
        np.int32(signs.dtype.itemsize),
        np.int32(signs.shape[1]),
        d["alpha"],
        chan_map,
        bias if bias is not None else d["bias_dummy"],
        np.int32(bias is not None),
    )


def linear_args(d: dict[str, Any], chan_map: Any, y: Any) -> tuple[Any, ...]:
    x = d["x"]
    cin = int(x.shape[-1])
    rows = int(np.prod(x.shape[:-1]))
    cout = int(d["wq"].shape[0])
    return (x, *_weight_args(d, chan_map), y, np.int64(rows), np.int32(cin), np.int32(cout))


def conv_args(case: ConvCase, d: dict[str, Any], chan_map: Any, y: Any) -> tuple[Any, ...]:
    _, cin, h, w = case.x_shape
    ho, wo = conv_output_hw(case)
    (kh, kw), (sh, sw), (dh, dw) = case.kernel, case.strides, case.dilations
    pt, pl = case.pads[0], case.pads[1]
    ints = (cin, h, w, case.cout, ho, wo, kh, kw, sh, sw, pt, pl, dh, dw, case.group)
    return (d["x"], *_weight_args(d, chan_map), y, *(np.int32(v) for v in ints))


def kernel_name(case: LinearCase | ConvCase) -> str:
    op = "linear" if isinstance(case, LinearCase) else "conv2d"
    return f"edgediff_rbl_{op}_{'f16' if case.dtype == 'float16' else 'f32'}"


def launch_geometry(
    case: LinearCase | ConvCase, consts: dict[str, int]
) -> tuple[tuple[int, ...], tuple[int]]:
    """(grid, block) of the main kernel, as the host launchers in the .cu compute them."""
    if isinstance(case, LinearCase):
        rows = int(np.prod(case.x_shape[:-1]))
        grid = (math.ceil(rows / consts["BM"]), math.ceil(case.cout / consts["BN"]))
        return grid, (consts["LINEAR_THREADS"],)
    ho, wo = conv_output_hw(case)
    threads = consts["CONV_THREADS"]
    return (math.ceil(ho * wo / threads), case.cout, case.x_shape[0]), (threads,)


# ---- running on the device ---------------------------------------------------------------------


class KernelRunner:
    """Compiled module + launches, one case at a time (cp: the cupy module or a stand-in)."""

    def __init__(self, cp: Any, options: Sequence[str] = ("-std=c++17",)) -> None:
        self.cp = cp
        self.consts = kernel_constants()
        self.module = cp.RawModule(code=rtc_source(), options=tuple(options))

    def upload(self, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        d = {name: self.cp.asarray(value) for name, value in inputs.items()}
        d["bias_dummy"] = self.cp.asarray(np.zeros(1, np.float32))
        return d

    def prepare(self, case: LinearCase | ConvCase, d: dict[str, Any]) -> Callable[[], Any]:
        """A no-argument callable that runs the op once (channel map + main kernel) and returns Y."""
        cp = self.cp
        cout = case.cout
        chan_map = cp.empty((cout,), dtype=np.int32)
        if isinstance(case, LinearCase):
            y = cp.empty((*case.x_shape[:-1], cout), dtype=np.dtype(case.dtype))
            args = linear_args(d, chan_map, y)
        else:
            y = cp.empty((case.x_shape[0], cout, *conv_output_hw(case)), dtype=np.dtype(case.dtype))
            args = conv_args(case, d, chan_map, y)
        map_fn = self.module.get_function("edgediff_rbl_channel_map")
        main_fn = self.module.get_function(kernel_name(case))
        map_args = channel_map_args(d, cout, chan_map)
        grid, block = launch_geometry(case, self.consts)

        def run() -> Any:
            map_fn((1,), (self.consts["MAP_THREADS"],), map_args)
            main_fn(grid, block, args)
            return y

        return run

    def time_ms(self, fn: Callable[[], Any], warmup: int = 3, iters: int = 20) -> float:
        cp = self.cp
        for _ in range(warmup):
            fn()
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        return float(cp.cuda.get_elapsed_time(start, end)) / iters


@dataclass
class CaseResult:
    name: str
    max_abs: float
    max_rel: float
    tolerance: float
    passed: bool
    error: str = ""


def check_case(runner: KernelRunner, case: LinearCase | ConvCase) -> CaseResult:
    inputs = make_linear_inputs(case) if isinstance(case, LinearCase) else make_conv_inputs(case)
    tol = TOLERANCE[case.dtype]
    try:
        got = np.asarray(runner.cp.asnumpy(runner.prepare(case, runner.upload(inputs))())).astype(np.float64)
    except Exception as exc:  # a compile/launch error is a failed case, not a crash of the whole check
        return CaseResult(case.name, math.inf, math.inf, tol, False, f"{type(exc).__name__}: {exc}")
    want = reference(case, inputs)
    if got.shape != want.shape:
        return CaseResult(case.name, math.inf, math.inf, tol, False, f"shape {got.shape} != {want.shape}")
    if not np.all(np.isfinite(got)):
        return CaseResult(case.name, math.inf, math.inf, tol, False, "non-finite output")
    max_abs = float(np.max(np.abs(got - want))) if got.size else 0.0
    max_rel = max_abs / max(float(np.max(np.abs(want))) if want.size else 0.0, 1e-12)
    return CaseResult(case.name, max_abs, max_rel, tol, max_rel <= tol)


@dataclass
class TimingRow:
    name: str
    ours_ms: float
    baseline_ms: float
    baseline: str
    gflop: float
    extra: dict[str, Any] = field(default_factory=dict)


def _im2col(x: np.ndarray, case: ConvCase) -> np.ndarray:
    """[N*Ho*Wo, Cin*kh*kw] columns (group 1 only) for the baseline GEMM."""
    n, cin, _, _ = x.shape
    (kh, kw), (sh, sw), (dh, dw) = case.kernel, case.strides, case.dilations
    pt, pl, pb, pr = case.pads
    ho, wo = conv_output_hw(case)
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    cols = np.empty((n, ho, wo, cin, kh, kw), dtype=x.dtype)
    for dy in range(kh):
        for dx in range(kw):
            patch = xp[
                :, :, dy * dh : dy * dh + sh * (ho - 1) + 1 : sh, dx * dw : dx * dw + sw * (wo - 1) + 1 : sw
            ]
            cols[..., dy, dx] = patch.transpose(0, 2, 3, 1)
    return cols.reshape(n * ho * wo, cin * kh * kw)


def time_case(
    runner: KernelRunner, case: LinearCase | ConvCase, warmup: int = 3, iters: int = 20
) -> TimingRow:
    """Our op (channel map + kernel) vs cupy.matmul with the dense dequantized weight (same dtype as X)."""
    cp = runner.cp
    ref = load_numpy_ref()
    inputs = make_linear_inputs(case) if isinstance(case, LinearCase) else make_conv_inputs(case)
    dense = ref.dense_weight(
        inputs["wq"],
        inputs["w_scale"],
        inputs["w_zero"],
        inputs["signs"],
        inputs["alpha"],
        inputs["channels"],
    )
    dtype = np.dtype(case.dtype)
    ours = runner.prepare(case, runner.upload(inputs))
    w_t = cp.asarray(np.ascontiguousarray(dense.reshape(case.cout, -1).T).astype(dtype))
    if isinstance(case, LinearCase):
        x2 = cp.asarray(inputs["x"].reshape(-1, case.x_shape[-1]))
        baseline_name = "cupy.matmul(X, W_dense^T)"
    else:
        if case.group != 1:
            raise ValueError("the conv baseline supports group=1 only")
        x2 = cp.asarray(_im2col(inputs["x"], case))
        baseline_name = "cupy.matmul(im2col(X), W_dense^T), im2col not timed"
    m, kdim = int(x2.shape[0]), int(x2.shape[1])
    ours_ms = runner.time_ms(ours, warmup, iters)
    base_ms = runner.time_ms(lambda: cp.matmul(x2, w_t), warmup, iters)
    return TimingRow(case.name, ours_ms, base_ms, baseline_name, 2.0 * m * kdim * case.cout / 1e9)


# ---- nvcc --------------------------------------------------------------------------------------


def find_nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for candidate in ("/usr/local/cuda/bin/nvcc", "/usr/local/bin/nvcc"):
        if Path(candidate).exists():
            return candidate
    return None


def nvcc_compile(arch: str = "sm_90a", timeout_s: float = 180.0) -> tuple[str, str]:
    """('PASS' | 'FAIL' | 'SKIP', detail) of `nvcc -std=c++17 -arch=<arch> -c residual_binary_kernels.cu`."""
    nvcc = find_nvcc()
    if nvcc is None:
        return "SKIP", "nvcc not found on PATH or in /usr/local/cuda/bin"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [nvcc, "-std=c++17", f"-arch={arch}", "-c", str(KERNELS_CU), "-o", str(Path(tmp) / "kernels.o")]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return "FAIL", f"timed out after {timeout_s:.0f} s: {' '.join(cmd)}"
        if proc.returncode != 0:
            return "FAIL", (proc.stderr or proc.stdout).strip()[-2000:]
        return "PASS", " ".join(cmd)


# ---- main --------------------------------------------------------------------------------------


def _print_cases(results: Sequence[CaseResult]) -> None:
    print(f"{'case':44s} {'max_abs':>11s} {'max_rel':>11s} {'tol':>8s}  result")
    for r in results:
        print(
            f"{r.name:44s} {r.max_abs:11.3e} {r.max_rel:11.3e} {r.tolerance:8.0e}  "
            f"{'PASS' if r.passed else 'FAIL'}{'  ' + r.error if r.error else ''}"
        )


def _print_timings(rows: Sequence[TimingRow]) -> None:
    print(
        f"{'timing (ms, mean)':44s} {'ours':>9s} {'baseline':>9s} {'ours/base':>9s} "
        f"{'ours GF/s':>10s}  baseline"
    )
    for t in rows:
        ratio = t.ours_ms / t.baseline_ms if t.baseline_ms > 0 else math.inf
        gflops = t.gflop / (t.ours_ms / 1e3) if t.ours_ms > 0 else math.inf
        print(f"{t.name:44s} {t.ours_ms:9.4f} {t.baseline_ms:9.4f} {ratio:9.2f} {gflops:10.1f}  {t.baseline}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    parser.add_argument("--quick", action="store_true", help="skip the large correctness cases and timing")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--skip-nvcc", action="store_true")
    parser.add_argument("--iters", type=int, default=20, help="timed iterations per measurement")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    report: dict[str, Any] = {}
    failed = False

    if args.skip_nvcc:
        nvcc_status, nvcc_detail = "SKIP", "--skip-nvcc"
    else:
        nvcc_status, nvcc_detail = nvcc_compile("sm_90a")
    print(f"nvcc -arch=sm_90a -c residual_binary_kernels.cu: {nvcc_status}\n  {nvcc_detail}")
    report["nvcc_sm_90a"] = {"status": nvcc_status, "detail": nvcc_detail}
    failed |= nvcc_status == "FAIL"

    try:
        import cupy as cp
    except ImportError as exc:
        print(f"cupy is not importable ({exc}); install cupy-cuda13x (or cupy-cuda12x) on a CUDA machine")
        return 2
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.runtime.getDevice())
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    print(f"device: {name} (sm_{props['major']}{props['minor']}), cupy {getattr(cp, '__version__', '?')}")
    report["device"] = name

    t0 = time.perf_counter()
    runner = KernelRunner(cp)
    cases: list[LinearCase | ConvCase] = [*LINEAR_CASES, *CONV_CASES]
    if not args.quick:
        cases.extend(BIG_CASES)
    results = [check_case(runner, case) for case in cases]
    print(f"\ncorrectness vs numpy_ref.py ({time.perf_counter() - t0:.1f} s incl. NVRTC compile):")
    _print_cases(results)
    report["cases"] = [asdict(r) for r in results]
    failed |= not all(r.passed for r in results)

    if not (args.quick or args.skip_timing):
        rows: list[TimingRow] = []
        for case in BIG_CASES:
            try:
                rows.append(time_case(runner, case, iters=args.iters))
            except Exception as exc:  # timing is informative only: report and go on
                print(f"timing {case.name} failed: {type(exc).__name__}: {exc}")
        print()
        _print_timings(rows)
        report["timings"] = [asdict(t) for t in rows]

    elapsed = time.perf_counter() - started
    passed = sum(r.passed for r in results)
    print(
        f"\n{passed}/{len(results)} cases passed, nvcc {nvcc_status}, {elapsed:.1f} s: "
        f"{'FAIL' if failed else 'PASS'}"
    )
    report["passed"] = not failed
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=float))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
