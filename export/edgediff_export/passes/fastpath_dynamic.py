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
When the activation already is the exporter's own fake quantization (per-token dynamic ranges of
transformer recipes, `fake_quant_math`: `Mul(Sub(Clip(Add(Round(Div(x, s)), z), 0, 255), z), s)`),
its integer codes are used as they are and the zero point is taken out after the product:
y = s w_s (MatMulInteger(q, W, 0, w_z) - z sum_k (W_kn - w_z)), the same value as the float graph
up to float rounding, with the bundle's calibrated quantizer unchanged.

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


def _token_codes(idx: GraphIndex, name: str) -> tuple[str, str, str, int, str] | None:
    """(codes, zero point, scale, container type, float input) when `name` is the exporter's (per-token) fake
    quantization `Mul(Sub(Clip(Add(Round(Div(x, s)), z), lo, hi), z), s)` (edgediff.quant.primitives:
    fake_quant_math) with constant bounds 0..255 or -128..127: its Clip output holds the integer codes."""
    mul = idx.producer.get(name)
    if not _is_std(mul, "Mul"):
        return None
    for k in (0, 1):
        sub, scale = idx.producer.get(mul.input[k]), mul.input[1 - k]
        if not _is_std(sub, "Sub"):
            continue
        clip, zero = idx.producer.get(sub.input[0]), sub.input[1]
        if not _is_std(clip, "Clip") or len(clip.input) < 3:
            continue
        lo, hi = idx.value(clip.input[1]), idx.value(clip.input[2])
        if lo is None or hi is None:
            continue
        bounds = (float(lo), float(hi))
        kind = {(0.0, 255.0): TensorProto.UINT8, (-128.0, 127.0): TensorProto.INT8}.get(bounds)
        add = idx.producer.get(clip.input[0])
        if kind is None or not _is_std(add, "Add") or zero not in add.input:
            continue
        rnd = idx.producer.get(add.input[1 - list(add.input).index(zero)])
        div = idx.producer.get(rnd.input[0]) if _is_std(rnd, "Round") else None
        if _is_std(div, "Div") and div.input[1] == scale:
            return clip.output[0], zero, scale, kind, div.input[0]
    return None


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


def dynamic_linears(model: onnx.ModelProto, reuse_codes: bool = True) -> tuple[onnx.ModelProto, int]:
    """Rewrite every eligible linear (module docstring); returns the model and the count.

    `reuse_codes=False` (pass `dynamic-linears-sym`): the exported fake quantization of an activation
    is bypassed as well and every linear gets the symmetric per-token quantizer from its float input
    (fewer float ops; a different activation quantizer, so outputs change by its rounding)."""
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
        base = node.name or node.output[0]

        def mk(op, ins, out, **kw):
            return helper.make_node(op, ins, [out], name=unique_name(f"{out}_op", taken), **kw)

        token = _token_codes(idx, node.input[0])
        if token is not None and reuse_codes:
            replace[pos] = _exact_nodes(
                graph, idx, node, token, codes_name, scale, zero_point, bias, taken, mk
            )
            continue
        x = token[4] if token is not None else _float_source(idx, node.input[0])
        t = {
            k: unique_name(f"{base}_dyn_{k}", taken)
            for k in ("abs", "max", "s", "sc", "xs", "q", "acc", "f", "m")
        }
        w_scale = numpy_helper.from_array(
            scale.astype(np.float32).reshape(-1), unique_name(f"{base}_ws", taken)
        )
        graph.initializer.append(w_scale)
        mm_inputs = [t["q"], codes_name, shared["zp"].name] + ([zero_point] if zero_point else [])

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


def _exact_nodes(graph, idx, node, token, codes_name, scale, zero_point, bias, taken, mk) -> list:
    """The linear on the activation codes the exported graph already computes (fake_quant_math):
    y = s_x w_s (sum_k q_k (W_kn - w_z) - z_x sum_k (W_kn - w_z)), one integer product, exact."""
    codes_src, zero, x_scale, kind, _ = token
    base = node.name or node.output[0]
    t = {k: unique_name(f"{base}_tok_{k}", taken) for k in ("q", "acc", "f", "zc", "c", "m", "y")}
    codes = idx.value(codes_name) if codes_name in idx.initializers else None
    if codes is None:  # transposed by this pass: find the new initializer
        codes = numpy_helper.to_array(next(i for i in graph.initializer if i.name == codes_name))
    wz = idx.value(zero_point) if zero_point else None
    centred = codes.astype(np.int64) - (0 if wz is None else wz.astype(np.int64).reshape(1, -1))
    colsum = numpy_helper.from_array(
        centred.sum(axis=0).astype(np.float32), unique_name(f"{base}_colsum", taken)
    )
    w_scale = numpy_helper.from_array(scale.astype(np.float32).reshape(-1), unique_name(f"{base}_ws", taken))
    graph.initializer.extend([colsum, w_scale])
    mm_inputs = [t["q"], codes_name] + (["", zero_point] if zero_point else [])
    out = [
        mk("Cast", [codes_src], t["q"], to=kind),
        mk("MatMulInteger", mm_inputs, t["acc"]),
        mk("Cast", [t["acc"]], t["f"], to=TensorProto.FLOAT),
        mk("Mul", [zero, colsum.name], t["zc"]),
        mk("Sub", [t["f"], t["zc"]], t["c"]),
        mk("Mul", [t["c"], x_scale], t["m"]),
    ]
    if bias:
        out += [mk("Mul", [t["m"], w_scale.name], t["y"]), mk("Add", [t["y"], bias], node.output[0])]
    else:
        out.append(mk("Mul", [t["m"], w_scale.name], node.output[0]))
    return out


def dynamic_linears_sym(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """`dynamic_linears` with its own symmetric per-token quantizer on every linear."""
    return dynamic_linears(model, reuse_codes=False)


__all__ = ["dynamic_linears", "dynamic_linears_sym"]
