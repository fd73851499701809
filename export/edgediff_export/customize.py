"""`edgediff export customize`: a bundle that runs MCA-Ctrl subject editing on the device (docs/customize.md).

The graph is `edgediff.customize.graph.ControlledUNet` (docs/methods.md 5.6): the three streams
packed per group, the masks and the per-layer mode as graph inputs, standard ONNX ops only. The
bundle adds `customize.json` (`edgediff_runtime.customize_spec`: the step x layer mode table of
the PyTorch schedule, the blending rule) and one golden case recorded from the PyTorch MCA-Ctrl
(`edgediff.customize.pipeline.customize`) on fixed inputs. After writing, the case is replayed by
the runtime through ONNX Runtime and the tolerances are derived from that measurement with the
exporter's rule (`bundle.bounded_tolerances`: 4x the error, the PSNR less 6 dB, bounded by what
fp32 must reach).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from edgediff import __version__
from edgediff.customize.attention import layer_parts, self_attention_layers
from edgediff.customize.graph import ControlledUNet
from edgediff.customize.pipeline import CustomizeInputs as TorchInputs
from edgediff.customize.pipeline import customize
from edgediff.customize.schedule import ControlSchedule, Task
from edgediff.models.conditioning import Conditioning, label_conditioning
from edgediff.models.loading import LoadedModel, load_model
from edgediff.sampling import ddim_settings
from edgediff.utils.atomic import atomic_dir, check_writable
from edgediff_export.bundle import (
    MAX_DEFAULT_OPSET,
    _load_null_embedding,
    _tensor_specs,
    bounded_tolerances,
    check_device_fit,
    graph_opset,
    ort_min_version,
    sampler_spec,
)
from edgediff_export.conditions import (
    ModelConditions,
    copy_conditioning_files,
    golden_conditions,
    model_conditions,
)
from edgediff_export.errors import ExportError
from edgediff_export.to_onnx import export_unet
from edgediff_runtime.bundle import load_bundle, write_manifest
from edgediff_runtime.customize import CustomizeInputs
from edgediff_runtime.customize_parity import CustomizeGolden, run_customize_parity, save_customize_golden
from edgediff_runtime.customize_spec import CUSTOMIZE_GOLDEN, CUSTOMIZE_JSON, CustomizeSpec
from edgediff_runtime.devices import load_profile
from edgediff_runtime.errors import RuntimeStageError
from edgediff_runtime.manifest import Manifest, ModelSpec, OnnxSpec, ParitySpec, QuantSpec, Requirements

log = logging.getLogger(__name__)

FAMILY_SUFFIX = "+MCA-Ctrl"


@dataclass(frozen=True)
class CustomizeExportOptions:
    """`steps`: DDIM steps of the bundle (the mode table is for exactly these); `sagi_steps` /
    `salq_steps`: the schedule (default: the paper's editing fractions, `ControlSchedule.for_task`);
    `guidance`: classifier-free guidance of the golden case and the runtime default; `cond_tokens`,
    `null_embedding`: tokens and null condition (.npy) of a raw-embedding model, as `export onnx`."""

    steps: int = 20
    sagi_steps: int | None = None
    salq_steps: int | None = None
    guidance: float | None = None
    invert_refine: int = 0
    seed: int = 0
    device: str = "x86-cpu"
    opset: int | None = None
    cond_tokens: int | None = None
    null_embedding: str | None = None


def edit_schedule(steps: int, sagi_steps: int | None, salq_steps: int | None) -> ControlSchedule:
    """The editing schedule: the defaults of `edgediff customize`, or SAGI on the first `sagi_steps`
    steps (all layers) and SALQ on the next `salq_steps` (decoder)."""
    if sagi_steps is None and salq_steps is None:
        return ControlSchedule.for_task(Task.EDIT, steps)
    if sagi_steps is None or salq_steps is None:
        raise ExportError("give both --sagi-steps and --salq-steps (or neither for the defaults)")
    if sagi_steps + salq_steps > steps:
        raise ExportError(f"--sagi-steps + --salq-steps = {sagi_steps + salq_steps} exceeds --steps {steps}")
    return ControlSchedule(sagi_steps, sagi_steps + salq_steps, salq_parts=("up",))


def mode_table(schedule: ControlSchedule, parts: list[str], steps: int) -> list[list[int]]:
    """`modes[i][l]`: the schedule's mode (Eq. 12) of a layer of part `parts[l]` at step `i`."""
    return [[schedule.mode(i, p).value for p in parts] for i in range(steps)]


def golden_images(shape: tuple[int, int, int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two fixed smooth images in [-1, 1] (subject, condition): seeded noise at a quarter of the
    size, bilinearly upsampled, through tanh; a deterministic case, not a picture of anything."""
    c, h, w = shape
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(2, c, max(1, h // 4), max(1, w // 4), generator=g)
    return tuple(torch.tanh(2 * F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)))


def golden_masks(hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """M_S: the centre box (half the size); M_C: the right half (canvas32's right slot)."""
    h, w = hw
    m_s = torch.zeros(h, w, dtype=torch.bool)
    m_s[h // 4 : h - h // 4, w // 4 : w - w // 4] = True
    m_c = torch.zeros(h, w, dtype=torch.bool)
    m_c[:, w // 2 :] = True
    return m_s, m_c


def golden_conditioning(loaded: LoadedModel, mc: ModelConditions, null_embedding, seed: int):
    """The golden target's conditioning (forward kwargs) and its description: labels `0, 1, ...`
    (one per slot) of a label table, else seeded N(0, 1) embeddings with the null embedding's rows."""
    table = loaded.label_table
    if table is not None:
        labels = torch.tensor([[k % table.classes for k in range(table.slots)]])
        return label_conditioning(loaded, labels), {"labels": labels[0].tolist()}
    cond, null = golden_conditions(mc, None, null_embedding, 1, seed)
    kw = mc.kwargs
    values = {kw[k]: v for k, v in cond.items()}
    null = None if null is None else {kw[k]: v for k, v in null.items()}
    return Conditioning(values, null), {"cond": f"golden_conditions(seed={seed}), N(0, 1) embeddings"}


def golden_case(
    loaded: LoadedModel,
    opts: CustomizeExportOptions,
    schedule: ControlSchedule,
    mc: ModelConditions | None = None,
    null_embedding: np.ndarray | None = None,
):
    """Run PyTorch MCA-Ctrl on the fixed case; its inputs and latents in the runtime's types."""
    shape = tuple(loaded.sample_shape)
    mc = mc or model_conditions(loaded.unet, loaded.label_table)
    cond, described = golden_conditioning(loaded, mc, null_embedding, opts.seed)
    names = {kwarg: name for name, kwarg in mc.kwargs.items()}  # forward kwarg -> graph input
    subject, condition = golden_images(shape, opts.seed)
    m_s, m_c = golden_masks(shape[1:])
    guided = opts.guidance is not None and opts.guidance != 1.0
    inputs = TorchInputs(subject, cond, m_s, condition, m_c, opts.guidance if guided else None)
    result = customize(loaded, inputs, opts.steps, schedule=schedule, invert_refine=opts.invert_refine)

    def np32(x) -> np.ndarray:
        return x.detach().cpu().numpy().astype(np.float32)

    runtime_inputs = CustomizeInputs(
        subject=np32(subject),
        condition=np32(condition),
        subject_mask=m_s.numpy(),
        condition_mask=m_c.numpy(),
        cond={names[k]: np32(v) for k, v in cond.values.items()},
        null={names[k]: np32(v) for k, v in cond.null.items()} if cond.null is not None else None,
        guidance=opts.guidance if guided else None,
    )
    golden = CustomizeGolden(
        runtime_inputs,
        np.stack([np32(s) for s in result.subject_states]),
        np.stack([np32(s) for s in result.condition_states]),
        np.stack([np32(s) for s in result.trajectory]),
        np32(result.image),
    )
    case = {
        **described,
        "images": f"golden_images(seed={opts.seed})",
        "masks": "M_S centre box, M_C right half",
    }
    return golden, case


def export_customize(model: str, out: Path, opts: CustomizeExportOptions = CustomizeExportOptions()) -> Path:
    """Load `model` (a folder or `reference:canvas32`) and write its customization bundle."""
    check_writable(Path(out))
    loaded = load_model(model)
    source = getattr(loaded, "path", None)
    return export_customize_bundle(loaded, Path(out), opts, label_source=Path(source) if source else None)


def export_customize_bundle(
    loaded: LoadedModel, out: Path, opts: CustomizeExportOptions = CustomizeExportOptions(), label_source=None
) -> Path:
    """Write the customization bundle of an FP cross-attention-conditioned UNet2DConditionModel."""
    out = Path(out)
    t0 = time.perf_counter()
    if loaded.quantized:
        raise ExportError(
            "export customize takes an FP model; pass the folder the quantized one was made from"
        )
    if type(loaded.unet).__name__ != "UNet2DConditionModel":
        raise ExportError(
            f"MCA-Ctrl controls a UNet2DConditionModel's self-attention, not {type(loaded.unet).__name__}"
        )
    if len(loaded.sample_shape) != 3:
        raise ExportError(
            f"customization needs image models (C, H, W); this one makes {tuple(loaded.sample_shape)}"
        )
    if opts.steps < 1:
        raise ExportError(f"--steps must be at least 1, got {opts.steps}")
    if opts.invert_refine < 0:
        raise ExportError(f"--invert-refine must be >= 0, got {opts.invert_refine}")
    if opts.guidance is not None and not math.isfinite(opts.guidance):
        raise ExportError(f"--guidance must be a finite number, got {opts.guidance}")
    try:
        profile = load_profile(opts.device)
    except RuntimeStageError as exc:
        raise ExportError(str(exc)) from exc
    opset = opts.opset or min(MAX_DEFAULT_OPSET, profile.max_opset)
    check_device_fit(profile, opset, False, "ort")
    check_writable(out)
    schedule = edit_schedule(opts.steps, opts.sagi_steps, opts.salq_steps)
    unet = loaded.unet.eval()
    layers, parts = self_attention_layers(unet), layer_parts(unet)
    if not layers:
        raise ExportError(f"{type(unet).__name__} has no transformer self-attention layers to control")
    null_embedding = _load_null_embedding(opts.null_embedding)
    mc = model_conditions(unet, loaded.label_table, tokens=opts.cond_tokens, null_embedding=null_embedding)
    if mc.spec is None or mc.spec.kind not in ("label_table", "embeddings"):
        raise ExportError(
            "export customize needs a cross-attention-conditioned UNet (a label table, e.g. "
            "reference:canvas32, or raw embeddings); this one has "
            + ("no conditioning" if mc.spec is None else f"{mc.spec.kind}")
        )
    guided = opts.guidance is not None and opts.guidance != 1.0
    if guided and mc.spec.kind == "embeddings" and null_embedding is None:
        raise ExportError(
            f"--guidance {opts.guidance:g} needs a null condition: pass --null-embedding FILE.npy"
        )
    settings = ddim_settings(loaded.scheduler_config)
    sampler = sampler_spec(
        loaded.scheduler_config,
        opts.steps,
        timestep_spacing=settings.timestep_spacing,
        set_alpha_to_one=settings.set_alpha_to_one,
        guidance_scale=opts.guidance if opts.guidance not in (None, 1.0) else None,
    )
    log.info("recording the golden case with PyTorch MCA-Ctrl (%d steps)", opts.steps)
    golden, case = golden_case(loaded, opts, schedule, mc, null_embedding)
    spec = CustomizeSpec(
        task="edit",
        steps=opts.steps,
        layers=layers,
        parts=parts,
        modes=mode_table(schedule, parts, opts.steps),
        sagi_end=schedule.sagi_end,
        salq_end=schedule.salq_end,
        sagi_parts=list(schedule.sagi_parts),
        salq_parts=list(schedule.salq_parts),
        source_conditioning="null" if golden.inputs.null is not None else "target",
        invert_refine=opts.invert_refine,
        golden=CUSTOMIZE_GOLDEN,
        golden_case=case,
    )
    spec.check()
    c, h, w = (int(d) for d in loaded.sample_shape)
    tokens, dim = (int(d) for d in mc.spec.shape)
    g = torch.Generator().manual_seed(opts.seed)
    extra = {
        mc.spec.input: torch.randn(2, 3 * tokens, dim, generator=g),
        spec.mask_input: (torch.rand(2, 2, h, w, generator=g) > 0.5).float(),
        spec.mode_input: torch.ones(2, len(layers), dtype=torch.int64),
    }
    with atomic_dir(out) as tmp:
        log.info("exporting the controlled UNet (%d self-attention layers)", len(layers))
        result = export_unet(
            ControlledUNet(copy.deepcopy(unet)).eval(), (3 * c, h, w), opset=opset, extra_inputs=extra
        )
        proto = result.model
        if result.custom_ops:
            raise ExportError(
                f"the controlled graph has custom ops {result.custom_ops}; expected standard ops only"
            )
        onnx_path = tmp / "model.onnx"
        onnx.save_model(proto, str(onnx_path))
        try:
            onnx.checker.check_model(str(onnx_path), full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ExportError(f"exported graph fails the ONNX checker: {str(exc).splitlines()[0]}") from exc
        opset = graph_opset(proto)
        copy_conditioning_files(mc.spec, loaded.label_table, null_embedding, tmp, label_source)
        (tmp / CUSTOMIZE_JSON).write_text(spec.to_json())
        save_customize_golden(tmp, CUSTOMIZE_GOLDEN, golden)
        manifest = Manifest(
            name=out.name.removesuffix(".edgediff"),
            created_by=f"edgediff {__version__}",
            model=ModelSpec(
                family=type(unet).__name__ + FAMILY_SUFFIX,
                inputs=_tensor_specs(proto.graph.input),
                outputs=_tensor_specs(proto.graph.output),
                sample_shape=[c, h, w],
                output=result.output_names[0],
            ),
            sampler=sampler,
            onnx=OnnxSpec(opset=opset, ir_version=proto.ir_version),
            quant=QuantSpec(recipe={"dtype": "fp32"}),
            requirements=Requirements(onnxruntime_min=ort_min_version(opset)),
            device=profile.to_dict(),
            conditioning=mc.spec,
        )
        write_manifest(tmp, manifest)
        log.info("replaying the golden case through ONNX Runtime")
        report = _measure(tmp)
        tolerances, bounds = bounded_tolerances(report, "fp32", sampler.guidance_scale)
        if not bounds["within"]:
            log.warning("WARNING: %s", bounds["message"])
        manifest.parity = ParitySpec(
            tolerances=tolerances,
            report=report,
            tolerance_source=(
                "derived at export: 4x the max abs error and the min PSNR minus 6 dB measured by replaying "
                "the "
                f"PyTorch MCA-Ctrl golden case through ONNX Runtime {report['host']['onnxruntime']} on "
                f"{report['host']['machine']}, bounded at {bounds['latent_psnr_min_bound']:g} dB (fp32)"
            ),
            bounds=bounds,
        )
        write_manifest(tmp, manifest)
    log.info("customization bundle %s written in %.1f s", out, time.perf_counter() - t0)
    return out


def _measure(folder: Path) -> dict:
    from edgediff_runtime.backends import open_backend

    bundle = load_bundle(folder, verify=True, backend="ort")
    backend = open_backend("ort", bundle.model_path)
    report = run_customize_parity(bundle, backend, backend_name="ort")
    for key in ("checks", "passed", "tolerances", "tolerance_source", "export_bounds"):
        report.pop(key, None)
    return json.loads(
        json.dumps(report, default=lambda v: None if isinstance(v, float) and math.isinf(v) else v)
    )
