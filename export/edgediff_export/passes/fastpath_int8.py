"""Graph passes that keep tensors integer between ONNX Runtime's integer kernels.

ONNX Runtime CPU turns `DequantizeLinear -> Conv/MatMul/Gemm (-> QuantizeLinear)` into integer
kernels (QLinearConv, ConvInteger, MatMulIntegerToFloat, QGemm) only when the weight reaches the
product straight from a `DequantizeLinear` of a constant, and the activation straight from a
`DequantizeLinear`. Anything between them runs in float. These passes remove such float steps
without changing a value:

* `fold-weight-transposes`: `DequantizeLinear(W, s, z, axis=a) -> Transpose(perm)` with constant
  W becomes `DequantizeLinear(W^perm, s, z, axis=perm.index(a))`. The exporter writes linears as
  `x @ Transpose(DQ(W))`; with the transpose folded into the stored codes, the MatMul is
  quantized on both inputs and ONNX Runtime runs it as an integer product.
* `drop-dq-q-pairs`: `QuantizeLinear(DequantizeLinear(q; s, z); s, z)` with the same scale, zero
  point and type is `q` itself (round((q - z) s / s) + z = q), so consumers read `q`; through
  pure data movement (`Transpose`, `Reshape`, `Flatten`, `Squeeze`, `Unsqueeze`) between the two,
  with a per-tensor scale, the data movement is done on the int8 tensor instead.
* `transpose-pairs`: `Transpose(p2)(Transpose(p1)(x))` whose composed permutation is the identity
  is `x`.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgediff_export.passes._graph import GraphIndex, all_names, attr, remove_unused, unique_name

MOVE_OPS = ("Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze")
_INT_TYPES = (TensorProto.INT8, TensorProto.UINT8, TensorProto.INT4, TensorProto.UINT4)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _is_std(node: onnx.NodeProto, op: str) -> bool:
    return node.op_type == op and node.domain in ("", "ai.onnx")


def fold_weight_transposes(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Fold `Transpose` after a constant weight's `DequantizeLinear` into the codes (module docstring)."""
    model = _copy(model)
    graph = model.graph
    idx = GraphIndex(graph)
    taken = all_names(graph)
    replace: dict[int, list[onnx.NodeProto]] = {}
    count = 0
    for pos, node in enumerate(graph.node):
        dq = idx.producer.get(node.input[0]) if _is_std(node, "Transpose") else None
        if dq is None or not _is_std(dq, "DequantizeLinear") or int(attr(dq, "block_size", 0)) != 0:
            continue
        codes = idx.value(dq.input[0])
        if codes is None or idx.elem_type(dq.input[0]) not in _INT_TYPES:
            continue
        perm = list(attr(node, "perm", list(reversed(range(codes.ndim)))))
        scale = idx.value(dq.input[1])
        if scale is None:
            continue
        axis = int(attr(dq, "axis", 1)) % max(codes.ndim, 1)
        new_codes = numpy_helper.from_array(
            np.ascontiguousarray(np.transpose(codes, perm)), unique_name(f"{dq.input[0]}_t", taken)
        )
        graph.initializer.append(new_codes)
        kwargs = {"axis": perm.index(axis)} if scale.size > 1 else {}
        new_dq = helper.make_node(
            "DequantizeLinear",
            [new_codes.name, *dq.input[1:]],
            [node.output[0]],
            name=unique_name(f"{dq.name or dq.output[0]}_t", taken),
            **kwargs,
        )
        replace[pos] = [new_dq]
        count += 1
    if count:
        nodes = [n for pos, old in enumerate(graph.node) for n in replace.get(pos, [old])]
        del graph.node[:]
        graph.node.extend(nodes)
        remove_unused(graph)
    return model, count


def _same_params(idx: GraphIndex, a: onnx.NodeProto, b: onnx.NodeProto) -> bool:
    """Equal scale, zero point (value and type) and axis of two Q/DQ nodes."""
    sa, sb = idx.value(a.input[1]), idx.value(b.input[1])
    if sa is None or sb is None or sa.shape != sb.shape or not np.array_equal(sa, sb):
        return False
    za = idx.value(a.input[2]) if len(a.input) > 2 and a.input[2] else None
    zb = idx.value(b.input[2]) if len(b.input) > 2 and b.input[2] else None
    ta = idx.elem_type(a.input[2]) if za is not None else TensorProto.UINT8
    tb = idx.elem_type(b.input[2]) if zb is not None else TensorProto.UINT8
    za = np.zeros_like(sa, dtype=np.int64) if za is None else za.astype(np.int64)
    zb = np.zeros_like(sb, dtype=np.int64) if zb is None else zb.astype(np.int64)
    if ta != tb or not np.array_equal(za, zb) or int(attr(b, "output_dtype", 0)) != 0:
        return False
    if sa.size > 1 and int(attr(a, "axis", 1)) != int(attr(b, "axis", 1)):
        return False
    return int(attr(a, "block_size", 0)) == 0 and int(attr(b, "block_size", 0)) == 0


def _resolve(rename: dict[str, str], name: str) -> str:
    """Follow `rename` to its end (a pair can feed another pair)."""
    while name in rename:
        name = rename[name]
    return name


def drop_dq_q_pairs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Make consumers of `Q(move*(DQ(q)))` read `move*(q)` when Q and DQ share their parameters."""
    model = _copy(model)
    graph = model.graph
    idx = GraphIndex(graph)
    taken = all_names(graph)
    outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    added: dict[int, list[onnx.NodeProto]] = {}  # position of the Q -> int8 data-movement nodes
    for pos, q in enumerate(graph.node):
        if not _is_std(q, "QuantizeLinear") or q.output[0] in outputs:
            continue
        moves: list[onnx.NodeProto] = []
        node = idx.producer.get(q.input[0])
        while node is not None and node.op_type in MOVE_OPS and node.domain in ("", "ai.onnx"):
            moves.append(node)
            node = idx.producer.get(node.input[0])
        if node is None or not _is_std(node, "DequantizeLinear") or not _same_params(idx, node, q):
            continue
        scale = idx.value(q.input[1])
        if moves and scale.size > 1:  # a per-axis scale would have to follow the data movement
            continue
        src = node.input[0]
        chain = []
        for move in reversed(moves):
            out = unique_name(f"{move.output[0]}_int", taken)
            chain.append(
                helper.make_node(
                    move.op_type,
                    [src, *move.input[1:]],
                    [out],
                    name=unique_name(f"{move.name or move.output[0]}_int", taken),
                )
            )
            chain[-1].attribute.extend(move.attribute)
            src = out
        added[pos] = chain
        rename[q.output[0]] = src
    if rename:
        nodes = []
        for pos, node in enumerate(graph.node):
            nodes += added.get(pos, [])
            nodes.append(node)
        for node in nodes:
            node.input[:] = [_resolve(rename, i) for i in node.input]
        del graph.node[:]
        graph.node.extend(nodes)
        remove_unused(graph)
    return model, len(rename)


def drop_transpose_pairs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Bypass `Transpose(p2)(Transpose(p1)(x))` when `p1` then `p2` is the identity."""
    model = _copy(model)
    graph = model.graph
    idx = GraphIndex(graph)
    outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    for node in graph.node:
        first = idx.producer.get(node.input[0]) if _is_std(node, "Transpose") else None
        if first is None or not _is_std(first, "Transpose") or node.output[0] in outputs:
            continue
        p1, p2 = attr(first, "perm"), attr(node, "perm")
        if p1 is None or p2 is None or len(p1) != len(p2):
            continue
        if [p1[i] for i in p2] == list(range(len(p1))):
            rename[node.output[0]] = first.input[0]
    if rename:
        for node in graph.node:
            node.input[:] = [_resolve(rename, i) for i in node.input]
        remove_unused(graph)
    return model, len(rename)


__all__ = ["MOVE_OPS", "drop_dq_q_pairs", "drop_transpose_pairs", "fold_weight_transposes"]
