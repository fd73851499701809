"""Graph passes that remove float overhead around the integer kernels ONNX Runtime CPU runs.

Each pass is switchable (`PASSES`, `apply_passes(model, names)`), returns a new model, and leaves
the outputs equal to float32 rounding (tests: tests/export/passes/test_fastpath.py). Measured one by
one on real model sizes by `bench/speed.py` (docs/export-passes.md section 6).

* `groupnorm`: ONNX Runtime 1.32 CPU has no kernel for `GroupNormalization` (opset 18/21): it
  inlines the function body, about 20 nodes per norm (Shape, Reshape, Cast to the stash type,
  ReduceMean, Sub, Div, Sqrt, ...). The pass writes each as `Reshape [N, G, -1] ->
  InstanceNormalization(ones, zeros, eps) -> Reshape [N, C, -1] -> Mul gamma -> Add beta ->
  Reshape back`: the
  per-(n, g) mean and variance over C/G x spatial are exactly the group statistics of
  GroupNorm, y = (x - mu_g) / sqrt(var_g + eps) * gamma_c + beta_c (Wu & He 2018, eq. 1-2).
* `remove-noop-casts`: `Cast` whose input already has the target type (by ONNX shape
  inference) is bypassed.
* `fold-weight-transposes`, `transpose-pairs`, `drop-dq-q-pairs`: integer tensors kept integer
  between ONNX Runtime's integer kernels (`fastpath_int8`).
* `dynamic-linears`: linears on `MatMulInteger` with per-token dynamic activation quantization
  (`fastpath_dynamic`); `dynamic-linears-sym` quantizes every linear input itself (symmetric per
  token) instead of reusing the codes of the exported per-token fake quantization.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgediff_export.errors import ExportError
from edgediff_export.passes._graph import GraphIndex, all_names, attr, remove_unused, unique_name
from edgediff_export.passes.fastpath_dynamic import dynamic_linears, dynamic_linears_sym
from edgediff_export.passes.fastpath_int8 import drop_dq_q_pairs, drop_transpose_pairs, fold_weight_transposes


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=False)
    out = {t.name: t.data_type for t in inferred.graph.initializer}
    for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        if v.type.tensor_type.elem_type:
            out[v.name] = v.type.tensor_type.elem_type
    return out


def groupnorm_to_instancenorm(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Rewrite every top-level `GroupNormalization` (see the module docstring); returns the count.

    Needs opset >= 21 (per-channel scale/bias) and constant scale/bias; other nodes are left as
    they are.
    """
    model = _copy(model)
    graph = model.graph
    opset = _opset(model)
    idx = GraphIndex(graph)
    taken = all_names(graph)
    new_nodes: list[onnx.NodeProto] = []
    count = 0
    for node in graph.node:
        if node.op_type != "GroupNormalization" or node.domain not in ("", "ai.onnx") or opset < 21:
            new_nodes.append(node)  # opset 18-20: scale/bias are per group, a different contract
            continue
        x, scale_name, bias_name = node.input[:3]
        scale, bias = idx.value(scale_name), idx.value(bias_name)
        if scale is None or bias is None:
            new_nodes.append(node)
            continue
        new_nodes += _groupnorm_nodes(node, scale, bias, graph, taken)
        count += 1
    del graph.node[:]
    graph.node.extend(new_nodes)
    remove_unused(graph)
    return model, count


def _groupnorm_nodes(
    node: onnx.NodeProto, scale: np.ndarray, bias: np.ndarray, graph: onnx.GraphProto, taken: set[str]
) -> list[onnx.NodeProto]:
    """`x [N, C, ...] -> [N, G, -1] -> InstanceNorm -> [N, C, -1] -> * gamma + beta -> shape of x`."""
    x, y = node.input[0], node.output[0]
    base = node.name or y
    groups, channels = int(attr(node, "num_groups")), scale.shape[0]

    def init(suffix: str, value: np.ndarray) -> str:
        name = unique_name(f"{base}_{suffix}", taken)
        graph.initializer.append(numpy_helper.from_array(value, name))
        return name

    grouped_shape = init("shape_g", np.array([0, groups, -1], dtype=np.int64))
    channel_shape = init("shape_c", np.array([0, channels, -1], dtype=np.int64))
    ones = init("ones", np.ones(groups, dtype=scale.dtype))
    zeros = init("zeros", np.zeros(groups, dtype=scale.dtype))
    gamma = init("gamma", scale.reshape(channels, 1))
    beta = init("beta", bias.astype(scale.dtype).reshape(channels, 1))
    t = {k: unique_name(f"{base}_{k}", taken) for k in ("shape", "g", "in", "c", "mul", "add")}
    eps = float(attr(node, "epsilon", 1e-5))
    return [
        helper.make_node("Shape", [x], [t["shape"]], name=t["shape"] + "_op"),
        helper.make_node("Reshape", [x, grouped_shape], [t["g"]], name=t["g"] + "_op"),
        helper.make_node(
            "InstanceNormalization", [t["g"], ones, zeros], [t["in"]], name=t["in"] + "_op", epsilon=eps
        ),
        helper.make_node("Reshape", [t["in"], channel_shape], [t["c"]], name=t["c"] + "_op"),
        helper.make_node("Mul", [t["c"], gamma], [t["mul"]], name=t["mul"] + "_op"),
        helper.make_node("Add", [t["mul"], beta], [t["add"]], name=t["add"] + "_op"),
        helper.make_node("Reshape", [t["add"], t["shape"]], [y], name=t["shape"] + "_back"),
    ]


def remove_noop_casts(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Bypass every top-level `Cast` whose input already has the `to` type; returns the count.

    A Cast that produces a graph output is kept (the output name must stay).
    """
    model = _copy(model)
    graph = model.graph
    types = _elem_types(model)
    outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    keep = []
    for node in graph.node:
        node.input[:] = [rename.get(i, i) for i in node.input]
        if (
            node.op_type == "Cast"
            and node.domain in ("", "ai.onnx")
            and node.output[0] not in outputs
            and types.get(node.input[0]) is not None
            and types.get(node.input[0]) == attr(node, "to")
        ):
            rename[node.output[0]] = node.input[0]
            continue
        keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    return model, len(rename)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


PASSES: dict[str, Callable[[onnx.ModelProto], tuple[onnx.ModelProto, int]]] = {
    "fold-weight-transposes": fold_weight_transposes,
    "dynamic-linears": dynamic_linears,
    "dynamic-linears-sym": dynamic_linears_sym,
    "transpose-pairs": drop_transpose_pairs,
    "drop-dq-q-pairs": drop_dq_q_pairs,
    "groupnorm": groupnorm_to_instancenorm,
    "remove-noop-casts": remove_noop_casts,
}


@dataclass
class FastPathResult:
    model: onnx.ModelProto
    applied: dict[str, int] = field(default_factory=dict)  # pass name -> nodes rewritten


def apply_passes(model: onnx.ModelProto, names: list[str]) -> FastPathResult:
    """Run the named passes in `PASSES` order; unknown names are an `ExportError`."""
    unknown = [n for n in names if n not in PASSES]
    if unknown:
        raise ExportError(f"unknown graph pass(es) {unknown}: use {', '.join(PASSES)}")
    result = FastPathResult(model)
    for name in PASSES:
        if name in names:
            result.model, result.applied[name] = PASSES[name](result.model)
    return result


__all__ = ["PASSES", "FastPathResult", "apply_passes", "groupnorm_to_instancenorm", "remove_noop_casts"]
