"""`edgediff export onnx PIPELINE`: a prompt-to-image bundle from a text-to-image pipeline folder
(or a quantized folder of one): the denoiser bundle (`export_bundle`) plus `text_encoder.onnx`,
`vae_decoder.onnx`, `tokenizer/tokenizer.json`, `scheduler/scheduler_config.json`, golden
references per component and end to end, and the manifest's `pipeline` section
(edgediff_runtime.components).

The tokenizer is the one transformers loads from the pipeline's `tokenizer/` (what diffusers'
pipeline runs), saved as `tokenizers` JSON without padding/truncation; the runtime pads and
truncates to `max_length` = min(the tokenizer's `model_max_length`, the text encoder's positions).
The denoiser's null condition is the text encoder's embedding of the empty prompt.

Tolerances are derived as for the denoiser (edgediff_export.bundle): the bundle is replayed
through the runtime on this host; the text-embedding tolerance is 4x the measured max abs error,
the PSNR tolerances the measured value less 6 dB, never below the precision bound
(`PRECISION_BOUNDS`; for the end-to-end image, less the guidance amplification).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgediff.errors import EdgediffError
from edgediff.models.folder import is_quantized_folder, read_json
from edgediff.models.pipeline import PipelineParts, parts_from_record, text_pipeline_parts
from edgediff.utils.atomic import atomic_dir, check_writable
from edgediff_export.bundle import (
    PRECISION_BOUNDS,
    PSNR_MARGIN_DB,
    TOLERANCE_FACTOR,
    ExportOptions,
    export_bundle,
    guidance_amplification_db,
)
from edgediff_export.errors import ExportError
from edgediff_runtime.bundle import load_bundle, read_manifest, write_manifest
from edgediff_runtime.components import PIPELINE_GOLDEN, ComponentSpec, ComponentTensor, PipelineSpec

log = logging.getLogger(__name__)

#: Guidance scale of a pipeline bundle when --guidance is not given (Stable Diffusion's default).
DEFAULT_GUIDANCE = 7.5
GOLDEN_PROMPT = "a photo of a cat"
#: Prompts whose text embeddings condition the denoiser's golden references and output ranges.
CALIBRATION_PROMPTS = (GOLDEN_PROMPT, "a red house in the snow", "a dog", "a blue tree", "a green photo")
TOKENIZER_FILE = "tokenizer/tokenizer.json"
SCHEDULER_FILE = "scheduler/scheduler_config.json"
TEXT_ENCODER_FILE = "text_encoder.onnx"
VAE_DECODER_FILE = "vae_decoder.onnx"
PIPELINES_HINT = "pip install 'edgediff[pipelines]'"


def pipeline_parts_of(model: str | Path) -> PipelineParts | None:
    """The tokenizer, text encoder and VAE that go with `model`: its own (a pipeline folder) or the
    checked reference its quantized folder keeps; None for a denoiser-only model."""
    path = Path(str(model))
    if str(model).startswith("reference") and not path.exists():
        return None
    if is_quantized_folder(path):
        try:
            record = read_json(path / "edgediff_meta.json").get("pipeline")
        except EdgediffError:  # a damaged folder: the quantized-folder loader reports it
            return None
        return None if record is None else parts_from_record(record, path)
    return text_pipeline_parts(path)


# ----------------------------------------------------------------------------------- loading
def _transformers():
    try:
        import transformers
    except ImportError:
        raise ExportError(f"exporting a text encoder needs transformers; {PIPELINES_HINT}") from None
    return transformers


@dataclasses.dataclass
class TextParts:
    """The loaded tokenizer (transformers) and text encoder, and the token limit."""

    tokenizer: object
    text_encoder: nn.Module
    max_length: int
    pad_id: int

    def ids(self, prompts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(
            prompts, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        )
        return enc.input_ids

    @torch.no_grad()
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        dtype = next(self.text_encoder.parameters()).dtype
        return self.text_encoder(input_ids=ids, return_dict=False)[0].to(dtype).float()


def load_text_parts(parts: PipelineParts) -> TextParts:
    transformers = _transformers()
    cls = getattr(transformers, parts.text_encoder_class, None)
    if cls is None:
        raise ExportError(f"this transformers has no text encoder class {parts.text_encoder_class}")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(parts.tokenizer), local_files_only=True)
        encoder = cls.from_pretrained(str(parts.text_encoder), local_files_only=True).eval()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ExportError(f"cannot load the text encoder or tokenizer of {parts.root}: {exc}") from exc
    if not hasattr(tokenizer, "backend_tokenizer"):
        raise ExportError(
            f"the tokenizer of {parts.root} has no tokenizers backend; save it with tokenizer.json"
        )
    if tokenizer.pad_token_id is None:
        raise ExportError(f"the tokenizer of {parts.root} has no pad token; set pad_token in its config")
    positions = int(getattr(encoder.config, "max_position_embeddings", 0) or tokenizer.model_max_length)
    max_length = int(min(tokenizer.model_max_length, positions))
    return TextParts(tokenizer, encoder, max_length, int(tokenizer.pad_token_id))


def load_vae(parts: PipelineParts) -> nn.Module:
    from diffusers import AutoencoderKL

    try:
        return AutoencoderKL.from_pretrained(str(parts.vae), local_files_only=True).eval()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ExportError(f"cannot load the VAE of {parts.root}: {exc}") from exc


def tokenizer_json(text: TextParts) -> str:
    """transformers' tokenizer as `tokenizers` JSON, padding and truncation off (the runtime sets them)."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(text.tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    backend.no_truncation()
    return backend.to_str(pretty=True)


# ------------------------------------------------------------------------------------ export
class _TextEncoderGraph(nn.Module):
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=input_ids, return_dict=False)[0]


class _VaeDecoderGraph(nn.Module):
    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent_sample, return_dict=False)[0]


_ONNX_DTYPES = {1: "float32", 10: "float16", 7: "int64", 6: "int32", 9: "bool"}


def _tensors(values) -> list[ComponentTensor]:
    out = []
    for v in values:
        t = v.type.tensor_type
        dims: list[int | str] = [d.dim_param or d.dim_value for d in t.shape.dim]
        out.append(ComponentTensor(name=v.name, dtype=_ONNX_DTYPES.get(t.elem_type, "float32"), shape=dims))
    return out


def export_component(
    graph: nn.Module, example: torch.Tensor, path: Path, input_name: str, output_name: str, opset: int
) -> tuple[list[ComponentTensor], list[ComponentTensor]]:
    """`graph(example)` to ONNX at `path` with a dynamic batch; returns its inputs and outputs."""
    import onnx

    batch = torch.export.Dim("batch", min=1, max=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                graph.eval(),
                (example,),
                dynamo=True,
                dynamic_shapes={input_name: {0: batch}},
                opset_version=opset,
                input_names=[input_name],
                output_names=[output_name],
                external_data=False,
                verbose=False,
            )
        except Exception as exc:  # the exporter raises many types; report the first line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportError(f"torch.onnx.export of {path.name} failed: {first}") from exc
        program.save(str(path))
    model = onnx.load(str(path), load_external_data=False)
    return _tensors(model.graph.input), _tensors(model.graph.output)


# ------------------------------------------------------------------------------------ golden
@torch.no_grad()
def record_pipeline_golden(
    model: str | Path,
    text: TextParts,
    vae: nn.Module,
    bundle_dir: Path,
    prompt: str,
    negative: str,
    seed: int,
) -> dict[str, np.ndarray]:
    """PyTorch references: token ids and text embeddings (prompt, negative), the end-to-end run from
    seeded noise (the denoiser of the bundle's source with the bundle's sampler), its final latent
    and its decoded image (the VAE component's reference too)."""
    from edgediff.models.loading import load_model
    from edgediff.sampling import seeded_noise
    from edgediff_export.golden import TorchConditions, guided_ddim

    manifest = read_manifest(bundle_dir)
    loaded = load_model(model)
    cond_name = manifest.conditioning.input
    ids = text.ids([prompt, negative])
    emb = text.embed(ids)
    scale = manifest.sampler.guidance_scale
    guided = scale is not None and scale != 1.0
    conds = TorchConditions(
        {cond_name: emb[:1]},
        {cond_name: "encoder_hidden_states"},
        {cond_name: emb[1:]} if guided else None,
        scale if guided else None,
    )
    noise = seeded_noise(1, tuple(manifest.model.sample_shape), seed)
    run = guided_ddim(
        loaded.unet,
        manifest.sampler,
        noise,
        manifest.sampler.steps,
        conds,
        set_step=loaded.set_step,
        keep_trajectory=True,
    )
    latent = run.trajectory[-1].float()
    dtype = next(vae.parameters()).dtype
    sf = float(vae.config.scaling_factor)
    image = vae.decode((latent / sf).to(dtype), return_dict=False)[0].float().clamp(-1, 1)
    return {
        "ids": ids.numpy().astype(np.int64),
        "text_embeddings": emb.numpy().astype(np.float32),
        "noise": noise.numpy().astype(np.float32),
        "latent": latent.numpy().astype(np.float32),
        "image": image.numpy().astype(np.float32),
    }


def measure_pipeline(bundle_dir: Path, golden: dict[str, np.ndarray]) -> dict:
    """Replay the golden references through the runtime (ONNX Runtime on this host)."""
    from edgediff_runtime.parity import pipeline_parity

    bundle = load_bundle(bundle_dir, verify=True, backend="ort")
    return pipeline_parity(bundle, golden=golden)


def pipeline_tolerances(report: dict, te_precision: str, den_precision: str, scale: float | None) -> dict:
    """Derived tolerances bounded by the precision (module docstring)."""
    bound_vae = PRECISION_BOUNDS[te_precision]
    bound_img = PRECISION_BOUNDS[den_precision] - guidance_amplification_db(scale)

    def bounded(measured: float | None, bound: float) -> float:
        if measured is None:  # identical
            return round(bound, 2)
        return round(bound if measured < bound else max(measured - PSNR_MARGIN_DB, bound), 2)

    return {
        "text_embedding_max_abs": max(1e-5, TOLERANCE_FACTOR * report["text_embedding_max_abs"]),
        "vae_psnr_min": bounded(report["vae_psnr"], bound_vae),
        "image_psnr_min": bounded(report["image_psnr"], min(bound_img, PRECISION_BOUNDS[te_precision])),
    }


# ------------------------------------------------------------------------------------ driver
def export_pipeline_bundle(
    model: str | Path,
    parts: PipelineParts,
    out: Path,
    opts: ExportOptions = ExportOptions(),
    progress: bool = True,
    prompt: str = GOLDEN_PROMPT,
) -> Path:
    """Export a text-to-image pipeline (FP folder, or a quantized folder of one) to one bundle."""
    from edgediff_export.bundle import DTYPES, MAX_DEFAULT_OPSET, _profile

    out = Path(out)
    if not is_quantized_folder(Path(str(model))) and not opts.allow_fp:
        raise ExportError(
            f"{model} is not a quantized folder (no recipe.json); quantize it with 'edgediff quantize' "
            "or pass --fp to export the FP pipeline"
        )
    if opts.dtype not in DTYPES:
        raise ExportError(f"unknown --dtype {opts.dtype!r}: use one of {', '.join(DTYPES)}")
    check_writable(out)
    text = load_text_parts(parts)
    vae = load_vae(parts)
    width = int(text.text_encoder.config.hidden_size)
    den_cfg = read_json(_denoiser_config(Path(str(model))))
    if den_cfg.get("cross_attention_dim") not in (None, width):
        raise ExportError(
            f"the text encoder of {parts.root} is {width} wide but the denoiser's cross_attention_dim is "
            f"{den_cfg['cross_attention_dim']}; use the pipeline's own text encoder"
        )
    null = text.embed(text.ids([""]))[0].numpy()
    scale = DEFAULT_GUIDANCE if opts.guidance_scale is None else opts.guidance_scale
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.parts-", dir=out.resolve().parent))
    try:
        np.save(staging / "null.npy", null)
        np.save(staging / "prompts.npy", text.embed(text.ids(list(CALIBRATION_PROMPTS))).numpy())
        den_opts = dataclasses.replace(
            opts,
            cond_tokens=text.max_length,
            null_embedding=str(staging / "null.npy"),
            golden_embeddings=str(staging / "prompts.npy"),
            guidance_scale=scale,
        )
        export_bundle(model, staging / "denoiser", den_opts, progress=progress)
        opset = opts.opset or min(MAX_DEFAULT_OPSET, _profile(opts).max_opset)
        fp16 = opts.dtype == "fp16"
        with atomic_dir(out) as tmp:
            for item in (staging / "denoiser").iterdir():
                shutil.move(str(item), str(tmp / item.name))
            (tmp / "tokenizer").mkdir()
            (tmp / TOKENIZER_FILE).write_text(tokenizer_json(text), encoding="utf-8")
            (tmp / "scheduler").mkdir()
            (tmp / SCHEDULER_FILE).write_text(json.dumps(_scheduler_config(model), indent=2) + "\n")
            te_graph = _TextEncoderGraph(text.text_encoder.half() if fp16 else text.text_encoder)
            te_io = export_component(
                te_graph,
                text.ids(["", prompt]),
                tmp / TEXT_ENCODER_FILE,
                "input_ids",
                "last_hidden_state",
                opset,
            )
            latent_shape = read_manifest(tmp).model.sample_shape
            vae_graph = _VaeDecoderGraph(vae.half() if fp16 else vae)
            example = torch.randn(2, *latent_shape).to(torch.float16 if fp16 else torch.float32)
            vae_io = export_component(
                vae_graph, example, tmp / VAE_DECODER_FILE, "latent_sample", "sample", opset
            )
            text.text_encoder.float()
            vae.float()
            del te_graph, vae_graph
            manifest = read_manifest(tmp)
            manifest.name = out.name.removesuffix(".edgediff")
            precision = "fp16" if fp16 else "fp32"
            comps = [
                ComponentSpec("tokenizer", TOKENIZER_FILE, "-"),
                ComponentSpec("text_encoder", TEXT_ENCODER_FILE, precision, *te_io),
                ComponentSpec("denoiser", manifest.model.file, manifest.quant.label),
                ComponentSpec("vae_decoder", VAE_DECODER_FILE, precision, *vae_io),
                ComponentSpec("scheduler", SCHEDULER_FILE, "-"),
            ]
            h, w = latent_shape[-2:]
            factor = 2 ** (len(vae.config.block_out_channels) - 1)
            manifest.pipeline = PipelineSpec(
                components=comps,
                max_length=text.max_length,
                pad_id=text.pad_id,
                vae_scaling_factor=float(vae.config.scaling_factor),
                image_shape=[int(vae.config.out_channels), h * factor, w * factor],
                golden_prompt=prompt,
                source=f"pipeline folder {parts.root.resolve()}",
            )
            write_manifest(tmp, manifest)
            golden = record_pipeline_golden(model, text, vae, tmp, prompt, "", opts.seed)
            _save_pipeline_golden(tmp, golden)
            manifest = write_manifest(tmp, manifest)
            report = measure_pipeline(tmp, golden)
            den_precision = _denoiser_precision(manifest.quant.label, precision)
            manifest.pipeline.report = report
            manifest.pipeline.tolerances = pipeline_tolerances(
                report, precision, den_precision, manifest.sampler.guidance_scale
            )
            write_manifest(tmp, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _denoiser_precision(label: str, fp: str) -> str:
    """The `PRECISION_BOUNDS` class of the denoiser's quant label (`FP32`, `W8A8`, `W4A8`, ...)."""
    if label.upper().startswith("FP"):
        return fp
    bits = [int(b) for b in re.findall(r"\d+", label)]
    return "int8" if bits and min(bits) >= 8 else "low-bit"


def _denoiser_config(path: Path) -> Path:
    if is_quantized_folder(path):
        return path / "unet_config.json"
    from edgediff.models.folder import find_model_folder

    return find_model_folder(path).denoiser / "config.json"


def _scheduler_config(model: str | Path) -> dict:
    path = Path(str(model))
    if is_quantized_folder(path):
        return read_json(path / "scheduler_config.json")
    from edgediff.models.folder import find_model_folder

    folder = find_model_folder(path)
    if folder.scheduler is None:
        raise EdgediffError(f"pipeline {path} has no scheduler/scheduler_config.json")
    return read_json(folder.scheduler)


def _save_pipeline_golden(folder: Path, golden: dict[str, np.ndarray]) -> None:
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **golden)
    (folder / PIPELINE_GOLDEN).parent.mkdir(parents=True, exist_ok=True)
    (folder / PIPELINE_GOLDEN).write_bytes(buf.getvalue())


def export_optimum_folder(
    model: str | Path,
    parts: PipelineParts,
    out: Path,
    opts: ExportOptions = ExportOptions(),
    progress: bool = True,
) -> Path:
    """The pipeline bundle (built and parity-checked in a temporary folder), laid out for Optimum's
    ONNX Runtime diffusion pipelines at `out` (edgediff_export.optimum_layout)."""
    from edgediff_export.optimum_layout import write_optimum_layout

    out = Path(out)
    check_writable(out)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.bundle-", dir=out.resolve().parent))
    try:
        bundle = export_pipeline_bundle(model, parts, staging / "bundle.edgediff", opts, progress)
        return write_optimum_layout(bundle, Path(str(model)), parts, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
