"""`dynamic-linears`: linears with per-token dynamic activation quantization on ONNX's `MatMulInteger`.

A linear `x @ DQ(W)` (constant int8 codes W [K, N], per-tensor or per-output-channel scale w_s and
zero point w_z; the activation either float or `DQ(Q(x))` with a static per-tensor range) becomes

    s     = max(max_k |x[..., k]|, tiny) / 127                  (one scale per token, [..., T, 1])
    q     = QuantizeLinear(x / s, 1, 128) as uint8             (round half to even, q - 128 in [-127, 127])
    acc   = MatMulInteger(q, W, 128, w_z)                       (int32: sum_k (q - 128)(W - w_z))
    y     = float(acc) * s * w_s                                ~= x @ ((W - w_z) w_s)

The uint8 container with a constant zero point 128 holds the symmetric int8 codes of each token in
the unsigned-times-signed form ONNX Runtime's x86 integer GEMM is fastest with, while the scale
stays per token (ONNX's `DynamicQuantizeLinear` has one scale per tensor). The static activation
range of the calibrated graph is not used: each token is quantized to its own range.
Only MatMuls (and Gemms with alpha = beta = 1, transA = 0: + C after the scales) with a 2-D
constant int8/uint8 weight (block_size 0) are rewritten.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgediff_export.passes._graph import GraphIndex, all_names, attr, remove_unused, unique_name
from edgediff_export.passes.fastpath_int8 import fold_weight_transposes

_TINY = np.float32(1e-8)


def _is_std(node: onnx.NodeProto | None, op: str) -> bool:
    return node is not None and node.op_type == op and node.domain in ("", "ai.onnx")


def _float_source(idx: GraphIndex, name: str) -> str:
    """The float tensor a (static) fake-quantized activation was made from: `x` of `DQ(Q(x))`."""
    dq = idx.producer.get(name)
    if _is_std(dq, "DequantizeLinear"):
        q = idx.producer.get(dq.input[0])
        if _is_std(q, "QuantizeLinear"):
            return q.input[0]
    return name


def _weight(idx: GraphIndex, node: onnx.NodeProto) -> tuple[str | None, np.ndarray, str, str] | None:
    """(codes [K, N] name or None when they need a transpose, weight scale, zero point name, Gemm
    bias name) of a linear this pass rewrites: a MatMul, or a Gemm y = A B' + C with alpha = beta = 1
    and transA = 0, whose B is a DequantizeLinear of constant 2-D int8 codes with one scale per
    tensor or per output channel."""
    if _is_std(node, "MatMul"):
        trans_b, bias = False, ""
    elif _is_std(node, "Gemm"):
        if float(attr(node, "alpha", 1.0)) != 1.0 or int(attr(node, "transA", 0)) != 0:
            return None
        bias = node.input[2] if len(node.input) > 2 else ""
        if bias and float(attr(node, "beta", 1.0)) != 1.0:
            return None
        trans_b = bool(attr(node, "transB", 0))
    else:
        return None
    dq = idx.producer.get(node.input[1])
    if not _is_std(dq, "DequantizeLinear") or int(attr(dq, "block_size", 0)) != 0:
        return None
    codes, scale = idx.value(dq.input[0]), idx.value(dq.input[1])
    if codes is None or scale is None or codes.ndim != 2:
        return None
    if idx.elem_type(dq.input[0]) not in (TensorProto.INT8, TensorProto.UINT8):
        return None
    out_axis = 0 if trans_b else 1  # the output-channel axis of the stored codes
    if scale.size > 1 and int(attr(dq, "axis", 1)) % 2 != out_axis:
        return None  # a per-input-channel weight scale cannot be applied after the sum
    zero_point = dq.input[2] if len(dq.input) > 2 else ""
    return (None if trans_b else dq.input[0]), scale, zero_point, bias


def dynamic_linears(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Rewrite every eligible linear (module docstring); returns the model and the count."""
    model, _ = fold_weight_transposes(model)  # the exporter writes x @ Transpose(DQ(W))
    graph = model.graph
    idx = GraphIndex(graph)
    taken = all_names(graph)
    shared = {
        "one": numpy_helper.from_array(np.float32(1.0), unique_name("dynlin_one", taken)),
        "zp": numpy_helper.from_array(np.uint8(128), unique_name("dynlin_zp128", taken)),
        "inv": numpy_helper.from_array(np.float32(1 / 127), unique_name("dynlin_inv127", taken)),
        "tiny": numpy_helper.from_array(_TINY, unique_name("dynlin_tiny", taken)),
        "axes": numpy_helper.from_array(np.array([-1], dtype=np.int64), unique_name("dynlin_axes", taken)),
    }
    replace: dict[int, list[onnx.NodeProto]] = {}
    for pos, node in enumerate(graph.node):
        weight = _weight(idx, node)
        if weight is None:
            continue
        codes_name, scale, zero_point, bias = weight
        if codes_name is None:  # a Gemm with transB = 1: store the codes as [K, N]
            dq = idx.producer[node.input[1]]
            codes = idx.value(dq.input[0])
            codes_name = unique_name(f"{dq.input[0]}_kn", taken)
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(codes.T), codes_name))
        x = _float_source(idx, node.input[0])
        base = node.name or node.output[0]
        t = {
            k: unique_name(f"{base}_dyn_{k}", taken)
            for k in ("abs", "max", "s", "sc", "xs", "q", "acc", "f", "m")
        }
        w_scale = numpy_helper.from_array(
            scale.astype(np.float32).reshape(-1), unique_name(f"{base}_ws", taken)
        )
        graph.initializer.append(w_scale)
        mm_inputs = [t["q"], codes_name, shared["zp"].name] + ([zero_point] if zero_point else [])

        def mk(op, ins, out, **kw):
            return helper.make_node(op, ins, [out], name=unique_name(f"{out}_op", taken), **kw)

        replace[pos] = [
            mk("Abs", [x], t["abs"]),
            mk("ReduceMax", [t["abs"], shared["axes"].name], t["max"], keepdims=1),
            mk("Mul", [t["max"], shared["inv"].name], t["s"]),
            mk("Max", [t["s"], shared["tiny"].name], t["sc"]),
            mk("Div", [x, t["sc"]], t["xs"]),
            mk("QuantizeLinear", [t["xs"], shared["one"].name, shared["zp"].name], t["q"]),
            mk("MatMulInteger", mm_inputs, t["acc"]),
            mk("Cast", [t["acc"]], t["f"], to=TensorProto.FLOAT),
            mk("Mul", [t["f"], t["sc"]], t["m"]),
        ]
        if bias:
            out = unique_name(f"{base}_dyn_y", taken)
            replace[pos] += [mk("Mul", [t["m"], w_scale.name], out), mk("Add", [out, bias], node.output[0])]
        else:
            replace[pos].append(mk("Mul", [t["m"], w_scale.name], node.output[0]))
    if replace:
        graph.initializer.extend(shared.values())
        nodes = [n for pos, old in enumerate(graph.node) for n in replace.get(pos, [old])]
        del graph.node[:]
        graph.node.extend(nodes)
        remove_unused(graph)
    return model, len(replace)


__all__ = ["dynamic_linears"]
