"""Narrow integer weight initializers that feed ``DequantizeLinear`` to the smallest exact container.

The exporter's quantized modules emit weights already as integer codes (uint8/int8 initializer ->
per-axis ``DequantizeLinear``), so there is no float ``Q`` to fold; this pass applies the container
rules of :mod:`edgediff_export.passes.fold_weights` (docs/methods.md section 1.7, docs/export-passes.md)
to those initializers: int4/uint4 when every group's codes and zero point fit 4 bits (opset >= 21),
int2/uint2 where ONNX Runtime runs them exactly (opset >= 25, :func:`probe_int2_support`).
Dequantized values are unchanged. Torch-free.

``narrow_residual_codes`` does the same for the int8 weight codes of the ``edgediff`` residual
nodes, whose schema takes int8: the codes are stored as uint2/uint4 and a ``Cast`` to int8 feeds
the node (ONNX Runtime folds it at load), the zero points shifted by the same per-channel offset.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
from onnx import TensorProto

from edgediff_export.passes._graph import (
    CONTAINER_MIN_OPSET,
    CONTAINER_NAMES,
    GraphIndex,
    all_names,
    default_opset,
    make_int_tensor,
    min_ir_version,
    set_metadata,
    unique_name,
)
from edgediff_export.passes.fold_weights import CONTAINER_KEY, _Chooser, _Plan, apply_plans, upgrade_opset

RESIDUAL_OPS = ("ResidualBinaryLinear", "ResidualBinaryConv")

_NARROWABLE = (
    TensorProto.INT8,
    TensorProto.UINT8,
    TensorProto.INT16,
    TensorProto.UINT16,
    TensorProto.INT4,
    TensorProto.UINT4,
)


def narrow_weight_containers(
    model: onnx.ModelProto,
    *,
    min_bits: int = 2,
    max_opset: int | None = None,
    int2: bool | None = None,
) -> dict[str, str]:
    """Narrow constant integer DQ inputs in place; returns ``{initializer: container}`` of those changed.

    By default the model's opset is kept, so only containers it allows are used (opset 20: none,
    21: int4/uint4, 25: also 2-bit). ``max_opset`` above the model's lets the pass upgrade the model
    (``onnx.version_converter``) to use smaller containers. ``min_bits`` and ``int2`` as in
    :func:`~edgediff_export.passes.fold_weights.fold_weights`. Each container is recorded in
    ``metadata_props["edgediff.weight_container.<initializer>"]``.
    """
    opset0 = default_opset(model)
    chooser = _Chooser(opset0, min_bits, max_opset, int2)
    idx = GraphIndex(model.graph)
    plans: list[_Plan] = []
    for dq in model.graph.node:
        if dq.op_type != "DequantizeLinear" or dq.domain not in ("", "ai.onnx"):
            continue
        x = dq.input[0]
        if x not in idx.initializers or x in idx.graph_inputs:
            continue
        et = idx.initializers[x].data_type
        if et not in _NARROWABLE or not all(idx.is_constant(n) for n in dq.input[1:] if n):
            continue
        codes = np.asarray(idx.value(x)).astype(np.int64)
        removable = (x,)
        plan = chooser.plan(idx, dq, codes, et, x, dq.output[0], removable)
        if plan is not None:
            plans.append(plan)
    if not plans:
        return {}
    need = max(CONTAINER_MIN_OPSET[p.elem_type] for p in plans)
    if need > opset0:
        model.CopyFrom(upgrade_opset(model, need))
    return apply_plans(model, plans)


def narrow_residual_codes(
    model: onnx.ModelProto, *, max_opset: int | None = None, int2: bool | None = None
) -> dict[str, str]:
    """Store residual nodes' int8 ``Wq`` in uint2/uint4 behind a ``Cast`` (in place); ``{init: container}``.

    The node computes ``(Wq - w_zero)·w_scale`` per output channel (docs/methods.md 2.4), so
    subtracting a per-channel offset ``o = min(min_c Wq, w_zero)`` from both leaves every weight
    unchanged: ``Wq' = Wq - o`` and ``w_zero' = w_zero - o`` are small non-negative integers, stored
    in the smallest unsigned container the opset allows (2 bits from opset 25 when ONNX Runtime
    casts them, 4 bits from 21). ``Wq'`` reaches the node through ``Cast(to=int8)``; ``w_zero'``
    stays int8. Only for ONNX Runtime bundles: TensorRT's parser hands the plugin its inputs as
    they are, so ``trt`` bundles keep int8 initializers. Each container is recorded in
    ``metadata_props["edgediff.weight_container.<initializer>"]``.
    """
    opset0 = default_opset(model)
    cap = max(opset0, max_opset) if max_opset is not None else opset0
    allowed = [b for b, need in ((2, 25), (4, 21)) if cap >= need and _cast_runs(b, int2)]
    if not allowed:
        return {}
    idx = GraphIndex(model.graph)
    plans = []
    for node in model.graph.node:
        if node.domain != "edgediff" or node.op_type not in RESIDUAL_OPS or len(node.input) < 4:
            continue
        wq, wz = node.input[1], node.input[3]
        if wq not in idx.initializers or not idx.is_constant(wz) or idx.elem_type(wq) != TensorProto.INT8:
            continue
        if len(idx.consumers[wq]) != 1 or len(idx.consumers[wz]) != 1 or wz not in idx.initializers:
            continue
        codes = np.asarray(idx.value(wq)).astype(np.int64)
        zero_value = np.asarray(idx.value(wz))
        zero = zero_value.astype(np.int64).reshape(-1)
        if codes.ndim < 2 or zero.shape[0] != codes.shape[0]:
            continue
        offset = np.minimum(codes.reshape(codes.shape[0], -1).min(1), zero)
        q = codes - offset.reshape(-1, *([1] * (codes.ndim - 1)))
        z = (zero - offset).reshape(zero_value.shape)
        top = int(max(q.max(), z.max()))
        bits = next((b for b in sorted(allowed) if top < 2**b), None)
        if bits is not None:
            plans.append((wq, wz, q, z, TensorProto.UINT2 if bits == 2 else TensorProto.UINT4))
    if not plans:
        return {}
    need = max(CONTAINER_MIN_OPSET[et] for *_, et in plans)
    if need > opset0:
        model.CopyFrom(upgrade_opset(model, need))  # keeps tensor names, which is all the plans hold
    g = model.graph
    taken = all_names(g)
    drop = {wq for wq, *_ in plans} | {wz for _, wz, *_ in plans}
    keep = [t for t in g.initializer if t.name not in drop]
    del g.initializer[:]
    g.initializer.extend(keep)
    casts, containers = [], {}
    for wq, wz, q, z, et in plans:
        stored = unique_name(f"{wq}_{CONTAINER_NAMES[et]}", taken)
        g.initializer.append(make_int_tensor(stored, q, et))
        g.initializer.append(make_int_tensor(wz, z, TensorProto.INT8))
        cast = onnx.helper.make_node("Cast", [stored], [wq], name=f"{stored}_to_int8", to=TensorProto.INT8)
        casts.append(cast)
        containers[stored] = CONTAINER_NAMES[et]
        set_metadata(model, CONTAINER_KEY + stored, CONTAINER_NAMES[et])
    nodes = casts + list(g.node)  # the casts read initializers only: first keeps topological order
    del g.node[:]
    g.node.extend(nodes)
    return containers


@functools.cache
def _cast_probe(bits: int) -> bool:
    """True when ONNX Runtime casts a uint``bits`` initializer to int8 exactly."""
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover - onnxruntime is a dependency of the export stage
        return False
    et, opset = (TensorProto.UINT2, 25) if bits == 2 else (TensorProto.UINT4, 21)
    values = np.arange(2**bits * 3) % 2**bits
    helper = onnx.helper
    graph = helper.make_graph(
        [helper.make_node("Cast", ["q"], ["y"], to=TensorProto.INT8)],
        "cast_probe",
        [],
        [helper.make_tensor_value_info("y", TensorProto.INT8, [values.size])],
        [make_int_tensor("q", values, et)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min_ir_version(opset)
    try:
        so = ort.SessionOptions()
        so.log_severity_level = 4
        session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return bool(np.array_equal(session.run(None, {})[0], values.astype(np.int8)))
    except Exception:  # noqa: BLE001 - any failure means "not supported"
        return False


def _cast_runs(bits: int, int2: bool | None) -> bool:
    if bits == 2 and int2 is not None:
        return bool(int2)
    return _cast_probe(bits)


__all__ = ["narrow_residual_codes", "narrow_weight_containers"]
