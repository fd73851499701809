"""`edgediff export onnx`: write an artifact bundle `NAME.edgediff/` atomically (docs/design.md section 3).

The runtime owns the format (`edgediff_runtime.bundle`); this module fills it: `model.onnx`,
golden references recorded from PyTorch, `manifest.json` with the sampler, precision table,
custom ops, the embedded device profile and parity tolerances, and `trt/` (plugin sources and
the exact engine build command) when the graph has custom ops or targets TensorRT.

Tolerances are derived, not chosen: after writing, the bundle is replayed through ONNX Runtime on
this host with the golden noise; the stored tolerance is `TOLERANCE_FACTOR` x the measured error
(PSNR: measured minimum minus `PSNR_MARGIN_DB`), with absolute floors, and the measured report and
this rule are recorded next to it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import onnx

from edgediff import __version__
from edgediff.models.loading import LoadedModel, is_quantized_folder, load_model
from edgediff.quant.io import folder_digest, step_table_size
from edgediff.quant.storage import storage_bits
from edgediff.reference.model import resolve_model_path
from edgediff.utils.atomic import atomic_dir, check_writable
from edgediff_export.errors import ExportError
from edgediff_export.golden import layer_output_ranges, record_golden
from edgediff_export.modules import PLACEMENTS
from edgediff_export.passes.placement import ort_disabled_optimizers
from edgediff_export.to_onnx import (
    LAYER_OUTPUTS_FILE,
    MAX_DEFAULT_OPSET,
    ExportResult,
    check_opset,
    export_unet,
)
from edgediff_runtime.bundle import (
    CustomOp,
    Manifest,
    ModelSpec,
    OnnxSpec,
    ParitySpec,
    QuantSpec,
    Requirements,
    SamplerSpec,
    TensorSpec,
    load_bundle,
    save_golden,
    write_manifest,
)
from edgediff_runtime.devices import DeviceProfile, load_profile
from edgediff_runtime.errors import RuntimeStageError

log = logging.getLogger(__name__)

TOLERANCE_FACTOR = 4.0
PSNR_MARGIN_DB = 6.0
ABS_FLOOR = 1e-5
ORT_MIN = "1.20"
#: Opset 25 (INT2/UINT2 weight containers) was verified on onnxruntime 1.32, the version installed
#: here; older releases are not known to run it, so such bundles require it.
ORT_MIN_OPSET25 = "1.32"


def ort_min_version(opset: int) -> str:
    """Minimum onnxruntime a bundle of ``opset`` needs (1.20 up to opset 21, 1.32 above)."""
    return ORT_MIN if opset <= 21 else ORT_MIN_OPSET25


_DTYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.BOOL: "bool",
}


#: Sampler steps of a bundle whose activation scales are static (no per-step table to follow).
DEFAULT_STEPS = 20


@dataclass(frozen=True)
class ExportOptions:
    """`steps=None`: the quantized folder's per-step table size, or `DEFAULT_STEPS` when static."""

    placement: str = "ort"
    device: str = "x86-cpu"
    steps: int | None = None
    opset: int | None = None
    residual: str = "custom"
    golden_samples: int = 8
    seed: int = 0
    allow_fp: bool = False


def _tensor_specs(values) -> list[TensorSpec]:
    specs = []
    for v in values:
        t = v.type.tensor_type
        dims: list[int | str] = [d.dim_param or d.dim_value for d in t.shape.dim]
        specs.append(TensorSpec(name=v.name, dtype=_DTYPES.get(t.elem_type, "float32"), shape=dims))
    return specs


def _sampler_spec(scheduler_config: dict, steps: int) -> SamplerSpec:
    from edgediff.sampling import DEFAULT_SPACING

    c = scheduler_config
    return SamplerSpec(
        kind="ddim",
        num_train_timesteps=int(c.get("num_train_timesteps", 1000)),
        beta_schedule=str(c.get("beta_schedule", "linear")),
        beta_start=float(c.get("beta_start", 0.0001)),
        beta_end=float(c.get("beta_end", 0.02)),
        prediction_type=str(c.get("prediction_type", "epsilon")),
        timestep_spacing=DEFAULT_SPACING,
        steps=steps,
        eta=0.0,
        clip_sample=bool(c.get("clip_sample", True)),
        clip_sample_range=float(c.get("clip_sample_range", 1.0)),
        set_alpha_to_one=True,
        steps_offset=int(c.get("steps_offset", 0)),
    )


def precision_table(model: onnx.ModelProto) -> dict[str, str]:
    """Per compute node: the precision of its weight input (int8 / uint4 / ... / fp32)."""
    inits = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    names = {v: k for k, v in onnx.TensorProto.DataType.items()}
    table = {}
    for node in model.graph.node:
        if node.op_type in ("Conv", "MatMul", "Gemm") or node.domain == "edgediff":
            prec = "fp32"
            for inp in node.input[1:2]:
                src = producers.get(inp)
                if src is not None and src.op_type == "DequantizeLinear" and src.input[0] in inits:
                    prec = names[inits[src.input[0]].data_type].lower()
            if node.domain == "edgediff":
                prec = "int8+binary-residual"
            table[node.name] = prec
    return table


def check_device_fit(profile: DeviceProfile, opset: int, quantized: bool, placement: str) -> None:
    """Refuse what the device profile cannot run before any work is done (docs/design.md section 5)."""
    check_opset(opset)
    if opset > profile.max_opset:
        raise ExportError(
            f"opset {opset} exceeds what {profile.name} accepts ({profile.max_opset}); "
            f"pass --opset {profile.max_opset}"
        )
    if placement == "trt" and not profile.tensorrt:
        raise ExportError(
            f"--placement trt needs a TensorRT device, but {profile.name} has none; use --placement ort"
        )
    if quantized and "int8" not in profile.precisions:
        precisions = ", ".join(profile.precisions)
        raise ExportError(f"{profile.name} has no int8 support ({precisions}); export the FP model")


def check_memory_fit(profile: DeviceProfile, onnx_bytes: int) -> None:
    """Weights + a conservative 3x for activations, runtime buffers and the engine workspace."""
    need_gb = 3 * onnx_bytes / 2**30 + 0.25
    if need_gb > profile.model_memory_gb:
        raise ExportError(
            f"model needs about {need_gb:.2f} GB but {profile.name} leaves {profile.model_memory_gb} GB "
            "for a model; quantize to fewer bits or pick a larger device"
        )


def quant_spec(loaded: LoadedModel, unet, step_table: int | None, placement: str) -> QuantSpec:
    """The manifest's typed quant section (docs/runtime.md): method and label from the quantized
    folder (the label is its recipe's), stored weight bits counted on the model, the per-step
    table size; the weight containers and precision table are filled in after the graph passes."""
    storage = storage_bits(unet)
    if loaded.quantized:
        method, label = str(loaded.meta.get("method", "custom")), str(loaded.meta.get("bits") or "custom")
    else:
        dtype = next((p.dtype for p in unet.parameters() if p.is_floating_point()), None)
        method, label = "fp", "FP16" if str(dtype) in ("torch.float16", "torch.bfloat16") else "FP32"
    return QuantSpec(
        method=method,
        label=label,
        mean_weight_bits=round(storage.weight_bits_per_weight, 4),
        step_table=step_table,
        placement=placement,
    )


def _finish_weights(
    proto: onnx.ModelProto, placement: str, profile: DeviceProfile
) -> tuple[onnx.ModelProto, dict[str, str]]:
    """Weight containers: smallest exact one ONNX Runtime runs (ort; residual nodes' codes too), symmetric
    int8 (trt)."""
    if placement == "trt":
        from edgediff_export.passes.fold_weights import symmetrize_int8

        return symmetrize_int8(proto), {}
    from edgediff_export.passes.containers import narrow_residual_codes, narrow_weight_containers
    from edgediff_export.passes.fold_weights import symmetrize_int8

    containers = narrow_weight_containers(proto, max_opset=profile.max_opset)
    containers |= narrow_residual_codes(proto, max_opset=profile.max_opset)
    proto = symmetrize_int8(proto, exact_8bit_only=True)  # u8 -> s8 where exact (w_symmetric)
    # The exporter records value_info for initializers too; drop the stale (pre-narrowing) types.
    narrowed = set(containers) | {i.name for i in proto.graph.initializer}
    keep = [v for v in proto.graph.value_info if v.name not in narrowed]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(keep)
    return proto, containers


def graph_opset(proto: onnx.ModelProto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _derive_tolerances(report: dict) -> dict[str, float]:
    l2 = report["level2"]
    tol = {
        "latent_max_abs": max(ABS_FLOOR, TOLERANCE_FACTOR * l2["latent_max_abs"]),
        "final_max_abs": max(ABS_FLOOR, TOLERANCE_FACTOR * l2["final_max_abs"]),
    }
    if l2["latent_psnr_min"] is not None:
        tol["latent_psnr_min"] = l2["latent_psnr_min"] - PSNR_MARGIN_DB
    return tol


STRIP_SCRIPT = """\
# Writes trt/model.plugin.onnx: model.onnx without the model-local edgediff functions, so that
# TensorRT's ONNX parser maps each edgediff node to the plugin instead of the standard-op body
# (the parser prefers a local function of the same name). Needs only the onnx package.
import sys
from pathlib import Path

import onnx

bundle = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]
model = onnx.load(str(bundle / "model.onnx"))
keep = [f for f in model.functions if f.domain != "edgediff"]
del model.functions[:]
model.functions.extend(keep)
onnx.save(model, str(bundle / "trt" / "model.plugin.onnx"))
print("wrote", bundle / "trt" / "model.plugin.onnx")
"""


def _write_trt_folder(folder: Path, profile: DeviceProfile, result: ExportResult) -> None:
    """`trt/`: plugin sources + CMake, the per-profile build commands, and the function-strip step."""
    from edgediff_export.trt import build as trt_build

    trt_dir = folder / "trt"
    onnx_name = "trt/model.plugin.onnx" if result.custom_ops else "model.onnx"
    trt_build.copy_plugin_sources(trt_dir, [profile.to_dict()], onnx_name=onnx_name)
    (trt_dir / "strip_functions.py").write_text(STRIP_SCRIPT)


def export_bundle(
    model: str | Path, out: Path, opts: ExportOptions = ExportOptions(), progress: bool = True
) -> Path:
    """Export `model` (a quantized folder, or an FP folder with `allow_fp`) to the bundle `out`."""
    out = Path(out)
    if opts.placement not in PLACEMENTS:
        raise ExportError(f"unknown placement {opts.placement!r}: use one of {', '.join(PLACEMENTS)}")
    if opts.steps is not None and opts.steps < 1:
        raise ExportError(f"--steps must be at least 1, got {opts.steps}")
    try:
        profile = load_profile(opts.device)
    except RuntimeStageError as exc:
        raise ExportError(str(exc)) from exc
    opset = opts.opset or min(MAX_DEFAULT_OPSET, profile.max_opset)
    path = resolve_model_path(model) if str(model) == "reference" else Path(model)
    if not path.exists():
        raise ExportError(f"model folder not found: {path}")
    if not is_quantized_folder(path) and not opts.allow_fp:
        raise ExportError(
            f"{path} is not a quantized folder (no recipe.json); quantize it with 'edgediff quantize' "
            "or pass --fp to export the FP model"
        )
    check_device_fit(profile, opset, is_quantized_folder(path), opts.placement)
    check_writable(out)
    t0 = time.perf_counter()
    bar = _StageBar(progress)
    bar.stage("load model")
    loaded: LoadedModel = load_model(model)
    weight_bytes = sum(p.numel() for p in loaded.unet.parameters()) * (1 if loaded.quantized else 4)
    check_memory_fit(profile, weight_bytes)
    unet = loaded.unet.eval()
    cfg = unet.config
    shape = (int(cfg.in_channels), int(cfg.sample_size), int(cfg.sample_size))
    table = step_table_size(unet)
    steps = opts.steps or table or DEFAULT_STEPS
    if table is not None and table != steps:
        raise ExportError(
            f"{path} has per-step activation tables for {table} steps but --steps is {steps}; "
            f"export with --steps {table} (the default)"
        )
    quant = quant_spec(loaded, unet, table, opts.placement)
    bar.stage("golden references")
    fp_model = load_model(loaded.source_model).unet if loaded.source_model else None
    golden = record_golden(
        unet,
        loaded.scheduler_config,
        shape,
        steps,
        opts.golden_samples,
        opts.seed,
        loaded.set_step,
        fp_model,
    )
    ranges = None
    bar.stage("layer output ranges")
    if loaded.quantized and opts.placement == "ort":
        ranges = layer_output_ranges(
            unet, loaded.scheduler_config, shape, steps, set_step=loaded.set_step
        )
    bar.stage("lower to ONNX")
    result = export_unet(
        unet, shape, placement=opts.placement, residual=opts.residual, opset=opset, out_ranges=ranges
    )
    proto = result.model
    bar.stage("fold weights, check graph")
    proto, containers = _finish_weights(proto, opts.placement, profile)
    opset = graph_opset(proto)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"exported graph fails the ONNX checker: {str(exc).splitlines()[0]}") from exc
    check_memory_fit(profile, proto.ByteSize())
    bar.stage("write bundle")
    with atomic_dir(out) as tmp:
        from edgediff_export.passes.external_data import save_model

        save_model(proto, tmp / "model.onnx")
        (tmp / "reference").mkdir(exist_ok=True)
        (tmp / LAYER_OUTPUTS_FILE).write_text(json.dumps(result.layer_outputs, indent=1) + "\n")
        save_golden(
            tmp,
            noise=golden.noise,
            timesteps=golden.timesteps,
            latents=golden.latents,
            final=golden.final,
            fp_final=golden.fp_final,
        )
        if result.custom_ops or opts.placement == "trt":
            _write_trt_folder(tmp, profile, result)
        manifest = Manifest(
            name=out.name.removesuffix(".edgediff"),
            created_by=f"edgediff {__version__}",
            model=ModelSpec(
                family=type(unet).__name__,
                inputs=_tensor_specs(proto.graph.input),
                outputs=_tensor_specs(proto.graph.output),
                sample_shape=list(shape),
                step_input=result.step_input,
                output=result.output_names[0],
            ),
            sampler=_sampler_spec(loaded.scheduler_config, steps),
            onnx=OnnxSpec(
                opset=opset,
                ir_version=proto.ir_version,
                custom_ops=[CustomOp(**c) for c in result.custom_ops],
                ort_disabled_optimizers=ort_disabled_optimizers(proto),
            ),
            quant=dataclasses.replace(
                quant,
                weight_containers=dict(sorted(Counter(containers.values()).items())),
                recipe={
                    "residual": opts.residual,
                    "trt_approximated_layers": result.approximated,
                    "source_model": str(loaded.source_model) if loaded.source_model else None,
                    "source_digest": folder_digest(path) if loaded.quantized else None,
                },
                precision=precision_table(proto),
            ),
            requirements=Requirements(
                onnxruntime_min=ort_min_version(opset),
                tensorrt_min=profile.tensorrt if opts.placement == "trt" else None,
            ),
            device=profile.to_dict(),
        )
        write_manifest(tmp, manifest)
        bar.stage("measure parity (ONNX Runtime)")
        report = _measure_parity(tmp)
        manifest.parity = ParitySpec(
            tolerances=_derive_tolerances(report),
            report=report,
            tolerance_source=(
                f"derived at export: {TOLERANCE_FACTOR:g}x the max abs error (floor {ABS_FLOOR:g}) "
                "and the min PSNR "
                f"minus {PSNR_MARGIN_DB:g} dB measured by replaying the golden noise through ONNX Runtime "
                f"{report['host']['onnxruntime']} on {report['host']['machine']}"
            ),
        )
        write_manifest(tmp, manifest)
    bar.close()
    log.info("bundle %s written in %.1f s", out, time.perf_counter() - t0)
    return out


class _StageBar:
    """One tqdm bar over the export stages; the postfix names the stage that is running."""

    STAGES = 7

    def __init__(self, enabled: bool) -> None:
        from tqdm.auto import tqdm

        # shown on a terminal only (disable=None): a log file or a pipe gets no bar residue
        self.bar = tqdm(total=self.STAGES, desc="export", disable=None if enabled else True, leave=False)
        self.started = False

    def stage(self, name: str) -> None:
        if self.started:
            self.bar.update(1)
        self.started = True
        self.bar.set_postfix_str(name)

    def close(self) -> None:
        self.bar.update(1)
        self.bar.close()


def _measure_parity(folder: Path) -> dict:
    from edgediff_runtime.backends import open_backend
    from edgediff_runtime.parity import run_parity

    bundle = load_bundle(folder, verify=True, backend="ort")
    backend = open_backend(
        "ort", bundle.model_path, disabled_optimizers=bundle.manifest.onnx.ort_disabled_optimizers
    )
    report = run_parity(bundle, backend, backend_name="ort")
    report.pop("checks", None)
    report.pop("passed", None)
    report.pop("tolerances", None)
    report.pop("tolerance_source", None)
    return json.loads(
        json.dumps(report, default=lambda v: None if isinstance(v, float) and math.isinf(v) else v)
    )
