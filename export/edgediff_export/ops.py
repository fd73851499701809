"""edgediff custom ONNX ops: bit packing, node helpers, schemas and standard-op function bodies.

Two ops live in the ``edgediff`` domain (docs/methods.md section 2.4, docs/design.md section 1 ``ops.py``):

``edgediff::ResidualBinaryLinear``
    inputs ``X`` float [..., Cin] (already fake-quantized), ``Wq`` int8 [Cout, Cin], ``w_scale``
    float [Cout], ``w_zero`` int8 [Cout], ``signs`` uint8 [K, ceil(Cin/8)] (bit b, LSB first, of byte j
    is the sign of column 8j+b: 1 -> +1, 0 -> -1, padding bits 0), ``alpha`` float [K], ``channels``
    int64 [K] (sorted, unique), optional ``bias`` float [Cout]. Attributes ``plugin_namespace``,
    ``plugin_version``, ``in_features``.
    ``Y = X @ (w_scale * (Wq - w_zero))^T + bias``, then ``Y[..., channels[k]] += alpha[k] * X @ sign[k]``.

``edgediff::ResidualBinaryConv``
    same inputs with ``X`` NCHW and ``Wq`` [Cout, Cin/group, kh, kw]; the signs of a residual channel
    are packed over its flattened (Cin/group * kh * kw) row. Attributes ``strides``, ``pads``
    ([top, left, bottom, right]), ``dilations``, ``group``, ``kernel_shape`` + the plugin attributes.

The TensorRT plugin implements the same contract. For ONNX Runtime the model carries model-local
``FunctionProto``s whose bodies use standard ops only (docs/deployment.md section 11: "a model-local
FunctionProto lets ONNX Runtime run the same file with no extra library"), added by
:func:`add_edgediff_functions`. :func:`lower_residual_to_standard` inlines them (``--residual
standard``). **TensorRT's ONNX parser imports a model-local function before it looks for a plugin
of the same name** (onnx-tensorrt ``ModelImporter.cpp``: builtin importer, then local function,
then the fallback plugin importer), so a file meant for the plugin must go through
:func:`remove_edgediff_functions` first.

Torch-free: numpy + onnx only (docs/design.md section 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgediff_export.errors import ExportError
from edgediff_export.signs import pack_signs, unpack_signs
from edgediff_export.trt import numpy_ref

EDGEDIFF_DOMAIN = "edgediff"
PLUGIN_NAMESPACE = "edgediff"
PLUGIN_VERSION = "1"
LINEAR_OP = "ResidualBinaryLinear"
CONV_OP = "ResidualBinaryConv"
EDGEDIFF_OPS = (LINEAR_OP, CONV_OP)
#: Lowest default-domain opset the function bodies need (BitwiseAnd is opset 18).
FUNCTION_MIN_OPSET = 18

_INPUT_NAMES = ("X", "Wq", "w_scale", "w_zero", "signs", "alpha", "channels", "bias")
_LINEAR_ATTRS = ("plugin_namespace", "plugin_version", "in_features")
_CONV_ATTRS = ("plugin_namespace", "plugin_version", "strides", "pads", "dilations", "group", "kernel_shape")


# --------------------------------------------------------------------------------------------------
# Numpy reference (the contract, executable)
# --------------------------------------------------------------------------------------------------


def residual_binary_weight(
    wq: np.ndarray,
    w_scale: np.ndarray,
    w_zero: np.ndarray,
    signs: np.ndarray,
    alpha: np.ndarray,
    channels: np.ndarray,
) -> np.ndarray:
    """Effective float32 weight of either op: ``w_scale·(Wq − w_zero)`` plus ``alpha[k]·sign[k]`` rows
    (docs/methods.md section 2.4); the one numpy reference lives in ``trt/numpy_ref.py``."""
    return numpy_ref.dense_weight(wq, w_scale, w_zero, signs, alpha, channels).astype(np.float32)


def reference_residual_binary_linear(
    x: np.ndarray,
    wq: np.ndarray,
    w_scale: np.ndarray,
    w_zero: np.ndarray,
    signs: np.ndarray,
    alpha: np.ndarray,
    channels: np.ndarray,
    bias: np.ndarray | None = None,
) -> np.ndarray:
    """Numpy reference of ``edgediff::ResidualBinaryLinear`` (float64 accumulation, float32 result)."""
    return numpy_ref.residual_binary_linear(x, wq, w_scale, w_zero, signs, alpha, channels, bias, np.float32)


def reference_conv2d(
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: Sequence[int] = (1, 1),
    group: int = 1,
) -> np.ndarray:
    """Plain NCHW conv in numpy (float64 accumulation, float32 result)."""
    y = numpy_ref.conv2d(
        np.asarray(x, np.float64), np.asarray(w, np.float64), strides, pads, dilations, group
    )
    if bias is not None:
        y = y + np.asarray(bias, np.float64).reshape(1, -1, 1, 1)
    return y.astype(np.float32)


def reference_residual_binary_conv(
    x: np.ndarray,
    wq: np.ndarray,
    w_scale: np.ndarray,
    w_zero: np.ndarray,
    signs: np.ndarray,
    alpha: np.ndarray,
    channels: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: Sequence[int] = (1, 1),
    group: int = 1,
) -> np.ndarray:
    """Numpy reference of ``edgediff::ResidualBinaryConv``."""
    return numpy_ref.residual_binary_conv(
        x, wq, w_scale, w_zero, signs, alpha, channels, bias, strides, pads, dilations, group, np.float32
    )


# --------------------------------------------------------------------------------------------------
# Node and initializer helpers
# --------------------------------------------------------------------------------------------------


def _check_io(inputs: Sequence[str], outputs: Sequence[str] | str, op: str) -> tuple[list[str], list[str]]:
    ins = list(inputs)
    outs = [outputs] if isinstance(outputs, str) else list(outputs)
    if len(ins) not in (7, 8) or any(not n for n in ins[:7]):
        raise ExportError(
            f"{op} takes 7 named inputs (X, Wq, w_scale, w_zero, signs, alpha, channels) plus an optional "
            f"bias, got {ins}; pass the input names in that order"
        )
    if len(ins) == 8 and not ins[7]:
        ins = ins[:7]
    if len(outs) != 1:
        raise ExportError(f"{op} has exactly one output, got {outs}")
    return ins, outs


def make_residual_binary_linear_node(
    inputs: Sequence[str],
    outputs: Sequence[str] | str,
    *,
    in_features: int,
    name: str | None = None,
) -> onnx.NodeProto:
    """``edgediff::ResidualBinaryLinear`` node with the plugin attributes (docs/methods.md section 2.4)."""
    ins, outs = _check_io(inputs, outputs, LINEAR_OP)
    return helper.make_node(
        LINEAR_OP,
        ins,
        outs,
        name=name,
        domain=EDGEDIFF_DOMAIN,
        plugin_namespace=PLUGIN_NAMESPACE,
        plugin_version=PLUGIN_VERSION,
        in_features=int(in_features),
    )


def make_residual_binary_conv_node(
    inputs: Sequence[str],
    outputs: Sequence[str] | str,
    *,
    kernel_shape: Sequence[int],
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: Sequence[int] = (1, 1),
    group: int = 1,
    name: str | None = None,
) -> onnx.NodeProto:
    """``edgediff::ResidualBinaryConv`` node; ``pads`` is [top, left, bottom, right] (docs/methods.md 2.4)."""
    ins, outs = _check_io(inputs, outputs, CONV_OP)
    if len(kernel_shape) != 2 or len(strides) != 2 or len(dilations) != 2 or len(pads) != 4:
        raise ExportError(
            "ResidualBinaryConv is 2-D: kernel_shape, strides, dilations need 2 values and pads 4 "
            f"(got {list(kernel_shape)}, {list(strides)}, {list(dilations)}, {list(pads)})"
        )
    return helper.make_node(
        CONV_OP,
        ins,
        outs,
        name=name,
        domain=EDGEDIFF_DOMAIN,
        plugin_namespace=PLUGIN_NAMESPACE,
        plugin_version=PLUGIN_VERSION,
        kernel_shape=[int(v) for v in kernel_shape],
        strides=[int(v) for v in strides],
        pads=[int(v) for v in pads],
        dilations=[int(v) for v in dilations],
        group=int(group),
    )


def make_residual_binary_initializers(
    prefix: str,
    *,
    wq: np.ndarray,
    w_scale: np.ndarray,
    w_zero: np.ndarray,
    signs: np.ndarray,
    alpha: np.ndarray,
    channels: np.ndarray,
    bias: np.ndarray | None = None,
) -> tuple[list[onnx.TensorProto], list[str]]:
    """Validate the weight-side operands and return (initializers, input names without ``X``).

    ``signs`` is the ±1 matrix [K, row] (packed here). Names are ``{prefix}.Wq`` etc. Raises
    :class:`ExportError` on a contract violation (dtype ranges, shapes, unsorted or repeated channels).
    """
    wq = np.asarray(wq)
    cout = wq.shape[0] if wq.ndim else 0
    row = int(np.prod(wq.shape[1:], dtype=np.int64)) if wq.ndim >= 2 else 0
    if wq.ndim not in (2, 4):
        raise ExportError(f"{prefix}: Wq must be [Cout, Cin] or [Cout, Cin/group, kh, kw], got {wq.shape}")
    if not np.issubdtype(wq.dtype, np.integer) or wq.min(initial=0) < -128 or wq.max(initial=0) > 127:
        raise ExportError(
            f"{prefix}: Wq must hold int8 codes in [-128, 127]; symmetrize or clip the codes first"
        )
    w_zero = np.asarray(w_zero)
    if np.any(w_zero != np.round(w_zero)) or w_zero.min(initial=0) < -128 or w_zero.max(initial=0) > 127:
        raise ExportError(f"{prefix}: w_zero must be integers in [-128, 127]; round the learned zero points")
    channels = np.asarray(channels, np.int64).reshape(-1)
    k = channels.size
    if k and (np.any(np.diff(channels) <= 0) or channels[0] < 0 or channels[-1] >= cout):
        raise ExportError(f"{prefix}: residual channels must be sorted, unique and in [0, {cout}); sort them")
    signs = np.asarray(signs)
    if signs.size == 0:
        signs = np.ones((k, row), np.int8)
    if signs.shape != (k, row):
        raise ExportError(f"{prefix}: signs must be [K={k}, {row}] (±1), got {signs.shape}")
    alpha = np.asarray(alpha, np.float32).reshape(-1)
    if alpha.size != k:
        raise ExportError(f"{prefix}: alpha has {alpha.size} values for {k} residual channels")
    w_scale = np.asarray(w_scale, np.float32).reshape(-1)
    if w_scale.size != cout or w_zero.size != cout:
        raise ExportError(f"{prefix}: w_scale and w_zero need {cout} values (one per output channel)")
    arrays: dict[str, np.ndarray] = {
        "Wq": wq.astype(np.int8),
        "w_scale": w_scale,
        "w_zero": w_zero.reshape(-1).astype(np.int8),
        "signs": pack_signs(signs),
        "alpha": alpha,
        "channels": channels,
    }
    if bias is not None:
        b = np.asarray(bias, np.float32).reshape(-1)
        if b.size != cout:
            raise ExportError(f"{prefix}: bias needs {cout} values, got {b.size}")
        arrays["bias"] = b
    inits = [numpy_helper.from_array(v, f"{prefix}.{k_}") for k_, v in arrays.items()]
    return inits, [t.name for t in inits]


# --------------------------------------------------------------------------------------------------
# Schemas (for onnx.checker / shape inference; ONNX Runtime does not need them)
# --------------------------------------------------------------------------------------------------


def _schema(name: str, conv: bool) -> onnx.defs.OpSchema:
    fp = onnx.defs.OpSchema.FormalParameter
    opt = onnx.defs.OpSchema.FormalParameterOption.Optional
    attr = onnx.defs.OpSchema.Attribute
    at = onnx.defs.OpSchema.AttrType
    inputs = [
        fp("X", "T", "activation (already fake-quantized)"),
        fp("Wq", "tensor(int8)", "main weight codes"),
        fp("w_scale", "T", "per-output-channel scale"),
        fp("w_zero", "tensor(int8)", "per-output-channel zero point"),
        fp("signs", "tensor(uint8)", "packed residual signs, LSB first"),
        fp("alpha", "T", "residual scale per residual channel"),
        fp("channels", "tensor(int64)", "sorted unique residual output channels"),
        fp("bias", "T", "optional bias [Cout]", param_option=opt),
    ]
    attrs = [
        attr("plugin_namespace", at.STRING, "TensorRT plugin namespace", required=True),
        attr("plugin_version", at.STRING, "TensorRT plugin version", required=True),
    ]
    if conv:
        attrs += [
            attr("kernel_shape", at.INTS, "kernel [kh, kw]", required=True),
            attr("strides", at.INTS, "strides", required=False),
            attr("pads", at.INTS, "pads [top, left, bottom, right]", required=False),
            attr("dilations", at.INTS, "dilations", required=False),
            attr("group", at.INT, "groups", required=False),
        ]
    else:
        attrs.append(attr("in_features", at.INT, "Cin", required=True))
    return onnx.defs.OpSchema(
        name,
        EDGEDIFF_DOMAIN,
        1,
        f"edgediff {name}: main int8 weight plus a packed binary residual (docs/methods.md section 2.4).",
        inputs=inputs,
        outputs=[fp("Y", "T", "output")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "float types")],
        attributes=attrs,
    )


def register_edgediff_schemas() -> None:
    """Register ``OpSchema``s for both ops with onnx (idempotent; process-wide).

    Not needed for ``check_model(full_check=True)`` when the model carries the functions (checked:
    shape inference goes through the model-local function bodies); it lets a model that carries only
    the custom node (the TensorRT file) pass the checker with types inferred.
    """
    for name, conv in ((LINEAR_OP, False), (CONV_OP, True)):
        if not onnx.defs.has(name, EDGEDIFF_DOMAIN):
            onnx.defs.register_schema(_schema(name, conv))


# --------------------------------------------------------------------------------------------------
# Function bodies (standard ops only)
# --------------------------------------------------------------------------------------------------


def _const(name: str, arr: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(arr), name))


def _residual_weight_nodes() -> list[onnx.NodeProto]:
    """Body nodes computing ``W`` (float, shape of ``Wq``) from the weight-side inputs.

    signs [K, B] -> Unsqueeze [K, B, 1] -> BitShift RIGHT by [0..7] -> BitwiseAnd 1 -> [K, B, 8]
    -> Reshape [K, 8B] -> Slice [:, :row] -> ±1 -> * alpha -> Reshape [K, *row_shape] -> ScatterND
    into zeros(shape(Wq)) at channels -> + DequantizeLinear(Wq, w_scale, w_zero, axis=0).
    """
    mk = helper.make_node
    return [
        mk("DequantizeLinear", ["Wq", "w_scale", "w_zero"], ["w_main"], axis=0),
        _const("c_shifts", np.arange(8, dtype=np.uint8)),
        _const("c_one_u8", np.array(1, np.uint8)),
        _const("c_last", np.array([-1], np.int64)),
        _const("c_zero_i", np.array([0], np.int64)),
        _const("c_one_i", np.array([1], np.int64)),
        _const("c_eight", np.array([8], np.int64)),
        _const("c_one_f", np.array(1.0, np.float32)),
        mk("Unsqueeze", ["signs", "c_last"], ["signs3"]),
        mk("BitShift", ["signs3", "c_shifts"], ["shifted"], direction="RIGHT"),
        mk("BitwiseAnd", ["shifted", "c_one_u8"], ["bits3"]),
        mk("Shape", ["Wq"], ["w_shape"]),
        mk("Shape", ["Wq"], ["row_shape"], start=1),
        mk("ReduceProd", ["row_shape"], ["row_len"], keepdims=1),
        mk("Shape", ["channels"], ["k_len"]),
        mk("Shape", ["signs"], ["n_bytes"], start=1),
        mk("Mul", ["n_bytes", "c_eight"], ["n_bits"]),
        mk("Concat", ["k_len", "n_bits"], ["bits_shape"], axis=0),
        mk("Reshape", ["bits3", "bits_shape"], ["bits2"]),
        mk("Slice", ["bits2", "c_zero_i", "row_len", "c_one_i"], ["bits"]),
        mk("CastLike", ["bits", "w_main"], ["bits_f"]),
        mk("CastLike", ["c_one_f", "w_main"], ["one_f"]),
        mk("Add", ["bits_f", "bits_f"], ["two_bits"]),
        mk("Sub", ["two_bits", "one_f"], ["sign_pm"]),
        mk("CastLike", ["alpha", "w_main"], ["alpha_f"]),
        mk("Unsqueeze", ["alpha_f", "c_last"], ["alpha_col"]),
        mk("Mul", ["sign_pm", "alpha_col"], ["rows_flat"]),
        mk("Concat", ["k_len", "row_shape"], ["rows_shape"], axis=0),
        mk("Reshape", ["rows_flat", "rows_shape"], ["rows"]),
        mk("Unsqueeze", ["channels", "c_last"], ["idx"]),
        mk(
            "ConstantOfShape", ["w_shape"], ["zeros0"], value=numpy_helper.from_array(np.zeros(1, np.float32))
        ),
        mk("CastLike", ["zeros0", "w_main"], ["zeros"]),
        mk("ScatterND", ["zeros", "idx", "rows"], ["residual"]),
        mk("Add", ["w_main", "residual"], ["w_sum"]),
        mk("CastLike", ["w_sum", "X"], ["W"]),
    ]


def _attr_ref(name: str, typ: int) -> onnx.AttributeProto:
    a = onnx.AttributeProto()
    a.name = name
    a.ref_attr_name = name
    a.type = typ
    return a


def residual_binary_linear_function(opset: int) -> onnx.FunctionProto:
    """Model-local ``FunctionProto`` for ``edgediff::ResidualBinaryLinear`` (standard ops, ``opset``).

    ``Y = Reshape(Gemm(Flatten(X, -1), W, bias, transB=1), shape(X)[:-1] + [Cout])``; ``Gemm`` takes the
    optional bias, so a node without input 7 needs no second function.
    """
    _check_function_opset(opset)
    mk = helper.make_node
    nodes = _residual_weight_nodes() + [
        mk("Flatten", ["X"], ["x2"], axis=-1),
        mk("Gemm", ["x2", "W", "bias"], ["y2"], transB=1),
        mk("Shape", ["X"], ["lead_shape"], end=-1),
        mk("Shape", ["Wq"], ["cout_shape"], start=0, end=1),
        mk("Concat", ["lead_shape", "cout_shape"], ["y_shape"], axis=0),
        mk("Reshape", ["y2", "y_shape"], ["Y"]),
    ]
    return helper.make_function(
        EDGEDIFF_DOMAIN,
        LINEAR_OP,
        list(_INPUT_NAMES),
        ["Y"],
        nodes,
        [helper.make_opsetid("", opset)],
        attributes=list(_LINEAR_ATTRS),
        doc_string="Standard-op body of edgediff::ResidualBinaryLinear (docs/methods.md section 2.4).",
    )


def residual_binary_conv_function(opset: int) -> onnx.FunctionProto:
    """Model-local ``FunctionProto`` for ``edgediff::ResidualBinaryConv`` (``Conv`` with attribute refs)."""
    _check_function_opset(opset)
    conv = helper.make_node("Conv", ["X", "W", "bias"], ["Y"])
    A = onnx.AttributeProto
    conv.attribute.extend(
        [
            _attr_ref("kernel_shape", A.INTS),
            _attr_ref("strides", A.INTS),
            _attr_ref("pads", A.INTS),
            _attr_ref("dilations", A.INTS),
            _attr_ref("group", A.INT),
        ]
    )
    return helper.make_function(
        EDGEDIFF_DOMAIN,
        CONV_OP,
        list(_INPUT_NAMES),
        ["Y"],
        _residual_weight_nodes() + [conv],
        [helper.make_opsetid("", opset)],
        attributes=list(_CONV_ATTRS),
        doc_string="Standard-op body of edgediff::ResidualBinaryConv (docs/methods.md section 2.4).",
    )


def _check_function_opset(opset: int) -> None:
    if opset < FUNCTION_MIN_OPSET:
        raise ExportError(
            f"the edgediff function bodies need opset >= {FUNCTION_MIN_OPSET} (BitwiseAnd), the model has "
            f"{opset}; export with a newer opset or use the TensorRT plugin file without functions"
        )


def default_opset(model: onnx.ModelProto) -> int:
    """The model's ``ai.onnx`` opset version (0 if it imports none)."""
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return int(op.version)
    return 0


def _edgediff_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    out: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.domain == EDGEDIFF_DOMAIN:
            out.append(node)
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                out += _edgediff_nodes(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    out += _edgediff_nodes(g)
    return out


def _set_opset(model: onnx.ModelProto, domain: str, version: int) -> None:
    for op in model.opset_import:
        if op.domain == domain:
            op.version = version
            return
    model.opset_import.append(helper.make_opsetid(domain, version))


def add_edgediff_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Add the function bodies of the edgediff ops the graph uses and the ``edgediff`` opset import.

    In place; returns ``model``. Functions already present are replaced (built for the model's
    default opset, which must be >= 18). Unknown ``edgediff`` op types raise :class:`ExportError`.
    """
    used = {n.op_type for n in _edgediff_nodes(model.graph)}
    unknown = used - set(EDGEDIFF_OPS)
    if unknown:
        raise ExportError(f"unknown edgediff op(s) {sorted(unknown)}; only {list(EDGEDIFF_OPS)} exist")
    if not used:
        return model
    opset = default_opset(model)
    keep = [f for f in model.functions if not (f.domain == EDGEDIFF_DOMAIN and f.name in used)]
    del model.functions[:]
    model.functions.extend(keep)
    if LINEAR_OP in used:
        model.functions.append(residual_binary_linear_function(opset))
    if CONV_OP in used:
        model.functions.append(residual_binary_conv_function(opset))
    _set_opset(model, EDGEDIFF_DOMAIN, 1)
    return model


def remove_edgediff_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the edgediff function bodies so TensorRT's parser takes the plugin path (in place).

    The nodes stay, and the ``edgediff`` opset import is added when they need it.
    """
    keep = [f for f in model.functions if f.domain != EDGEDIFF_DOMAIN]
    del model.functions[:]
    model.functions.extend(keep)
    if _edgediff_nodes(model.graph):
        _set_opset(model, EDGEDIFF_DOMAIN, 1)
    return model


def lower_residual_to_standard(model: onnx.ModelProto) -> onnx.ModelProto:
    """``--residual standard``: replace every edgediff node by its standard-op body (in place; returns it).

    Adds the functions if missing, inlines them (``onnx.inliner``), then removes the functions and the
    ``edgediff`` opset import. Same outputs as the function-carrying file. The body uses BitShift and
    BitwiseAnd, which TensorRT's parser does not import: this form is for ONNX Runtime and parity.
    """
    from onnx import inliner

    if not _edgediff_nodes(model.graph):
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    add_edgediff_functions(m)
    m = inliner.inline_selected_functions(m, [(EDGEDIFF_DOMAIN, op) for op in EDGEDIFF_OPS], exclude=False)
    remove_edgediff_functions(m)
    keep = [op for op in m.opset_import if op.domain != EDGEDIFF_DOMAIN]
    del m.opset_import[:]
    m.opset_import.extend(keep)
    if _edgediff_nodes(m.graph):
        raise ExportError("lowering left edgediff nodes in the graph; report this as a bug")
    model.CopyFrom(m)
    return model


__all__ = [
    "CONV_OP",
    "EDGEDIFF_DOMAIN",
    "EDGEDIFF_OPS",
    "FUNCTION_MIN_OPSET",
    "LINEAR_OP",
    "PLUGIN_NAMESPACE",
    "PLUGIN_VERSION",
    "add_edgediff_functions",
    "default_opset",
    "lower_residual_to_standard",
    "make_residual_binary_conv_node",
    "make_residual_binary_initializers",
    "make_residual_binary_linear_node",
    "pack_signs",
    "reference_conv2d",
    "reference_residual_binary_conv",
    "reference_residual_binary_linear",
    "register_edgediff_schemas",
    "remove_edgediff_functions",
    "residual_binary_conv_function",
    "residual_binary_linear_function",
    "residual_binary_weight",
    "unpack_signs",
]
