"""Small graph helpers shared by the passes (docs/design.md section 1: torch-free, numpy + onnx only)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgediff_export.ops import default_opset as default_opset  # re-exported for the passes

#: Quantized integer element types and their (lo, hi) code range.
INT_RANGES: dict[int, tuple[int, int]] = {
    TensorProto.INT8: (-128, 127),
    TensorProto.UINT8: (0, 255),
    TensorProto.INT16: (-32768, 32767),
    TensorProto.UINT16: (0, 65535),
    TensorProto.INT4: (-8, 7),
    TensorProto.UINT4: (0, 15),
    TensorProto.INT2: (-2, 1),
    TensorProto.UINT2: (0, 3),
}
#: Container name -> ONNX element type.
CONTAINERS: dict[str, int] = {
    "int8": TensorProto.INT8,
    "uint8": TensorProto.UINT8,
    "int16": TensorProto.INT16,
    "uint16": TensorProto.UINT16,
    "int4": TensorProto.INT4,
    "uint4": TensorProto.UINT4,
    "int2": TensorProto.INT2,
    "uint2": TensorProto.UINT2,
}
CONTAINER_NAMES: dict[int, str] = {v: k for k, v in CONTAINERS.items()}
#: Lowest ai.onnx opset whose DequantizeLinear accepts the type.
CONTAINER_MIN_OPSET: dict[int, int] = {
    TensorProto.INT8: 13,
    TensorProto.UINT8: 13,
    TensorProto.INT16: 21,
    TensorProto.UINT16: 21,
    TensorProto.INT4: 21,
    TensorProto.UINT4: 21,
    TensorProto.INT2: 25,
    TensorProto.UINT2: 25,
}
QUANT_COMPUTE_OPS = ("Conv", "MatMul", "Gemm")


def min_ir_version(opset: int) -> int:
    """Lowest IR version that allows ``opset`` of ai.onnx (onnx's VERSION_TABLE)."""
    return helper.find_min_ir_version_for([helper.make_opsetid("", opset)])


def node_label(node: onnx.NodeProto) -> str:
    """A node's name, or ``<op_type>(<first output>)`` when unnamed."""
    return node.name or f"{node.op_type}({node.output[0] if node.output else ''})"


class GraphIndex:
    """Producers, consumers and constant values of a graph (top level only)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.initializers: dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
        self.constant_nodes: dict[str, onnx.NodeProto] = {}
        for node in graph.node:
            for o in node.output:
                if o:
                    self.producer[o] = node
            for i, name in enumerate(node.input):
                if name:
                    self.consumers[name].append((node, i))
            for a in node.attribute:  # names used inside subgraphs count as consumers too
                for g in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                    for sub in _subgraph_inputs(g):
                        self.consumers[sub].append((node, -1))
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                self.constant_nodes[node.output[0]] = node
        self.graph_outputs = {o.name for o in graph.output}
        self.graph_inputs = {i.name for i in graph.input}

    def is_constant(self, name: str) -> bool:
        """True for an initializer (not overridable by a graph input) or a ``Constant`` node output."""
        if name in self.initializers and name not in self.graph_inputs:
            return True
        node = self.constant_nodes.get(name)
        return node is not None and any(a.name == "value" for a in node.attribute)

    def value(self, name: str) -> np.ndarray | None:
        """The numpy value of a constant tensor, or ``None``."""
        if name in self.initializers and name not in self.graph_inputs:
            return numpy_helper.to_array(self.initializers[name])
        node = self.constant_nodes.get(name)
        if node is not None:
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None

    def elem_type(self, name: str) -> int | None:
        """Element type of a constant tensor, or ``None``."""
        if name in self.initializers:
            return self.initializers[name].data_type
        node = self.constant_nodes.get(name)
        if node is not None:
            for a in node.attribute:
                if a.name == "value":
                    return a.t.data_type
        return None


def _subgraph_inputs(g: onnx.GraphProto) -> set[str]:
    """Outer-scope names a subgraph reads."""
    local = {i.name for i in g.input} | {t.name for t in g.initializer}
    used: set[str] = set()
    for n in g.node:
        local.update(o for o in n.output if o)
    for n in g.node:
        used.update(i for i in n.input if i and i not in local)
        for a in n.attribute:
            for sg in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                used.update(x for x in _subgraph_inputs(sg) if x not in local)
    return used


def attr(node: onnx.NodeProto, name: str, default=None):
    """Attribute value of ``node`` or ``default``."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def set_attr(node: onnx.NodeProto, name: str, value) -> None:
    """Set (replace) an attribute."""
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, value))


def unique_name(base: str, taken: set[str]) -> str:
    """``base`` or ``base_1``, ``base_2``... not in ``taken`` (added to it)."""
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def all_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor and node name in the top-level graph."""
    names = (
        {t.name for t in graph.initializer} | {v.name for v in graph.input} | {v.name for v in graph.output}
    )
    for n in graph.node:
        names.update(n.input)
        names.update(n.output)
        if n.name:
            names.add(n.name)
    names.discard("")
    return names


def remove_unused(graph: onnx.GraphProto, candidates: set[str] | None = None) -> None:
    """Remove dead nodes (no used output) and unused initializers, iterating to a fixed point.

    With ``candidates`` only initializers with those names are removed.
    """
    while True:
        idx = GraphIndex(graph)
        keep_nodes = [
            n
            for n in graph.node
            if any(o and (o in idx.graph_outputs or idx.consumers.get(o)) for o in n.output)
        ]
        removed = len(keep_nodes) != len(graph.node)
        if removed:
            del graph.node[:]
            graph.node.extend(keep_nodes)
            continue
        idx = GraphIndex(graph)
        dead = [
            t
            for t in graph.initializer
            if not idx.consumers.get(t.name)
            and t.name not in idx.graph_outputs
            and (candidates is None or t.name in candidates)
        ]
        if not dead:
            return
        names = {t.name for t in dead}
        keep = [t for t in graph.initializer if t.name not in names]
        del graph.initializer[:]
        graph.initializer.extend(keep)


def expand_param(param: np.ndarray, shape: tuple[int, ...], axis: int, block_size: int) -> np.ndarray:
    """Broadcast a Q/DQ scale or zero point to the data shape (per-tensor, per-axis or blocked)."""
    p = np.asarray(param)
    if p.ndim == 0 or (p.size == 1 and block_size == 0):
        return np.broadcast_to(p.reshape(()), shape)
    axis = axis % len(shape)
    if block_size:
        p = np.repeat(p, block_size, axis=axis)
        p = np.take(p, np.arange(shape[axis]), axis=axis)
        return np.broadcast_to(p, shape)
    bshape = [1] * len(shape)
    bshape[axis] = shape[axis]
    return np.broadcast_to(p.reshape(bshape), shape)


def group_reduce(q: np.ndarray, param_shape: tuple[int, ...], axis: int, block_size: int, fn) -> np.ndarray:
    """Reduce ``q`` (``np.min``/``np.max``) over each group sharing one scale/zero point.

    Result has ``param_shape`` (scalar for per-tensor, [C] per-axis, blocked shape for blocked).
    """
    if len(param_shape) == 0 or (int(np.prod(param_shape)) == 1 and block_size == 0):
        return np.asarray(fn(q)).reshape(param_shape)
    axis = axis % q.ndim
    if not block_size:
        moved = np.moveaxis(q, axis, 0).reshape(q.shape[axis], -1)
        return fn(moved, axis=1).reshape(param_shape)
    moved = np.moveaxis(q, axis, 0)
    nb = -(-q.shape[axis] // block_size)
    pad = nb * block_size - q.shape[axis]
    if pad:
        moved = np.concatenate([moved, np.repeat(moved[-1:], pad, axis=0)], axis=0)
    red = fn(moved.reshape((nb, block_size) + moved.shape[1:]), axis=1)
    return np.moveaxis(red, 0, axis).reshape(param_shape)


def quantize_linear(
    x: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray | None,
    axis: int,
    block_size: int,
    elem_type: int,
) -> np.ndarray:
    """ONNX ``QuantizeLinear`` in numpy (float32 divide, round half to even, saturate); int64 codes."""
    x = np.asarray(x)
    s = expand_param(np.asarray(scale, np.float32), x.shape, axis, block_size)
    z = (
        0
        if zero_point is None
        else expand_param(np.asarray(zero_point).astype(np.int64), x.shape, axis, block_size)
    )
    lo, hi = INT_RANGES[elem_type]
    q = np.rint(x.astype(np.float32) / s).astype(np.float64) + z
    return np.clip(q, lo, hi).astype(np.int64)


def make_int_tensor(name: str, values: np.ndarray, elem_type: int) -> onnx.TensorProto:
    """TensorProto of an integer container type (int2/int4 packed by onnx)."""
    dtype = helper.tensor_dtype_to_np_dtype(elem_type)
    return numpy_helper.from_array(np.asarray(values).astype(np.int64).astype(dtype), name)


def set_metadata(model: onnx.ModelProto, key: str, value: str) -> None:
    """Set or replace a ``metadata_props`` entry."""
    for p in model.metadata_props:
        if p.key == key:
            p.value = value
            return
    model.metadata_props.add(key=key, value=value)


def get_metadata(model: onnx.ModelProto) -> dict[str, str]:
    """``metadata_props`` as a dict."""
    return {p.key: p.value for p in model.metadata_props}


def q_elem_type(q: onnx.NodeProto, idx: GraphIndex) -> int:
    """Output type of a ``QuantizeLinear``: its zero point's type, else ``output_dtype``, else uint8."""
    if len(q.input) > 2 and q.input[2]:
        t = idx.elem_type(q.input[2])
        if t is not None:
            return t
    return int(attr(q, "output_dtype", 0) or TensorProto.UINT8)
