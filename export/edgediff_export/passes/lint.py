"""Lint an ONNX model against TensorRT's rules and a device profile (docs/design.md section 5).

``lint(model, profile)`` returns one :class:`Violation` per problem; export refuses to write a bundle
while any remain. The profile is a dict with the device-profile keys that matter here:
``name``, ``tensorrt`` (version string; absent/empty = the device runs ONNX Runtime only, and the
TensorRT-only rules are skipped), ``precisions`` (``fp32``, ``fp16``, ``bf16``, ``fp8``, ``int8``,
``int4-weight-only``, ``int2-weight-only``), ``max_opset``, ``plugin_flavour``.

Rules (``Violation.rule``):

``opset``               ai.onnx opset above the profile's ``max_opset``.
``precision``           a tensor type the device lacks (FP8 on Orin, FP16 on a CPU profile, ...).
``weight-container``    a 4-/2-bit weight container the profile does not list (``int4-weight-only``).
``qdq-asymmetric``      [TensorRT] Q/DQ with a nonzero zero point or an unsigned type (TensorRT
                        quantization is symmetric signed; UINT8 only as network I/O).
``qdq-dynamic-scale``   [TensorRT] Q/DQ scale or zero point computed at run time (per-step tables).
``low-bit-activation``  [TensorRT] ``QuantizeLinear`` to a sub-8-bit type (INT4 is weight-only).
``unsupported-op``      [TensorRT] an op outside TensorRT's ONNX parser list or a foreign domain.
``custom-op``           [TensorRT] a malformed ``edgediff`` node (attributes, input count, Wq int8,
                        signs uint8) or a device without a plugin path.
``custom-op-function``  [TensorRT] the file carries the ``edgediff`` function bodies: TensorRT's parser
                        imports a model-local function before it tries a plugin, so the plugin would
                        never be used (strip with ``remove_edgediff_functions``).

docs/methods.md sections 1.7 and 6.13 list the TensorRT constraints;
docs/deployment.md section 0 the device ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto

from edgediff_export.ops import EDGEDIFF_DOMAIN, EDGEDIFF_OPS, PLUGIN_NAMESPACE, PLUGIN_VERSION
from edgediff_export.passes._graph import GraphIndex, attr, default_opset, node_label

#: ONNX ops TensorRT's ONNX parser imports (onnx-tensorrt docs/operators.md, TensorRT 10.x, "Y" rows).
TRT_SUPPORTED_OPS: frozenset[str] = frozenset(
    """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast CastLike
    Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace
    DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements
    GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample
    GroupNormalization GRU HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf
    IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool
    MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not
    OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
    RandomUniformLike Range Reciprocal ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin
    ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh
    Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax
    Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose
    Trilu Unsqueeze Upsample Where Xor
    """.split()
)

_FP8 = {
    TensorProto.FLOAT8E4M3FN,
    TensorProto.FLOAT8E4M3FNUZ,
    TensorProto.FLOAT8E5M2,
    TensorProto.FLOAT8E5M2FNUZ,
    TensorProto.FLOAT8E8M0,
}
_LOW_BIT = {
    TensorProto.INT4: "int4-weight-only",
    TensorProto.UINT4: "int4-weight-only",
    TensorProto.INT2: "int2-weight-only",
    TensorProto.UINT2: "int2-weight-only",
}
_SUB8 = set(_LOW_BIT) | {TensorProto.FLOAT4E2M1}
_QDQ = ("QuantizeLinear", "DequantizeLinear")
_TYPE_PRECISION: dict[int, str] = {
    **{t: "fp8" for t in _FP8},
    TensorProto.FLOAT4E2M1: "fp4",
    TensorProto.FLOAT16: "fp16",
    TensorProto.BFLOAT16: "bf16",
}


@dataclass(frozen=True)
class Violation:
    """One lint finding: the node (or tensor / ``<model>``), the rule id and a one-line message."""

    node: str
    rule: str
    message: str


def format_violations(violations: Iterable[Violation]) -> str:
    """One line per violation: ``<node>: [<rule>] <message>``."""
    return "\n".join(f"{v.node}: [{v.rule}] {v.message}" for v in violations)


#: What to do about each rule (printed once per rule by :func:`format_grouped`).
RULE_FIXES: dict[str, str] = {
    "opset": "export with --opset at or below the device's max_opset",
    "precision": "export in a precision the device lists (edgediff devices show DEVICE)",
    "weight-container": "fold weights into a container the device has (fold_weights min_bits=4 or 8)",
    "qdq-asymmetric": "export with --placement trt (symmetric int8), or quantize with --symmetric-weights",
    "qdq-dynamic-scale": "use static activation ranges (a_mode static) or one engine per step group",
    "low-bit-activation": "quantize activations to 8 bits (sub-8-bit is emulated with Clip + int8 Q/DQ)",
    "unsupported-op": "keep the op out of the TensorRT graph (plugin or a different export)",
    "custom-op": "re-export the bundle so the edgediff nodes are rebuilt by edgediff_export.ops",
    "custom-op-function": "strip the function bodies (remove_edgediff_functions) for TensorRT",
}


def format_grouped(violations: Iterable[Violation], examples: int = 3) -> str:
    """Findings grouped by rule (first seen first): a count per rule and per distinct message, a few
    example nodes and the rule's suggested fix, so 240 identical findings read as one block."""
    groups: dict[str, dict[str, list[str]]] = {}
    for v in violations:
        groups.setdefault(v.rule, {}).setdefault(v.message, []).append(v.node)
    lines = []
    for rule, messages in groups.items():
        total = sum(len(nodes) for nodes in messages.values())
        lines.append(f"[{rule}] {total} finding{'s' if total != 1 else ''}")
        for message, nodes in messages.items():
            more = f", +{len(nodes) - examples} more" if len(nodes) > examples else ""
            shown = ", ".join(nodes[:examples]) + more
            lines.append(f"  {len(nodes)}x {message}")
            lines.append(f"      at {shown}")
        if rule in RULE_FIXES:
            lines.append(f"  fix: {RULE_FIXES[rule]}")
    return "\n".join(lines)


def _profile_dict(profile: Mapping[str, Any] | Any) -> dict[str, Any]:
    if isinstance(profile, Mapping):
        return dict(profile)
    if hasattr(profile, "to_dict"):
        return dict(profile.to_dict())
    raise TypeError("profile must be a dict (device profile keys) or have to_dict()")


def _type_name(t: int) -> str:
    return TensorProto.DataType.Name(t)


def _tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor we can type (initializers, I/O, value_info after inference)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False)
    except Exception:  # noqa: BLE001 - lint must not fail on a model inference cannot handle
        inferred = model
    g = inferred.graph
    types: dict[str, int] = {}
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for t in g.initializer:
        types[t.name] = t.data_type
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    types[n.output[0]] = a.t.data_type
    return types


def _all_nodes(graph: onnx.GraphProto) -> Iterable[onnx.NodeProto]:
    for n in graph.node:
        yield n
        for a in n.attribute:
            for g in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                yield from _all_nodes(g)


def lint(model: onnx.ModelProto, profile: Mapping[str, Any] | Any) -> list[Violation]:
    """Check ``model`` against ``profile`` (see the module docstring for the rules)."""
    p = _profile_dict(profile)
    precisions = set(p.get("precisions") or [])
    trt = bool(p.get("tensorrt"))
    device = p.get("name", "device")
    out: list[Violation] = []
    opset = default_opset(model)
    max_opset = p.get("max_opset")
    if max_opset is not None and opset > int(max_opset):
        out.append(
            Violation(
                "<model>",
                "opset",
                f"ai.onnx opset {opset} > {device} max_opset {max_opset}; export at opset {max_opset} "
                "or drop the low-bit containers that needed the upgrade",
            )
        )
    types = _tensor_types(model)
    idx = GraphIndex(model.graph)
    out += _lint_precisions(model, types, precisions, device)
    for node in model.graph.node:
        if node.op_type in _QDQ and node.domain in ("", "ai.onnx"):
            out += _lint_qdq(node, idx, types, precisions, device, trt)
    if trt:
        out += _lint_ops(model, idx, types, p)
    return out


def _lint_precisions(
    model: onnx.ModelProto, types: dict[str, int], precisions: set[str], device: str
) -> list[Violation]:
    seen: dict[int, str] = {}
    for name, t in types.items():
        seen.setdefault(t, name)
    for n in _all_nodes(model.graph):
        for key in ("to", "output_dtype"):
            v = attr(n, key)
            if isinstance(v, int) and v:
                seen.setdefault(v, node_label(n))
    out = []
    for t, where in seen.items():
        need = _TYPE_PRECISION.get(t)
        if need and need not in precisions:
            out.append(
                Violation(
                    where,
                    "precision",
                    f"{_type_name(t)} needs '{need}', which {device} lacks (it has {sorted(precisions)}); "
                    "export in a precision the device runs",
                )
            )
    return out


def _lint_qdq(
    node: onnx.NodeProto,
    idx: GraphIndex,
    types: dict[str, int],
    precisions: set[str],
    device: str,
    trt: bool,
) -> list[Violation]:
    label = node_label(node)
    out: list[Violation] = []
    is_q = node.op_type == "QuantizeLinear"
    zname = node.input[2] if len(node.input) > 2 else ""
    qtype = types.get(zname) if zname else None
    if qtype is None:
        qtype = types.get(node.output[0]) if is_q else types.get(node.input[0])
    if qtype is None and is_q:
        qtype = int(attr(node, "output_dtype", 0) or TensorProto.UINT8)
    weight = (not is_q) and idx.is_constant(node.input[0])
    tname = _type_name(qtype) if qtype else "unknown type"
    if not weight and qtype in _SUB8:  # the profiles only know weight-only sub-8-bit precisions
        out.append(
            Violation(
                label,
                "low-bit-activation",
                f"{tname} activation quantization: sub-8-bit is weight-only on {device}; emulate sub-8-bit "
                "activations with Clip + int8 Q/DQ (docs/methods.md 1.7)",
            )
        )
    elif weight and qtype in _LOW_BIT:
        need = _LOW_BIT[qtype]
        if need not in precisions or (trt and qtype == TensorProto.INT2):
            out.append(
                Violation(
                    label,
                    "weight-container",
                    f"{tname} weight needs '{need}', which {device} lacks; fold with a larger container "
                    "(fold_weights min_bits=4 or 8)",
                )
            )
    if qtype in (TensorProto.INT8, TensorProto.UINT8) and "int8" not in precisions:
        out.append(Violation(label, "precision", f"int8 Q/DQ needs 'int8', which {device} lacks"))
    if not trt:
        return out
    for name in node.input[1:]:
        if name and not idx.is_constant(name):
            out.append(
                Violation(
                    label,
                    "qdq-dynamic-scale",
                    f"scale/zero point {name!r} is computed at run time; TensorRT needs constants "
                    "(one engine per step or step group, or a plugin)",
                )
            )
    if qtype in (TensorProto.UINT8, TensorProto.UINT16, TensorProto.UINT4, TensorProto.UINT2):
        out.append(
            Violation(
                label,
                "qdq-asymmetric",
                f"{tname} Q/DQ: TensorRT quantizes to signed symmetric types only; run symmetrize_int8 "
                "(weights) or placement 'trt' (activations)",
            )
        )
    elif zname and idx.is_constant(zname):
        z = idx.value(zname)
        if z is not None and np.any(np.asarray(z).astype(np.float64) != 0):
            out.append(
                Violation(
                    label,
                    "qdq-asymmetric",
                    "nonzero zero point: TensorRT quantization is symmetric; run symmetrize_int8 (weights) "
                    "or placement 'trt' (activations)",
                )
            )
    return out


def _lint_ops(
    model: onnx.ModelProto, idx: GraphIndex, types: dict[str, int], p: dict[str, Any]
) -> list[Violation]:
    out: list[Violation] = []
    has_functions = any(f.domain == EDGEDIFF_DOMAIN for f in model.functions)
    flavour = p.get("plugin_flavour") or "none"
    for node in _all_nodes(model.graph):
        label = node_label(node)
        if node.domain in ("", "ai.onnx"):
            if node.op_type not in TRT_SUPPORTED_OPS:
                out.append(
                    Violation(
                        label,
                        "unsupported-op",
                        f"{node.op_type} is not imported by TensorRT's ONNX parser; keep it out of the "
                        "TensorRT graph (plugin or different export)",
                    )
                )
            continue
        if node.domain != EDGEDIFF_DOMAIN:
            out.append(
                Violation(
                    label,
                    "unsupported-op",
                    f"{node.domain}::{node.op_type} is outside ai.onnx and edgediff; "
                    "TensorRT has no importer for it",
                )
            )
            continue
        out += _lint_edgediff_node(node, types, flavour, has_functions)
    return out


def _lint_edgediff_node(
    node: onnx.NodeProto, types: dict[str, int], flavour: str, has_functions: bool
) -> list[Violation]:
    label = node_label(node)
    problems: list[str] = []
    if node.op_type not in EDGEDIFF_OPS:
        problems.append(f"unknown op edgediff::{node.op_type} (known: {', '.join(EDGEDIFF_OPS)})")
    ns, ver = attr(node, "plugin_namespace"), attr(node, "plugin_version")
    if ns is None or ver is None:
        problems.append("missing plugin_namespace/plugin_version attributes")
    elif ns.decode() != PLUGIN_NAMESPACE or ver.decode() != PLUGIN_VERSION:
        problems.append(
            f"plugin {ns.decode()}/{ver.decode()} does not match the shipped plugin "
            f"{PLUGIN_NAMESPACE}/{PLUGIN_VERSION}"
        )
    n_in = len(node.input)
    if n_in not in (7, 8):
        problems.append(f"{n_in} inputs, expected 7 or 8")
    if len(node.input) > 1:
        t = types.get(node.input[1])
        if t is not None and t != TensorProto.INT8:
            problems.append(f"Wq is {_type_name(t)}, expected INT8")
    if len(node.input) > 4:
        t = types.get(node.input[4])
        if t is not None and t != TensorProto.UINT8:
            problems.append(f"signs is {_type_name(t)}, expected UINT8")
    if node.op_type == "ResidualBinaryLinear" and attr(node, "in_features") is None:
        problems.append("missing in_features attribute")
    if node.op_type == "ResidualBinaryConv" and attr(node, "kernel_shape") is None:
        problems.append("missing kernel_shape attribute")
    out = [
        Violation(label, "custom-op", f"malformed edgediff node: {msg}; rebuild it with edgediff_export.ops")
        for msg in problems
    ]
    if flavour == "none":
        out.append(
            Violation(
                label,
                "custom-op",
                "the device has no TensorRT plugin path (plugin_flavour none); "
                "lower with --residual standard",
            )
        )
    if has_functions:
        out.append(
            Violation(
                label,
                "custom-op-function",
                "the model carries the edgediff function body, which TensorRT's parser imports instead "
                "of the plugin; strip it with ops.remove_edgediff_functions for the TensorRT file",
            )
        )
    return out


__all__ = ["TRT_SUPPORTED_OPS", "Violation", "format_violations", "lint"]
