"""Q/DQ placement for the two runtimes (docs/deployment.md section 11, docs/methods.md sections 1.7 and 6.13).

Input: a graph where each quantized ``Conv``/``MatMul``/``Gemm`` reads its weight through a
``DequantizeLinear`` of a constant (folded, or ``constant -> Q -> DQ``) and its activation through a
``QuantizeLinear -> DequantizeLinear`` pair. :func:`place_qdq` rewrites it for one target:

``ort``
    ONNX Runtime CPU fuses ``DQ -> Conv -> Q`` into ``QLinearConv``, ``DQ -> MatMul -> Q`` into
    ``QLinearMatMul`` and ``DQ -> Gemm -> Q`` into ``QGemm``; without the output ``Q`` the op stays a
    float op with runtime dequantization (0.81x FP32 speed, measured), and a ``DQ`` shared by two
    consumers is not fused. So: every quantized node gets an output ``Q -> DQ`` pair (scale and zero
    point from ``output_qparams[node name]``), and every ``DQ`` feeding a quantized node is dedicated
    to it (duplicated when shared).
``trt``
    TensorRT explicit quantization: Q/DQ on the inputs of quantized nodes only, symmetric int8 (zero
    point 0), constant scales. Activation pairs that feed no quantized node are removed, asymmetric
    activation pairs are re-expressed as symmetric int8 covering the same range (not exact: one bit
    of resolution is lost for a one-sided range; recorded in ``metadata_props``), and weights go
    through :func:`edgediff_export.passes.fold_weights.symmetrize_int8` (exact).

:func:`ort_session_options` returns ``SessionOptions`` with the settings these graphs need.
Torch-free; onnxruntime is imported only inside :func:`ort_session_options`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgediff_export.errors import ExportError
from edgediff_export.passes._graph import (
    INT_RANGES,
    QUANT_COMPUTE_OPS,
    GraphIndex,
    all_names,
    node_label,
    q_elem_type,
    remove_unused,
    set_metadata,
    unique_name,
)
from edgediff_export.passes.fold_weights import fold_weights, symmetrize_int8

PLACEMENTS = ("ort", "trt")
REQUANT_KEY = "edgediff.trt_requantized."


@dataclass(frozen=True)
class QuantizedNode:
    """A quantized compute node: its activation DQ, the Q before it, and its weight DQ."""

    node: onnx.NodeProto
    act_dq: onnx.NodeProto
    act_q: onnx.NodeProto
    weight_dq: onnx.NodeProto


def find_quantized_nodes(model: onnx.ModelProto) -> list[QuantizedNode]:
    """Quantized ``Conv``/``MatMul``/``Gemm`` nodes: input 0 from ``Q -> DQ``, input 1 from a constant DQ."""
    idx = GraphIndex(model.graph)
    out: list[QuantizedNode] = []
    for node in model.graph.node:
        if node.op_type not in QUANT_COMPUTE_OPS or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        a = idx.producer.get(node.input[0])
        w = idx.producer.get(node.input[1])
        if a is None or w is None or a.op_type != "DequantizeLinear" or w.op_type != "DequantizeLinear":
            continue
        q = idx.producer.get(a.input[0])
        if q is None or q.op_type != "QuantizeLinear" or not _constant_weight(idx, w):
            continue
        out.append(QuantizedNode(node, a, q, w))
    return out


def _constant_weight(idx: GraphIndex, dq: onnx.NodeProto) -> bool:
    """A weight DQ reads a constant: folded (integer initializer) or not yet (constant -> Q -> DQ)."""
    if idx.is_constant(dq.input[0]):
        return True
    q = idx.producer.get(dq.input[0])
    return q is not None and q.op_type == "QuantizeLinear" and idx.is_constant(q.input[0])


def _dedicate_dqs(model: onnx.ModelProto) -> None:
    """Give every quantized node its own activation DQ and weight DQ (duplicating shared ones)."""
    g = model.graph
    taken = all_names(g)
    for qn in find_quantized_nodes(model):
        idx = GraphIndex(g)
        for pos in (0, 1):
            dq = idx.producer[qn.node.input[pos]]
            users = idx.consumers.get(dq.output[0], [])
            if len(users) <= 1 and dq.output[0] not in idx.graph_outputs:
                continue
            new_out = unique_name(f"{dq.output[0]}_{qn.node.name or qn.node.op_type}", taken)
            dup = onnx.NodeProto()
            dup.CopyFrom(dq)
            dup.name = unique_name(f"{dq.name or 'DequantizeLinear'}_dup", taken)
            del dup.output[:]
            dup.output.append(new_out)
            qn.node.input[pos] = new_out
            _insert_after(g, dq, dup)


def _insert_after(g: onnx.GraphProto, anchor: onnx.NodeProto, *nodes: onnx.NodeProto) -> None:
    pos = next(
        i
        for i, n in enumerate(g.node)
        if n is anchor or (n.output == anchor.output and n.name == anchor.name)
    )
    for k, n in enumerate(nodes):
        g.node.insert(pos + 1 + k, n)


def _dedicate_output_dq(g: onnx.GraphProto, dq: onnx.NodeProto, taken: set[str]) -> None:
    """Split one DQ with several consumers into one DQ per consumer (graph outputs keep the original)."""
    idx = GraphIndex(g)
    users = idx.consumers.get(dq.output[0], [])
    keep_first = dq.output[0] not in idx.graph_outputs
    for k, (user, pos) in enumerate(users):
        if keep_first and k == 0:
            continue
        dup = onnx.NodeProto()
        dup.CopyFrom(dq)
        dup.name = unique_name(f"{dq.name or 'DequantizeLinear'}_dup", taken)
        new_out = unique_name(f"{dq.output[0]}_dup", taken)
        del dup.output[:]
        dup.output.append(new_out)
        user.input[pos] = new_out
        _insert_after(g, dq, dup)


def place_qdq(
    model: onnx.ModelProto,
    target: str,
    *,
    output_qparams: Mapping[str, tuple[float, int]] | None = None,
    keep_int4: bool = False,
) -> onnx.ModelProto:
    """Place Q/DQ for ``target`` (``"ort"`` or ``"trt"``); returns a new model
    (docs/deployment.md section 11).

    ``output_qparams`` (``ort``): ``{node name: (scale, zero_point)}`` of each quantized node's output;
    the element type follows the node's input ``Q``. A node without an entry is left alone when its
    output already reaches a ``QuantizeLinear`` that ONNX Runtime fuses with it (directly, through
    shape ops, or through a Relu when the Q's zero point is the type minimum); otherwise a missing
    entry is an :class:`ExportError`. ``keep_int4`` (``trt``): keep 4-bit weight containers as
    symmetric int4 (TensorRT INT4 weight-only) instead of widening them to int8.
    """
    if target not in PLACEMENTS:
        raise ExportError(f"unknown placement {target!r}; use one of {', '.join(PLACEMENTS)}")
    m = onnx.ModelProto()
    m.CopyFrom(model)
    if not find_quantized_nodes(m):
        return m
    if target == "ort":
        _place_ort(m, dict(output_qparams or {}))
    else:
        m = _place_trt(m, keep_int4)
    onnx.checker.check_model(m)
    return m


def _place_ort(m: onnx.ModelProto, qparams: dict[str, tuple[float, int]]) -> None:
    g = m.graph
    _dedicate_dqs(m)
    taken = all_names(g)
    for qn in find_quantized_nodes(m):
        idx = GraphIndex(g)
        y = qn.node.output[0]
        users = idx.consumers.get(y, [])
        if len(users) == 1 and users[0][0].op_type == "QuantizeLinear" and y not in idx.graph_outputs:
            q = users[0][0]
            for dq, _ in idx.consumers.get(q.output[0], []):
                if dq.op_type == "DequantizeLinear" and len(idx.consumers.get(dq.output[0], [])) > 1:
                    _dedicate_output_dq(g, dq, taken)
            continue
        label = qn.node.name or node_label(qn.node)
        if label not in qparams and _reaches_q(idx, y):
            continue
        if label not in qparams:
            raise ExportError(
                f"node {label}: no output scale/zero point for --placement ort; calibrate its output range "
                "and pass output_qparams[name] = (scale, zero_point), or use --placement trt"
            )
        scale, zero = qparams[label]
        et = q_elem_type(qn.act_q, idx)
        lo, hi = INT_RANGES[et]
        if not (lo <= int(zero) <= hi) or not float(scale) > 0:
            raise ExportError(f"node {label}: output zero point {zero} or scale {scale} invalid for its type")
        base = qn.node.name or y
        s_name = unique_name(f"{base}.output_scale", taken)
        z_name = unique_name(f"{base}.output_zero_point", taken)
        g.initializer.extend(
            [
                numpy_helper.from_array(np.array(scale, np.float32), s_name),
                numpy_helper.from_array(np.array(zero, dtype=helper.tensor_dtype_to_np_dtype(et)), z_name),
            ]
        )
        y_float = unique_name(f"{y}_float", taken)
        y_q = unique_name(f"{y}_quantized", taken)
        qn.node.output[0] = y_float
        q = helper.make_node(
            "QuantizeLinear", [y_float, s_name, z_name], [y_q], name=unique_name(f"{base}_Q", taken)
        )
        dq = helper.make_node(
            "DequantizeLinear", [y_q, s_name, z_name], [y], name=unique_name(f"{base}_DQ", taken)
        )
        _insert_after(g, qn.node, q, dq)
        if len(GraphIndex(g).consumers.get(y, [])) > 1:
            _dedicate_output_dq(g, dq, taken)


_SHAPE_OPS = ("Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze")


def _reaches_q(idx: GraphIndex, name: str) -> bool:
    """True when ``name`` reaches a ``QuantizeLinear`` through single-consumer ops ONNX Runtime folds
    into the quantized node: shape ops (Q/DQ propagation) and a Relu whose Q's zero point is the
    type's minimum (``ReluQuantFusion``)."""
    relu = False
    for _ in range(8):
        users = idx.consumers.get(name, [])
        if name in idx.graph_outputs or len(users) != 1:
            return False
        user = users[0][0]
        if user.op_type == "QuantizeLinear":
            if not relu:
                return True
            et = q_elem_type(user, idx)
            zero = idx.value(user.input[2]) if len(user.input) > 2 and user.input[2] else np.zeros(1)
            return zero is not None and bool(np.all(zero == INT_RANGES[et][0]))
        if user.op_type == "Relu":
            relu = True
        elif user.op_type not in _SHAPE_OPS:
            return False
        name = user.output[0]
    return False


def _place_trt(m: onnx.ModelProto, keep_int4: bool) -> onnx.ModelProto:
    pre = GraphIndex(m.graph)
    if any(n.op_type == "QuantizeLinear" and pre.is_constant(n.input[0]) for n in m.graph.node):
        m = fold_weights(m, min_bits=8).model  # exact; weight Q/DQ are not activation pairs
    g = m.graph
    taken = all_names(g)
    quantized_inputs = {(qn.node.output[0], qn.node.input[0]) for qn in find_quantized_nodes(m)}
    idx = GraphIndex(g)
    # 1. activation pairs: keep the DQ edges into quantized nodes (input 0), rewire every other consumer
    for dq in list(g.node):
        if dq.op_type != "DequantizeLinear" or idx.is_constant(dq.input[0]):
            continue
        q = idx.producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue
        for user, pos in list(idx.consumers.get(dq.output[0], [])):
            if pos == 0 and user.output and (user.output[0], dq.output[0]) in quantized_inputs:
                continue
            if pos >= 0:
                user.input[pos] = q.input[0]
        if dq.output[0] in idx.graph_outputs:
            _bypass_to_output(g, dq, q.input[0], taken)
    remove_unused(g, candidates=set())
    # 2. kept activation pairs: constant scales, symmetric int8
    idx = GraphIndex(g)
    stale: set[str] = set()
    for q in [n for n in g.node if n.op_type == "QuantizeLinear"]:
        label = node_label(q)
        for name in q.input[1:]:
            if name and not idx.is_constant(name):
                raise ExportError(
                    f"node {label}: activation scale {name!r} is computed at run time; TensorRT needs "
                    "constant scales (build one engine per step or step group, or use --placement ort)"
                )
        scale = idx.value(q.input[1]).astype(np.float32)
        et = q_elem_type(q, idx)
        zero = (
            idx.value(q.input[2]).astype(np.int64)
            if len(q.input) > 2 and q.input[2]
            else np.zeros_like(scale)
        )
        dqs = [n for n, _ in idx.consumers.get(q.output[0], []) if n.op_type == "DequantizeLinear"]
        if et == TensorProto.INT8 and not np.any(zero) and all(_same_params(q, d) for d in dqs):
            continue
        if et not in (TensorProto.INT8, TensorProto.UINT8):
            raise ExportError(
                f"node {label}: {TensorProto.DataType.Name(et)} activation quantization is not supported by "
                "TensorRT; emulate sub-8-bit activations with Clip + int8 Q/DQ (docs/methods.md 1.7)"
            )
        lo, hi = INT_RANGES[et]
        amax = np.maximum(np.abs((lo - zero) * scale), np.abs((hi - zero) * scale))
        new_scale = (amax / 127.0).astype(np.float32)
        s_name = unique_name(f"{label}.trt_scale", taken)
        z_name = unique_name(f"{label}.trt_zero_point", taken)
        g.initializer.extend(
            [
                numpy_helper.from_array(new_scale, s_name),
                numpy_helper.from_array(np.zeros_like(zero, np.int8), z_name),
            ]
        )
        stale.update(n for n in q.input[1:] if n)
        for n in [q, *dqs]:
            n.input[1] = s_name
            while len(n.input) < 3:
                n.input.append("")
            n.input[2] = z_name
        set_metadata(
            m, REQUANT_KEY + label, f"{TensorProto.DataType.Name(et).lower()} zp={zero.tolist()} -> int8 zp=0"
        )
    remove_unused(g, candidates=stale)
    return symmetrize_int8(m, keep_int4=keep_int4)


def _bypass_to_output(g: onnx.GraphProto, dq: onnx.NodeProto, float_name: str, taken: set[str]) -> None:
    """A removed pair's DQ produced a graph output: let the float tensor carry the output name."""
    out_name = dq.output[0]
    dq.output[0] = unique_name(f"{out_name}_unused", taken)
    idx = GraphIndex(g)
    producer = idx.producer.get(float_name)
    if producer is None or float_name in idx.graph_outputs:
        g.node.append(
            helper.make_node("Identity", [float_name], [out_name], name=unique_name(out_name, taken))
        )
        return
    for k, o in enumerate(producer.output):
        if o == float_name:
            producer.output[k] = out_name
    for user, pos in idx.consumers.get(float_name, []):
        if pos >= 0:
            user.input[pos] = out_name


def _same_params(q: onnx.NodeProto, dq: onnx.NodeProto) -> bool:
    return list(q.input[1:]) == list(dq.input[1:])


def needs_matmul_add_fusion_disabled(model: onnx.ModelProto) -> bool:
    """True when a ``MatMul`` with both inputs from ``DequantizeLinear`` feeds only an ``Add``.

    ONNX Runtime first fuses MatMul + Add into Gemm, which loses the ``MatMulIntegerToFloat`` path
    (docs/deployment.md section 11).
    """
    idx = GraphIndex(model.graph)
    for node in model.graph.node:
        if node.op_type != "MatMul" or len(node.input) < 2:
            continue
        prods = [idx.producer.get(i) for i in node.input[:2]]
        if not all(p is not None and p.op_type == "DequantizeLinear" for p in prods):
            continue
        users = idx.consumers.get(node.output[0], [])
        if len(users) == 1 and users[0][0].op_type == "Add":
            return True
    return False


def has_2bit_weights(model: onnx.ModelProto) -> bool:
    """True when an INT2/UINT2 initializer exists (opset 25 2-bit weight containers)."""
    return any(i.data_type in (TensorProto.INT2, TensorProto.UINT2) for i in model.graph.initializer)


def ort_disabled_optimizers(model: onnx.ModelProto) -> list[str]:
    """ONNX Runtime graph optimizers that must be off for ``model`` (recorded in the bundle manifest).

    * ``MatMulAddFusion`` when :func:`needs_matmul_add_fusion_disabled` (keeps the integer MatMul path).
    * ``ConstantFolding`` when the graph has 2-bit weight initializers: ONNX Runtime 1.32 fails at
      session creation ("Element type mismatch between tensor proto and ortvalue_initializer") while
      constant-folding around INT2/UINT2 DequantizeLinear; with the pass off the graph runs and its
      output is identical to the uint4-container export (docs/export-passes.md).
    """
    out = []
    if needs_matmul_add_fusion_disabled(model):
        out.append("MatMulAddFusion")
    if has_2bit_weights(model):
        out.append("ConstantFolding")
    return out


def ort_session_options(
    model: onnx.ModelProto | None = None,
    *,
    optimized_model_path: str | None = None,
    disable_matmul_add_fusion: bool | None = None,
    disabled_optimizers: list[str] | None = None,
    exact_matmulnbits: bool = True,
    intra_op_num_threads: int | None = None,
) -> Any:
    """``onnxruntime.SessionOptions`` for edgediff graphs (docs/deployment.md section 11).

    * ``disabled_optimizers``: graph optimizers to turn off (``optimization.disable_specified_optimizers``,
      ``;``-separated); ``None`` decides from ``model`` (:func:`ort_disabled_optimizers`).
    * ``disable_matmul_add_fusion``: force ``MatMulAddFusion`` on (``False``) or off (``True``) in that list.
    * ``exact_matmulnbits``: ``session.qdq_matmulnbits_accuracy_level=0`` so 4-/2-bit DQ -> MatMul
      fused into ``MatMulNBits`` computes in float (exact) rather than with int8 activations.
    * ``optimized_model_path``: where ONNX Runtime writes the optimized graph (for inspection).
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    names = (
        list(disabled_optimizers)
        if disabled_optimizers is not None
        else (ort_disabled_optimizers(model) if model is not None else [])
    )
    if disable_matmul_add_fusion is not None:
        names = [n for n in names if n != "MatMulAddFusion"]
        if disable_matmul_add_fusion:
            names.insert(0, "MatMulAddFusion")
    if names:
        so.add_session_config_entry("optimization.disable_specified_optimizers", ";".join(names))
    if exact_matmulnbits:
        so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    if optimized_model_path is not None:
        so.optimized_model_filepath = str(optimized_model_path)
    if intra_op_num_threads is not None:
        so.intra_op_num_threads = int(intra_op_num_threads)
    return so


__all__ = [
    "PLACEMENTS",
    "QuantizedNode",
    "find_quantized_nodes",
    "has_2bit_weights",
    "needs_matmul_add_fusion_disabled",
    "ort_disabled_optimizers",
    "ort_session_options",
    "place_qdq",
]
