"""Fold ``float weight -> QuantizeLinear -> DequantizeLinear`` into integer initializers.

docs/deployment.md section 11: the dynamo exporter writes weights as float initializers followed by Q -> DQ;
folding the Q into an integer initializer that feeds the DQ directly keeps the outputs identical and
shrinks the file (72 MB -> 19 MB on a 17.7M-parameter UNet). docs/methods.md sections 1.7 and 6.13: a
tensor whose per-channel codes all fit in 4 (or 2) bits is stored in an int4/uint4 (int2/uint2)
container with the same per-axis ``DequantizeLinear``; otherwise it stays int8/uint8.

Container rules (measured with ONNX Runtime 1.32, see docs/export-passes.md):

* int4/uint4 per-axis DQ (opset 21) runs exactly on Conv, Gemm and MatMul weights. DQ -> MatMul is
  fused to ``MatMulNBits``, which is exact only with ``session.qdq_matmulnbits_accuracy_level=0``
  (:func:`edgediff_export.passes.placement.ort_session_options` sets it).
* int2/uint2 DQ (opset 25) runs exactly on Conv and Gemm weights, and on MatMul weights only when the
  output dimension N is a multiple of 4: for other N the ``MatMulNBits(bits=2)`` fusion returns wrong
  numbers. :func:`probe_int2_support` checks this on the installed ONNX Runtime; the fold uses a 2-bit
  container only where the probe says it runs exactly, and 4 bits otherwise.

The chosen container of every folded initializer is recorded in ``metadata_props`` under
``edgediff.weight_container.<initializer name>``. Torch-free (numpy + onnx; onnxruntime only inside
the probe).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgediff_export.errors import ExportError
from edgediff_export.passes._graph import (
    CONTAINER_MIN_OPSET,
    CONTAINER_NAMES,
    INT_RANGES,
    GraphIndex,
    all_names,
    attr,
    default_opset,
    expand_param,
    group_reduce,
    make_int_tensor,
    min_ir_version,
    q_elem_type,
    quantize_linear,
    remove_unused,
    set_metadata,
    unique_name,
)

CONTAINER_KEY = "edgediff.weight_container."
#: Highest opset the fold upgrades a model to on its own (INT2/UINT2 DequantizeLinear).
MAX_FOLD_OPSET = 25
_SIGNED = {8: TensorProto.INT8, 4: TensorProto.INT4, 2: TensorProto.INT2}
_UNSIGNED = {8: TensorProto.UINT8, 4: TensorProto.UINT4, 2: TensorProto.UINT2}
_BITS = {t: b for b, t in [*_SIGNED.items(), *_UNSIGNED.items()]} | {
    TensorProto.INT16: 16,
    TensorProto.UINT16: 16,
}


@dataclass
class FoldResult:
    """What :func:`fold_weights` did: the new model, containers and serialized sizes in bytes."""

    model: onnx.ModelProto
    containers: dict[str, str] = field(default_factory=dict)
    bytes_before: int = 0
    bytes_after: int = 0
    opset_before: int = 0
    opset_after: int = 0

    def summary(self) -> str:
        """One line: sizes, opset and container counts."""
        counts: dict[str, int] = {}
        for c in self.containers.values():
            counts[c] = counts.get(c, 0) + 1
        parts = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "nothing folded"
        return (
            f"folded {len(self.containers)} weights ({parts}); {self.bytes_before / 1e6:.2f} MB -> "
            f"{self.bytes_after / 1e6:.2f} MB; opset {self.opset_before} -> {self.opset_after}"
        )


@dataclass
class _Plan:
    dq_out: str  # output of the DequantizeLinear to rewrite
    weight: str  # the tensor the integer codes replace (float weight or old integer initializer)
    reader: str  # output of the node that reads ``weight`` on this path (the Q, or the DQ itself)
    removable: tuple[str, ...]  # tensors that may become unused
    codes: np.ndarray
    zero: np.ndarray
    elem_type: int
    zero_changed: bool


# --------------------------------------------------------------------------------------------------
# Probe
# --------------------------------------------------------------------------------------------------


def _probe_case(elem_type: int, kind: str, seed: int) -> bool:
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    lo, hi = INT_RANGES[elem_type]
    if kind == "conv":
        wshape, axis, xshape = (6, 3, 3, 3), 0, (1, 3, 5, 5)
    elif kind == "gemm":
        wshape, axis, xshape = (6, 20), 0, (3, 20)
    else:
        n = 8 if kind == "matmul_aligned" else 6
        wshape, axis, xshape = (20, n), 1, (3, 20)
    c = wshape[axis]
    q = rng.integers(lo, hi + 1, size=wshape)
    z = rng.integers(lo, hi + 1, size=c)
    s = rng.uniform(0.5, 1.5, size=c).astype(np.float32)
    x = rng.standard_normal(xshape).astype(np.float32)
    w = ((q - expand_param(z, wshape, axis, 0)) * expand_param(s, wshape, axis, 0)).astype(np.float32)
    if kind == "conv":
        from edgediff_export.ops import reference_conv2d

        ref = reference_conv2d(x, w)
        op = helper.make_node("Conv", ["x", "w"], ["y"])
    elif kind == "gemm":
        ref = x @ w.T
        op = helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)
    else:
        ref = x @ w
        op = helper.make_node("MatMul", ["x", "w"], ["y"])
    inits = [
        make_int_tensor("q", q, elem_type),
        numpy_helper.from_array(s, "s"),
        make_int_tensor("z", z, elem_type),
    ]
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["q", "s", "z"], ["w"], axis=axis), op],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(xshape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(ref.shape))],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 25)])
    model.ir_version = min_ir_version(25)
    ok = True
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        so = ort.SessionOptions()
        so.graph_optimization_level = level
        so.log_severity_level = 3
        so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
        try:
            sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
            y = sess.run(None, {"x": x})[0]
        except Exception:  # noqa: BLE001 - any failure means "does not run"
            return False
        ok = ok and bool(np.allclose(y, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max())))
    return ok


@functools.cache
def probe_2bit_details() -> dict[str, bool]:
    """Run INT2/UINT2 ``DequantizeLinear`` (opset 25) weights through the installed ONNX Runtime.

    Keys ``{int2,uint2}.{conv,gemm,matmul_aligned,matmul_unaligned}``: True when the unoptimized and
    the fully optimized CPU session both match numpy (``matmul_aligned``: N = 8, ``unaligned``: N = 6).
    All False when onnxruntime is missing. Cached per process.
    """
    out: dict[str, bool] = {}
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        available = False
    else:
        available = True
    for name, et in (("int2", TensorProto.INT2), ("uint2", TensorProto.UINT2)):
        for i, kind in enumerate(("conv", "gemm", "matmul_aligned", "matmul_unaligned")):
            out[f"{name}.{kind}"] = available and _probe_case(et, kind, seed=i)
    return out


def probe_int2_support() -> bool:
    """True when ONNX Runtime runs INT2 and UINT2 per-axis ``DequantizeLinear`` exactly on Conv, Gemm
    and MatMul weights (MatMul with N a multiple of 4; see :func:`probe_2bit_details`)."""
    d = probe_2bit_details()
    return all(d[f"{t}.{k}"] for t in ("int2", "uint2") for k in ("conv", "gemm", "matmul_aligned"))


# --------------------------------------------------------------------------------------------------
# Container choice
# --------------------------------------------------------------------------------------------------


def _choose_container(
    codes: np.ndarray,
    zero: np.ndarray,
    axis: int,
    block: int,
    source_type: int,
    bits_allowed: tuple[int, ...],
) -> tuple[int, np.ndarray, np.ndarray]:
    """Smallest container holding every group's codes and zero point exactly (docs/methods.md 1.7).

    Signed with zero point 0 when ``q - z`` fits (TensorRT-friendly), else unsigned with a per-group
    offset ``o = min(codes, z)``: ``q' = q - o``, ``z' = z - o`` (dequantized values unchanged).
    """
    zshape = np.shape(zero)
    zexp = expand_param(zero, codes.shape, axis, block)
    for bits in sorted(bits_allowed):
        if bits >= 8:
            continue
        lo, hi = INT_RANGES[_SIGNED[bits]]
        d = codes - zexp
        if d.size == 0 or (d.min() >= lo and d.max() <= hi):
            return _SIGNED[bits], d, np.zeros(zshape, np.int64)
        gmin = np.minimum(group_reduce(codes, zshape, axis, block, np.min), zero)
        gmax = np.maximum(group_reduce(codes, zshape, axis, block, np.max), zero)
        if np.max(gmax - gmin) <= 2**bits - 1:
            return _UNSIGNED[bits], codes - expand_param(gmin, codes.shape, axis, block), zero - gmin
    return source_type, codes, np.asarray(zero, np.int64)


def _matmul_n_unaligned(idx: GraphIndex, dq_out: str, shape: tuple[int, ...]) -> bool:
    """True when the DQ output is a MatMul operand whose last dimension is not a multiple of 4."""
    return any(n.op_type == "MatMul" for n, _ in idx.consumers.get(dq_out, [])) and (
        len(shape) == 0 or shape[-1] % 4 != 0
    )


def upgrade_opset(model: onnx.ModelProto, target: int) -> onnx.ModelProto:
    """``model`` converted to ai.onnx ``target`` (functions, metadata and IR version restored)."""
    from onnx import version_converter

    try:
        out = version_converter.convert_version(model, target)
    except Exception as e:  # noqa: BLE001
        raise ExportError(
            f"cannot upgrade the model to opset {target} for low-bit weight containers ({e}); "
            f"export at opset >= {target} or fold with min_bits=8"
        ) from None
    out.ir_version = max(model.ir_version, min_ir_version(target))
    # the converter drops model-local functions and may drop metadata: restore them
    if not out.metadata_props:
        out.metadata_props.extend(model.metadata_props)
    if not out.functions:
        out.functions.extend(f for f in model.functions if f.domain != "edgediff")
    if any(f.domain == "edgediff" for f in model.functions):
        from edgediff_export.ops import add_edgediff_functions

        add_edgediff_functions(out)  # rebuilt for the new opset
    # the converter runs shape inference and keeps its intermediate value_info (13 KB on the
    # reference UNet): ONNX Runtime re-infers shapes, so it only adds bytes to the bundle
    del out.graph.value_info[:]
    return out


# --------------------------------------------------------------------------------------------------
# Passes
# --------------------------------------------------------------------------------------------------


class _Chooser:
    """Container choice shared by :func:`fold_weights` and ``narrow_weight_containers``."""

    def __init__(self, opset: int, min_bits: int, max_opset: int | None, int2: bool | None) -> None:
        if min_bits not in (2, 4, 8):
            raise ExportError(f"min_bits must be 2, 4 or 8, got {min_bits}")
        cap = max(opset, max_opset) if max_opset is not None else opset
        self.bits = [8] + ([4] if min_bits <= 4 and cap >= 21 else [])
        self.want2 = min_bits <= 2 and cap >= 25
        self.int2 = int2
        self._ok2: bool | None = None
        self._unaligned_ok = False

    def _two_bit(self, idx: GraphIndex, dq_out: str, shape: tuple[int, ...]) -> bool:
        if not self.want2:
            return False
        if self._ok2 is None:
            if self.int2 is None:
                d = probe_2bit_details()
                self._ok2 = probe_int2_support()
                self._unaligned_ok = d["int2.matmul_unaligned"] and d["uint2.matmul_unaligned"]
            else:
                self._ok2 = bool(self.int2)
        return self._ok2 and (self._unaligned_ok or not _matmul_n_unaligned(idx, dq_out, shape))

    def plan(
        self,
        idx: GraphIndex,
        dq: onnx.NodeProto,
        codes: np.ndarray,
        source_type: int,
        weight: str,
        reader: str,
        removable: tuple[str, ...],
    ) -> _Plan | None:
        """A plan for one weight DQ; ``None`` when an integer source already has the smallest container."""
        axis, block = int(attr(dq, "axis", 1)), int(attr(dq, "block_size", 0))
        scale = idx.value(dq.input[1])
        has_zero = len(dq.input) > 2 and bool(dq.input[2])
        zero = idx.value(dq.input[2]).astype(np.int64) if has_zero else np.zeros(np.shape(scale), np.int64)
        bits = list(self.bits) + ([2] if self._two_bit(idx, dq.output[0], codes.shape) else [])
        bits = [b for b in bits if b < _BITS.get(source_type, 8)] or [8]
        et, c2, z2 = _choose_container(codes, zero, axis, block, source_type, tuple(bits))
        if et == source_type and reader == dq.output[0]:
            return None
        return _Plan(dq.output[0], weight, reader, removable, c2, z2, et, zero_changed=et != source_type)


def fold_weights(
    model: onnx.ModelProto,
    *,
    min_bits: int = 2,
    max_opset: int | None = None,
    int2: bool | None = None,
) -> FoldResult:
    """Fold constant-weight ``Q -> DQ`` pairs into integer initializers (a new model; input untouched).

    ``min_bits`` (2, 4 or 8) is the smallest container allowed. ``max_opset`` caps the opset the model
    may be upgraded to for int4 (21) or int2 (25) containers (``None``: up to 25; pass the device
    profile's ``max_opset``). ``int2``: whether 2-bit containers run (``None``: run
    :func:`probe_int2_support`; ``True`` still keeps MatMul weights with N % 4 != 0 at 4 bits).
    Outputs are identical to the unfolded model's (docs/methods.md 6.13).
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    opset0 = default_opset(m)
    chooser = _Chooser(opset0, min_bits, MAX_FOLD_OPSET if max_opset is None else max_opset, int2)
    idx = GraphIndex(m.graph)
    plans: list[_Plan] = []
    for q in m.graph.node:
        if q.op_type != "QuantizeLinear" or q.domain not in ("", "ai.onnx"):
            continue
        w = q.input[0]
        wv = idx.value(w) if w in idx.initializers else None
        if wv is None or wv.dtype.kind != "f":
            continue
        if not all(idx.is_constant(n) for n in q.input[1:] if n):
            continue
        out = q.output[0]
        cons = idx.consumers.get(out, [])
        if (
            out in idx.graph_outputs
            or not cons
            or any(n.op_type != "DequantizeLinear" or i != 0 for n, i in cons)
            or not all(idx.is_constant(n) for dq, _ in cons for n in dq.input[1:] if n)
        ):
            continue
        src = q_elem_type(q, idx)
        if src not in INT_RANGES:
            continue
        zq = idx.value(q.input[2]) if len(q.input) > 2 and q.input[2] else None
        codes = quantize_linear(
            wv, idx.value(q.input[1]), zq, int(attr(q, "axis", 1)), int(attr(q, "block_size", 0)), src
        )
        removable = tuple(n for n in q.input if n)
        for dq, _ in cons:
            plan = chooser.plan(idx, dq, codes, src, w, out, removable)
            if plan is not None:
                plans.append(plan)
    if not plans:
        return FoldResult(m, {}, model.ByteSize(), m.ByteSize(), opset0, opset0)
    need = max(CONTAINER_MIN_OPSET[p.elem_type] for p in plans)
    if need > opset0:
        m = upgrade_opset(m, need)
    containers = apply_plans(m, plans)
    return FoldResult(m, containers, model.ByteSize(), m.ByteSize(), opset0, default_opset(m))


def apply_plans(m: onnx.ModelProto, plans: list[_Plan]) -> dict[str, str]:
    """Write planned containers into ``m`` (in place); returns {initializer: container}."""
    g = m.graph
    idx = GraphIndex(g)
    taken = all_names(g)
    per_weight: dict[str, int] = {}
    for p in plans:
        per_weight[p.weight] = per_weight.get(p.weight, 0) + 1
    containers: dict[str, str] = {}
    new_inits: list[onnx.TensorProto] = []
    drop: set[str] = set()
    removable: set[str] = set()
    for p in plans:
        dq = idx.producer[p.dq_out]
        users = idx.consumers.get(p.weight, [])
        reuse = (
            per_weight[p.weight] == 1
            and p.weight in idx.initializers
            and p.weight not in idx.graph_outputs
            and all(n.output and n.output[0] == p.reader for n, _ in users)
        )
        if reuse:
            name = p.weight
            drop.add(p.weight)
        else:
            name = unique_name(f"{p.weight}_quantized", taken)
        new_inits.append(make_int_tensor(name, p.codes, p.elem_type))
        dq.input[0] = name
        removable.update(p.removable)
        if p.zero_changed:
            if len(dq.input) > 2 and dq.input[2]:
                removable.add(dq.input[2])
            zname = unique_name(f"{name}_zero_point", taken)
            new_inits.append(make_int_tensor(zname, p.zero, p.elem_type))
            while len(dq.input) < 3:
                dq.input.append("")
            dq.input[2] = zname
        containers[name] = CONTAINER_NAMES[p.elem_type]
    if drop:
        keep = [t for t in g.initializer if t.name not in drop]
        del g.initializer[:]
        g.initializer.extend(keep)
    g.initializer.extend(new_inits)
    remove_unused(g, candidates=removable)
    for name, c in containers.items():
        set_metadata(m, CONTAINER_KEY + name, c)
    return containers


def symmetrize_int8(
    model: onnx.ModelProto, *, keep_int4: bool = False, exact_8bit_only: bool = False
) -> onnx.ModelProto:
    """TensorRT form of constant weight DQs: codes ``q' = q - z`` with zero point 0 (docs/methods.md 1.7).

    Exact for integer ``z``. Every constant-input DQ that is not already int8 with zero point 0 is
    rewritten to int8 (``keep_int4``: to int4 when the source is a 4- or 2-bit container and
    ``q - z`` fits [-8, 7], TensorRT's INT4 weight-only form); the zero-point input is removed. A
    code outside int8 raises :class:`ExportError`. DQs on activations are left to
    :func:`edgediff_export.passes.placement.place_qdq` (``trt``). Returns a new model.

    ``exact_8bit_only``: rewrite only uint8 weights whose ``q - z`` fits int8 and leave every other
    DQ as it is (no error). The ``ort`` placement uses it so that weights quantized with a fixed
    mid-range zero point (``LayerQuant(w_symmetric=True)``) reach ONNX Runtime as int8 with zero
    point 0, its faster u8s8 kernels; asymmetric weights stay uint8.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    idx = GraphIndex(g)
    taken = all_names(g)
    new_inits: list[onnx.TensorProto] = []
    replaced: dict[str, onnx.TensorProto] = {}
    stale: set[str] = set()
    for dq in g.node:
        if dq.op_type != "DequantizeLinear" or dq.domain not in ("", "ai.onnx"):
            continue
        x = dq.input[0]
        et = idx.elem_type(x)
        if not idx.is_constant(x) or et not in INT_RANGES:
            continue
        zname = dq.input[2] if len(dq.input) > 2 else ""
        if zname and not idx.is_constant(zname):
            raise ExportError(f"{x}: weight zero point {zname!r} is not constant; fold the weights first")
        q = idx.value(x).astype(np.int64)
        z = idx.value(zname).astype(np.int64) if zname else np.zeros((), np.int64)
        if (et == TensorProto.INT8 or (keep_int4 and et == TensorProto.INT4)) and not np.any(z):
            if zname:
                stale.add(zname)
                del dq.input[2:]
            continue
        if exact_8bit_only and et != TensorProto.UINT8:
            continue
        axis, block = int(attr(dq, "axis", 1)), int(attr(dq, "block_size", 0))
        d = q - expand_param(z, q.shape, axis, block)
        if exact_8bit_only and d.size and (d.min() < -128 or d.max() > 127):
            continue
        target = TensorProto.INT8
        if keep_int4 and et in (TensorProto.INT4, TensorProto.UINT4, TensorProto.INT2, TensorProto.UINT2):
            if d.size == 0 or (d.min() >= -8 and d.max() <= 7):
                target = TensorProto.INT4
        if d.size and (d.min() < -128 or d.max() > 127):
            raise ExportError(
                f"{x}: symmetric codes q - z span [{d.min()}, {d.max()}], outside int8 [-128, 127]; "
                "requantize this layer symmetrically or keep it in floating point for TensorRT"
            )
        only_here = (
            len(idx.consumers.get(x, [])) == 1 and x in idx.initializers and x not in idx.graph_outputs
        )
        name = x if only_here else unique_name(f"{x}_sym", taken)
        tensor = make_int_tensor(name, d, target)
        if only_here:
            replaced[name] = tensor
        else:
            new_inits.append(tensor)
        dq.input[0] = name
        stale.update({x, zname} - {"", name})
        del dq.input[2:]
        set_metadata(m, CONTAINER_KEY + name, CONTAINER_NAMES[target])
    if replaced:
        for i, t in enumerate(g.initializer):
            if t.name in replaced:
                g.initializer[i].CopyFrom(replaced[t.name])
    g.initializer.extend(new_inits)
    remove_unused(g, candidates=stale)
    live = {t.name for t in g.initializer}
    keep_meta = [
        p
        for p in m.metadata_props
        if not p.key.startswith(CONTAINER_KEY) or p.key[len(CONTAINER_KEY) :] in live
    ]
    del m.metadata_props[:]
    m.metadata_props.extend(keep_meta)
    return m


def model_size_bytes(model: onnx.ModelProto) -> int:
    """Serialized size of a model (protobuf bytes, inline tensors)."""
    return model.ByteSize()


__all__ = [
    "CONTAINER_KEY",
    "FoldResult",
    "fold_weights",
    "model_size_bytes",
    "probe_2bit_details",
    "probe_int2_support",
    "symmetrize_int8",
]
