"""Prompt -> image on the device: tokenizer -> text encoder -> guided denoiser loop -> VAE decoder
(the `pipeline` section of the manifest, edgediff_runtime.components). numpy, onnxruntime and
`tokenizers` only (`pip install 'edgediff-runtime[prompts]'`).

Classifier-free guidance (Ho & Salimans 2022, Eq. 6) takes the negative prompt (default: the
empty prompt) as its null condition: eps = u + w (c - u). The final latent x_0 is decoded as
D(x_0 / s) with s the VAE scaling factor (Rombach et al. 2022), an image in [-1, 1].

Loading: `together` opens the three ONNX components before the first one runs; `sequential`
opens each just before it runs and frees it after (text encoder freed before the denoiser loop,
VAE decoder opened after it), so the peak holds one component's weights and buffers at a time.
`auto` picks sequential when the bundle's device profile leaves less memory for a model than
3 x the summed component files (the exporter's fit rule).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgediff_runtime.backends import Backend
from edgediff_runtime.bundle import Bundle
from edgediff_runtime.components import ComponentSpec, PipelineSpec
from edgediff_runtime.errors import RuntimeStageError
from edgediff_runtime.pipeline import Guidance, StepCallback, sample

log = logging.getLogger(__name__)

LOAD_MODES = ("auto", "sequential", "together")
#: Memory a loaded ONNX component takes per byte of its file: weights + activations + buffers
#: (the exporter's check_memory_fit rule).
MEMORY_FACTOR = 3.0

#: Opens one ONNX file of the bundle as a backend (the CLI binds providers and threads).
Opener = Callable[[Path], Backend]


def pipeline_of(bundle: Bundle) -> PipelineSpec:
    """The bundle's pipeline section, or a one-line error for a denoiser-only bundle."""
    spec = bundle.manifest.pipeline
    if spec is None:
        raise RuntimeStageError(
            f"bundle {bundle.name} has no text encoder or tokenizer (denoiser only); pass --cond FILE, "
            "or export the whole pipeline folder"
        )
    return spec


def check_components(bundle: Bundle) -> None:
    """Every ONNX component's graph has the inputs and outputs the manifest lists (one line otherwise)."""
    from edgediff_runtime.onnx_header import OnnxHeaderError, read_onnx_header

    spec = pipeline_of(bundle)
    for comp in spec.components:
        if comp.name not in ("text_encoder", "vae_decoder"):
            continue
        path = bundle.root / comp.file
        try:
            header = read_onnx_header(path)
        except (OSError, OnnxHeaderError) as exc:
            raise RuntimeStageError(
                f"cannot read {comp.file} of bundle {bundle.name} ({exc}); re-export it"
            ) from None
        declared = sorted(t.name for t in comp.inputs), sorted(t.name for t in comp.outputs)
        if declared != (sorted(header.inputs), sorted(header.outputs)):
            raise RuntimeStageError(
                f"bundle {bundle.name}: {comp.file} has inputs {header.inputs} and outputs "
                f"{header.outputs}, the manifest lists {declared[0]} and {declared[1]}; re-export the bundle"
            )


# ------------------------------------------------------------------------------------ tokenizer
class PromptTokenizer:
    """The bundle's `tokenizer.json` padded and truncated to `max_length` tokens (BOS/EOS included)."""

    def __init__(self, path: Path, max_length: int, pad_id: int) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise RuntimeStageError(
                "prompts need the tokenizers package; pip install 'edgediff-runtime[prompts]'"
            ) from None
        try:
            self.tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises its own Exception type for bad files
            raise RuntimeStageError(
                f"cannot read tokenizer {path}: {str(exc)[:200]}; re-export the bundle"
            ) from None
        self.tokenizer.enable_truncation(max_length=max_length)
        self.tokenizer.enable_padding(length=max_length, pad_id=pad_id)
        self.max_length = max_length

    def __call__(self, prompts: list[str]) -> np.ndarray:
        """Token ids [len(prompts), max_length] int64; a prompt past the limit is cut, with a warning."""
        ids = []
        for prompt in prompts:
            enc = self.tokenizer.encode(prompt)
            if enc.overflowing:
                kept = self.tokenizer.decode(enc.ids, skip_special_tokens=True)
                log.warning(
                    "warning: the prompt is longer than the tokenizer's limit of %d tokens and was "
                    "truncated to: %r",
                    self.max_length,
                    kept,
                )
            ids.append(enc.ids)
        return np.asarray(ids, dtype=np.int64)


# ----------------------------------------------------------------------------------- components
def _dtype(comp: ComponentSpec, index: int = 0) -> np.dtype:
    return np.dtype(comp.inputs[index].dtype)


def encode_text(backend: Backend, spec: PipelineSpec, ids: np.ndarray) -> np.ndarray:
    """Text embeddings [N, max_length, width] float32 of token ids [N, max_length]."""
    comp = spec.component("text_encoder")
    out = backend.run({comp.inputs[0].name: ids.astype(_dtype(comp))})
    return np.asarray(out[spec.text_embedding], dtype=np.float32)


def decode_latents(backend: Backend, spec: PipelineSpec, latents: np.ndarray) -> np.ndarray:
    """D(x_0 / s): images [N, 3, H, W] in [-1, 1] (clipped) from final latents [N, C, h, w]."""
    comp = spec.component("vae_decoder")
    z = (np.asarray(latents, np.float32) / np.float32(spec.vae_scaling_factor)).astype(_dtype(comp))
    out = backend.run({comp.inputs[0].name: z})
    return np.clip(np.asarray(out[comp.outputs[0].name], dtype=np.float32), -1.0, 1.0)


def component_bytes(bundle: Bundle) -> int:
    """Summed size of the bundle's ONNX components (external data included)."""
    total = 0
    for comp in pipeline_of(bundle).components:
        if comp.file.endswith(".onnx"):
            total += sum(p.stat().st_size for p in bundle.root.glob(comp.file + "*") if p.is_file())
    return total


def resolve_load(mode: str, bundle: Bundle) -> str:
    """`sequential` or `together` for `mode` (`auto`: sequential when the device profile leaves less
    model memory than MEMORY_FACTOR x the component files)."""
    if mode not in LOAD_MODES:
        raise RuntimeStageError(f"unknown --load {mode!r}: use one of {', '.join(LOAD_MODES)}")
    if mode != "auto":
        return mode
    profile = bundle.manifest.profile()
    if profile is None:
        return "together"
    need_gb = MEMORY_FACTOR * component_bytes(bundle) / 2**30
    return "sequential" if need_gb > profile.model_memory_gb else "together"


@dataclass
class PromptResult:
    """Images [N, 3, H, W] in [-1, 1], the final latents, the text embeddings (cond, null) and the
    denoiser's per-call seconds; `load` is the loading mode that ran."""

    images: np.ndarray
    latents: np.ndarray
    cond: np.ndarray
    null: np.ndarray | None
    load: str
    call_seconds: list[float] = field(default_factory=list)


def text_to_image(
    bundle: Bundle,
    open_onnx: Opener,
    prompts: list[str],
    noise: np.ndarray,
    *,
    negative_prompt: str = "",
    guidance: float | None = None,
    steps: int | None = None,
    load: str = "together",
    step_callback: StepCallback | None = None,
) -> PromptResult:
    """Prompt -> image for `len(prompts)` samples from `noise` [N, C, h, w] (module docstring).

    `guidance` None or 1: no classifier-free guidance (the null prompt is not encoded)."""
    spec = pipeline_of(bundle)
    if load not in ("sequential", "together"):
        raise RuntimeStageError(f"load must be sequential or together, got {load!r}")
    if len(prompts) != noise.shape[0]:
        raise RuntimeStageError(f"{len(prompts)} prompt(s) for {noise.shape[0]} noise sample(s)")
    tokenize = PromptTokenizer(bundle.root / spec.component("tokenizer").file, spec.max_length, spec.pad_id)
    guided = guidance is not None and guidance != 1.0
    ids = tokenize(list(prompts) + ([negative_prompt] if guided else []))
    files = {name: bundle.root / spec.component(name).file for name in ("text_encoder", "vae_decoder")}
    held: dict[str, Backend] = {}
    if load == "together":
        held = {
            "text_encoder": open_onnx(files["text_encoder"]),
            "vae_decoder": open_onnx(files["vae_decoder"]),
        }
        held["denoiser"] = open_onnx(bundle.model_path)
    text = held.get("text_encoder") or open_onnx(files["text_encoder"])
    emb = encode_text(text, spec, ids)
    del text
    gc.collect()  # sequential: the text encoder's session is gone before the denoiser opens
    cond = emb[: len(prompts)]
    null = np.repeat(emb[len(prompts) :], len(prompts), axis=0) if guided else None
    denoiser = held.get("denoiser") or open_onnx(bundle.model_path)
    name = bundle.manifest.conditioning.input if bundle.manifest.conditioning else "encoder_hidden_states"
    result = sample(
        bundle,
        denoiser,
        noise,
        steps,
        step_callback,
        extra_feeds=None if guided else {name: cond},
        guidance=Guidance(scale=float(guidance), uncond={name: null}, cond={name: cond}) if guided else None,
        clip_final=False,
    )
    del denoiser
    gc.collect()
    vae = held.get("vae_decoder") or open_onnx(files["vae_decoder"])
    images = decode_latents(vae, spec, result.final)
    return PromptResult(
        images=images, latents=result.final, cond=cond, null=null, load=load, call_seconds=result.call_seconds
    )
