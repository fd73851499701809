"""A CPU stand-in for the part of CuPy that gpu_check.py uses, with the CUDA kernels emulated in numpy.

The emulation follows the kernels' own addressing (signs read as bytes with an element stride,
channels as int32/int64, the per-channel map, conv padding given only as top/left plus the output
size), and checks every launch against the extern "C" signatures parsed from the .cu: argument
count, pointer dtypes, scalar numpy types, and that the grid covers the output. So a CPU test
catches argument-order, dtype and launch-geometry bugs before the script reaches a GPU.
"""

from __future__ import annotations

import re
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

KERNELS_CU = (
    Path(__file__).resolve().parents[3]
    / "export"
    / "edgediff_export"
    / "trt"
    / "plugin"
    / "residual_binary_kernels.cu"
)

# C parameter type -> accepted numpy dtypes (pointers) or the numpy scalar type (by value).
POINTER_DTYPES = {
    "const float*": {np.dtype(np.float32)},
    "float*": {np.dtype(np.float32)},
    "const unsigned short*": {np.dtype(np.float16)},
    "unsigned short*": {np.dtype(np.float16)},
    "const signed char*": {np.dtype(np.int8)},
    "const unsigned char*": {np.dtype(np.uint8), np.dtype(np.int8), np.dtype(np.int32), np.dtype(np.int64)},
    "const int*": {np.dtype(np.int32)},
    "int*": {np.dtype(np.int32)},
}
SCALAR_TYPES = {"int": np.int32, "long long": np.int64, "float": np.float32}


def parse_kernel_signatures(source: str) -> dict[str, list[tuple[str, str]]]:
    """{kernel name: [(C type, parameter name), ...]} of every extern "C" __global__ function."""
    pattern = re.compile(r'extern "C" __global__ void (?:__launch_bounds__\(\w+\) )?(\w+)\(([^)]*)\)', re.S)
    out: dict[str, list[tuple[str, str]]] = {}
    for match in pattern.finditer(source):
        params = []
        for raw in match.group(2).split(","):
            words = " ".join(raw.split())
            ctype, name = words.rsplit(" ", 1)
            if name.startswith("*"):
                ctype, name = ctype + "*", name[1:]
            params.append((ctype.replace(" *", "*"), name))
        out[match.group(1)] = params
    return out


def check_args(name: str, signature: list[tuple[str, str]], args: tuple[Any, ...]) -> dict[str, Any]:
    """Arguments by parameter name, after checking them against the C signature."""
    if len(args) != len(signature):
        raise TypeError(f"{name}: {len(args)} arguments for {len(signature)} parameters")
    named = {}
    for (ctype, pname), value in zip(signature, args, strict=True):
        if ctype.endswith("*"):
            if not isinstance(value, np.ndarray):
                raise TypeError(f"{name}.{pname}: expected an array for {ctype}, got {type(value).__name__}")
            if value.dtype not in POINTER_DTYPES[ctype]:
                raise TypeError(f"{name}.{pname}: {value.dtype} array for {ctype}")
        elif type(value) is not SCALAR_TYPES[ctype]:
            raise TypeError(
                f"{name}.{pname}: {type(value).__name__} for {ctype}, want {SCALAR_TYPES[ctype].__name__}"
            )
        named[pname] = value
    return named


def _packed_signs(a: dict[str, Any], num_residual: int) -> np.ndarray:
    """[K, sign_row_bytes] bytes, read as the kernel does: byte (k*row + b) * elem_bytes (little-endian)."""
    raw = np.ascontiguousarray(a["signs"]).view(np.uint8).reshape(-1)
    row, elem = int(a["sign_row_bytes"]), int(a["signs_elem_bytes"])
    idx = (np.arange(num_residual)[:, None] * row + np.arange(row)[None, :]) * elem
    return raw[idx] if num_residual else np.zeros((0, row), np.uint8)


def _dense_weight(a: dict[str, Any], cout: int, row_len: int) -> np.ndarray:
    """W[c, j] = scale*(q - zero) + (k >= 0 ? alpha[k]*sign : 0), float64, from the kernel arguments."""
    q = a["wq"].reshape(cout, row_len).astype(np.float64)
    w = a["w_scale"].astype(np.float64)[:, None] * (q - a["w_zero"].astype(np.float64)[:, None])
    cmap = a["chan_map"]
    num_residual = int(cmap.max()) + 1 if cmap.size and cmap.max() >= 0 else 0
    packed = _packed_signs(a, num_residual)
    bits = np.unpackbits(packed, axis=1, bitorder="little")[:, :row_len].astype(np.float64) * 2 - 1
    for c in np.nonzero(cmap >= 0)[0]:
        k = int(cmap[c])
        w[c] += float(a["alpha"][k]) * bits[k]
    return w


def _bias(a: dict[str, Any], cout: int) -> np.ndarray:
    return a["bias"].astype(np.float64)[:cout] if int(a["has_bias"]) else np.zeros(cout)


def emulate(name: str, grid: tuple[int, ...], block: tuple[int, ...], a: dict[str, Any]) -> None:
    """Run kernel `name` on host arrays, writing its output in place."""
    if name == "edgediff_rbl_channel_map":
        assert grid == (1,), "the channel map kernel runs as one block"
        k, cout = int(a["num_residual"]), int(a["cout"])
        dtype = {4: "<i4", 8: "<i8"}[int(a["channels_elem_bytes"])]
        chans = np.ascontiguousarray(a["channels"]).view(np.uint8).view(dtype)[:k]
        cmap = a["chan_map"]
        cmap[:cout] = -1
        for i, c in enumerate(chans):
            if 0 <= c < cout:
                cmap[c] = i
        return
    if name.startswith("edgediff_rbl_linear_"):
        rows, cin, cout = int(a["rows"]), int(a["cin"]), int(a["cout"])
        assert grid[0] * 64 >= rows and grid[1] * 64 >= cout and block == (256,), (grid, block)
        x = a["x"].reshape(rows, cin).astype(np.float64)
        y = x @ _dense_weight(a, cout, cin).T + _bias(a, cout)
        a["y"].reshape(rows, cout)[...] = y.astype(a["y"].dtype)
        return
    if name.startswith("edgediff_rbl_conv2d_"):
        g = {
            k: int(a[k])
            for k in (
                "cin",
                "in_h",
                "in_w",
                "cout",
                "out_h",
                "out_w",
                "kh",
                "kw",
                "sh",
                "sw",
                "pt",
                "pl",
                "dh",
                "dw",
                "group",
            )
        }
        n = a["x"].shape[0]
        assert grid[0] * block[0] >= g["out_h"] * g["out_w"] and grid[1:] == (g["cout"], n), (grid, block)
        cin_pg = g["cin"] // g["group"]
        w = _dense_weight(a, g["cout"], cin_pg * g["kh"] * g["kw"]).reshape(
            g["cout"], cin_pg, g["kh"], g["kw"]
        )
        x = a["x"].reshape(n, g["cin"], g["in_h"], g["in_w"]).astype(np.float64)
        # The kernel zero-pads without limit below/right: pad generously, then crop to out_h x out_w.
        pb = g["sh"] * g["out_h"] + g["dh"] * g["kh"]
        pr = g["sw"] * g["out_w"] + g["dw"] * g["kw"]
        xp = np.pad(x, ((0, 0), (0, 0), (g["pt"], pb), (g["pl"], pr)))
        out = np.zeros((n, g["cout"], g["out_h"], g["out_w"]))
        cout_pg = g["cout"] // g["group"]
        for c in range(g["cout"]):
            ci0 = (c // cout_pg) * cin_pg
            for dy in range(g["kh"]):
                for dx in range(g["kw"]):
                    y0, x0 = dy * g["dh"], dx * g["dw"]
                    patch = xp[
                        :,
                        ci0 : ci0 + cin_pg,
                        y0 : y0 + g["sh"] * g["out_h"] : g["sh"],
                        x0 : x0 + g["sw"] * g["out_w"] : g["sw"],
                    ]
                    out[:, c] += np.tensordot(patch, w[c, :, dy, dx], axes=([1], [0]))
        out += _bias(a, g["cout"]).reshape(1, -1, 1, 1)
        a["y"].reshape(out.shape)[...] = out.astype(a["y"].dtype)
        return
    raise NotImplementedError(name)


# executor(name, grid, block, named args, signature): runs one launch; default: `emulate` (numpy).
Executor = Callable[[str, tuple[int, ...], tuple[int, ...], dict[str, Any], list[tuple[str, str]]], None]


def _numpy_executor(
    name: str,
    grid: tuple[int, ...],
    block: tuple[int, ...],
    args: dict[str, Any],
    signature: list[tuple[str, str]],
) -> None:
    emulate(name, grid, block, args)


class FakeKernel:
    def __init__(
        self, name: str, signature: list[tuple[str, str]], log: list[str], executor: Executor | None = None
    ) -> None:
        self.name, self.signature, self.log = name, signature, log
        self.executor = executor or _numpy_executor

    def __call__(
        self, grid: tuple[int, ...], block: tuple[int, ...], args: tuple[Any, ...], shared_mem: int = 0
    ) -> None:
        self.log.append(self.name)
        self.executor(
            self.name,
            tuple(int(v) for v in grid),
            tuple(int(v) for v in block),
            check_args(self.name, self.signature, args),
            self.signature,
        )


class FakeRawModule:
    def __init__(
        self,
        code: str,
        options: tuple[str, ...] = (),
        log: list[str] | None = None,
        executor: Executor | None = None,
    ) -> None:
        assert "#include" not in code.split("#if !defined(__CUDACC_RTC__)")[0], (
            "device part must include nothing"
        )
        assert "-std=c++17" in options
        self.signatures = parse_kernel_signatures(code)
        self.log = log if log is not None else []
        self.executor = executor

    def get_function(self, name: str) -> FakeKernel:
        if name not in self.signatures:
            raise KeyError(f'no extern "C" kernel {name!r} in the module')
        return FakeKernel(name, self.signatures[name], self.log, self.executor)


class _Event:
    def record(self) -> None:
        pass

    def synchronize(self) -> None:
        pass


def make_fake_cupy(log: list[str] | None = None, executor: Executor | None = None) -> types.ModuleType:
    """A module object to put in sys.modules['cupy'] (kernels run by `executor`, default numpy)."""
    calls: list[str] = log if log is not None else []
    cp = types.ModuleType("cupy")
    cp.__version__ = "fake"
    cp.asarray = lambda a, dtype=None: np.array(a, dtype=dtype, copy=True)
    cp.asnumpy = lambda a: np.asarray(a)
    cp.empty = lambda shape, dtype=np.float32: np.full(
        shape, np.nan if np.dtype(dtype).kind == "f" else -7, dtype=dtype
    )
    cp.matmul = np.matmul
    cp.RawModule = lambda code, options=(): FakeRawModule(code, options, calls, executor)
    runtime = types.SimpleNamespace(
        getDevice=lambda: 0, getDeviceProperties=lambda dev: {"name": b"FakeGPU", "major": 9, "minor": 0}
    )
    cp.cuda = types.SimpleNamespace(Event=_Event, get_elapsed_time=lambda start, end: 1.0, runtime=runtime)
    return cp
