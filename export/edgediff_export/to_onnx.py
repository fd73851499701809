"""The ONNX export driver: `torch.onnx.export(dynamo=True)` with edgediff's translation table.

`export_unet` takes an FP or quantized diffusers UNet, swaps the quantized layers for export
modules (`modules.py`), exports `(sample, timestep[, step]) -> output` with a dynamic batch, and
returns the `onnx.ModelProto` after the edgediff post-passes: model-local functions for the
custom nodes (or `--residual standard` lowering), uint4/uint2 weight containers where the codes
fit, and a full `onnx.checker` pass (docs/design.md section 2; docs/deployment.md section 11).
"""

from __future__ import annotations

import ast
import io
import logging
import warnings
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import torch
from torch import nn

from edgediff.quant import quant_layers
from edgediff_export.errors import ExportError
from edgediff_export.modules import UNetExportWrapper, prepare_for_export
from edgediff_export.torch_ops import TRANSLATION_TABLE

log = logging.getLogger(__name__)

RESIDUAL_MODES = ("custom", "standard")
SCOPE_KEY = "pkg.torch.onnx.name_scopes"
LAYER_OUTPUTS_FILE = "reference/layer_outputs.json"
MIN_OPSET, MAX_DEFAULT_OPSET = 18, 21


@dataclass
class ExportResult:
    model: onnx.ModelProto
    input_names: list[str]
    output_names: list[str]
    step_input: str | None
    quant_layers: list[str] = field(default_factory=list)
    custom_ops: list[dict] = field(default_factory=list)
    approximated: list[str] = field(default_factory=list)  # trt placement: layers requantized to int8
    layer_outputs: dict[str, str] = field(default_factory=dict)  # quantized layer -> its ONNX output
    #: True when `model` is the graph only and its weights are in `<save_path>.data` (large models).
    external_data: bool = False


def _has_per_step(model: nn.Module) -> bool:
    for layer in quant_layers(model).values():
        spec = layer.spec()
        if spec.act is not None and spec.act.mode == "per_step":
            return True
    return False


def check_opset(opset: int) -> int:
    """Refuse an opset the installed onnx cannot produce (or too old for per-axis Q/DQ)."""
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ExportError(
            f"opset {opset} cannot be produced: the installed onnx {onnx.__version__} supports "
            f"{MIN_OPSET}..{newest} for edgediff exports; pass --opset in that range"
        )
    return opset


def export_unet(
    model: nn.Module,
    sample_shape: tuple[int, ...],
    *,
    placement: str = "ort",
    residual: str = "custom",
    opset: int = MAX_DEFAULT_OPSET,
    batch: int = 2,
    out_ranges: dict[str, tuple[float, float]] | None = None,
    extra_inputs: dict[str, torch.Tensor] | None = None,
    input_names: dict[str, str] | None = None,
    dtype: torch.dtype = torch.float32,
    save_path: Path | None = None,
) -> ExportResult:
    """Export a diffusers UNet, DiT or video transformer (FP or edgediff-quantized) to ONNX.

    `sample_shape` is (C, H, W) or, for video, (C, F, H, W). `extra_inputs` are example tensors of
    further model inputs keyed by forward kwarg, batch on dim 0 (`encoder_hidden_states` of a
    text-conditioned UNet, `class_labels` of a DiT); they become graph inputs with a dynamic batch,
    named by `input_names` (kwarg -> graph name; default the kwarg). `dtype` is the float type of
    the sample and float conditions (the model must already be in it).

    With `save_path` the exporter writes `save_path` + `save_path.data` itself, tensor by tensor,
    and the returned proto is the graph without weights (`external_data=True`): the in-memory
    proto of a model over 2 GB would hold its weights once more, and serializing it once again.
    """
    check_opset(opset)
    from edgediff_export.ops import register_edgediff_schemas

    register_edgediff_schemas()  # onnxscript needs the edgediff op schemas to build the custom nodes
    if residual not in RESIDUAL_MODES:
        raise ExportError(f"unknown residual mode {residual!r}: use one of {', '.join(RESIDUAL_MODES)}")
    quantized = bool(quant_layers(model))
    with_step = quantized and _has_per_step(model)
    if quantized:
        body, steps, names = prepare_for_export(model, placement, out_ranges)
    else:  # the exporter does not modify the module: no copy (a copy doubles a large model's memory)
        body, steps, names = model.eval(), None, []
    extra = {k: v.to(dtype) if v.is_floating_point() else v for k, v in dict(extra_inputs or {}).items()}
    wrapper = UNetExportWrapper(body, steps, with_step, tuple(extra)).eval()
    sample = torch.randn(batch, *sample_shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    timestep = torch.full((batch,), 500, dtype=torch.int64)
    args: tuple = (sample, timestep)
    kwargs: dict[str, torch.Tensor] = {}
    batch_dim = torch.export.Dim("batch", min=1, max=4096)
    dynamic: dict = {"sample": {0: batch_dim}, "timestep": {0: batch_dim}}
    if with_step:
        kwargs["step"] = torch.tensor(0, dtype=torch.int64)
        dynamic["step"] = None
    if len(extra) > UNetExportWrapper.MAX_EXTRA:
        raise ExportError(f"at most {UNetExportWrapper.MAX_EXTRA} extra model inputs can be exported")
    for k, value in enumerate(extra.values()):
        if value.shape[0] != batch:
            shape = tuple(value.shape)
            raise ExportError(f"extra export inputs need batch {batch} on dim 0, got shape {shape}")
        kwargs[f"extra{k}"] = value
        dynamic[f"extra{k}"] = {0: batch_dim}
    rename = dict(input_names or {})
    graph_inputs = [
        "sample",
        "timestep",
        *(["step"] if with_step else []),
        *(rename.get(k, k) for k in extra),
    ]
    torch_onnx_log = logging.getLogger("torch.onnx")
    level = torch_onnx_log.level
    torch_onnx_log.setLevel(logging.ERROR)  # it warns about absent torchvision ops on every export
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                wrapper,
                args,
                kwargs=kwargs,
                dynamo=True,
                custom_translation_table=TRANSLATION_TABLE,
                dynamic_shapes=dynamic,
                opset_version=opset,
                external_data=False,
                input_names=graph_inputs,
                output_names=["model_output"],
                verbose=False,
            )
        except Exception as exc:  # the exporter raises many types; report the first line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportError(f"torch.onnx.export failed: {first}") from exc
        finally:
            torch_onnx_log.setLevel(level)
    if save_path is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program.save(str(save_path), external_data=True)
        del program
        proto = onnx.load(str(save_path), load_external_data=False)
    else:
        proto = program.model_proto
        del program
    layer_outputs = layer_output_tensors(proto, names)
    strip_exporter_metadata(proto)
    custom_ops = _finish(proto, residual)
    return ExportResult(
        model=proto,
        input_names=[i.name for i in proto.graph.input],
        output_names=[o.name for o in proto.graph.output],
        step_input="step" if with_step else None,
        quant_layers=names,
        custom_ops=custom_ops,
        layer_outputs=layer_outputs,
        approximated=[n for n, m in body.named_modules() if getattr(m, "trt_approximate", False)],
        external_data=save_path is not None,
    )


def _finish(proto: onnx.ModelProto, residual: str) -> list[dict]:
    """Post-passes on the exported proto; returns the custom ops left in the graph."""
    from edgediff_export import ops

    custom = [n for n in proto.graph.node if n.domain == ops.EDGEDIFF_DOMAIN]
    if custom:
        ops.add_edgediff_functions(proto)
        if residual == "standard":
            ops.lower_residual_to_standard(proto)
    proto.producer_name = "edgediff"
    left = {n.op_type for n in proto.graph.node if n.domain == ops.EDGEDIFF_DOMAIN}
    return [
        {"name": name, "domain": ops.EDGEDIFF_DOMAIN, "plugin_namespace": "edgediff", "plugin_version": "1"}
        for name in sorted(left)
    ]


def layer_output_tensors(
    model: onnx.ModelProto, layer_names: list[str], prefix: str = "unet."
) -> dict[str, str]:
    """Map each layer name to the ONNX tensor that is its output: the last node of its name scope
    (the dynamo exporter records `pkg.torch.onnx.name_scopes` on every node)."""
    wanted = {prefix + n: n for n in layer_names}
    found: dict[str, str] = {}
    for node in model.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        if SCOPE_KEY not in meta:
            continue
        for scope in ast.literal_eval(meta[SCOPE_KEY]):
            if scope in wanted:
                found[wanted[scope]] = node.output[0]
    return found


EXPORTER_METADATA_PREFIX = "pkg.torch."


def strip_exporter_metadata(model: onnx.ModelProto) -> None:
    """Drop what the exporter records for debugging only: per-node metadata (stack traces, FX
    nodes), the graph-level `pkg.torch.export.*` entries (the ExportedProgram's graph signature,
    ~60 KB on the reference UNet) and intermediate value_info. On a small model they are larger
    than the low-bit weights themselves; no runtime reads them."""
    keep = [p for p in model.graph.metadata_props if not p.key.startswith(EXPORTER_METADATA_PREFIX)]
    del model.graph.metadata_props[:]
    model.graph.metadata_props.extend(keep)
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del model.graph.value_info[:]  # intermediate shapes: recomputed by shape inference when needed
    for function in model.functions:
        for node in function.node:
            del node.metadata_props[:]
