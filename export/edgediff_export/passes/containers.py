"""Narrow integer weight initializers that feed ``DequantizeLinear`` to the smallest exact container.

The exporter's quantized modules emit weights already as integer codes (uint8/int8 initializer ->
per-axis ``DequantizeLinear``), so there is no float ``Q`` to fold; this pass applies the container
rules of :mod:`edgediff_export.passes.fold_weights` (METHODS.md section 1.7, docs/export-passes.md)
to those initializers: int4/uint4 when every group's codes and zero point fit 4 bits (opset >= 21),
int2/uint2 where ONNX Runtime runs them exactly (opset >= 25, :func:`probe_int2_support`).
Dequantized values are unchanged. Torch-free.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from edgediff_export.passes._graph import CONTAINER_MIN_OPSET, GraphIndex, default_opset
from edgediff_export.passes.fold_weights import _Chooser, _Plan, apply_plans, upgrade_opset

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


__all__ = ["narrow_weight_containers"]
