"""The manifest's `pipeline` section: a prompt-to-image bundle's components and their order.

A text-to-image bundle holds, besides the denoiser (`model.onnx`, described by `manifest.model`):

- `tokenizer`: `tokenizer/tokenizer.json`, run by the `tokenizers` package (`max_length` tokens,
  padded with `pad_id`, truncated past the limit);
- `text_encoder`: `text_encoder.onnx`, token ids [batch, max_length] int64 -> the embedding
  output `text_embedding` [batch, max_length, width], the denoiser's condition;
- `vae_decoder`: `vae_decoder.onnx`, latent / `vae_scaling_factor` -> image [batch, 3, H, W]
  in [-1, 1];
- `scheduler`: the pipeline's `scheduler/scheduler_config.json` as exported (the runtime's
  sampler is `manifest.sampler`; the file keeps the bundle readable by diffusers-layout tools).

`order` is the order the components run in. `golden` holds the per-component and end-to-end
references recorded from PyTorch at export, checked by `edgediff-run parity` against
`tolerances` (keys in `PIPELINE_TOLERANCE_KEYS`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

COMPONENTS = ("tokenizer", "text_encoder", "denoiser", "vae_decoder", "scheduler")
ORDER = ("tokenizer", "text_encoder", "denoiser", "vae_decoder")
ONNX_COMPONENTS = ("text_encoder", "denoiser", "vae_decoder")
PIPELINE_GOLDEN = "reference/pipeline_golden.npz"
PIPELINE_TOLERANCE_KEYS = ("text_embedding_max_abs", "vae_psnr_min", "image_psnr_min")

_TENSOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "dtype": {"enum": ["float32", "float16", "int64", "int32", "bool"]},
        "shape": {"type": "array", "items": {"type": ["integer", "string"]}},
    },
    "required": ["name", "dtype", "shape"],
}
_COMPONENT = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"enum": list(COMPONENTS)},
        "file": {"type": "string", "minLength": 1},
        "precision": {"type": "string", "minLength": 1},
        "inputs": {"type": "array", "items": _TENSOR},
        "outputs": {"type": "array", "items": _TENSOR},
    },
    "required": ["name", "file"],
}
PIPELINE_SCHEMA: dict[str, Any] = {
    "type": ["object", "null"],
    "additionalProperties": False,
    "properties": {
        "kind": {"enum": ["text_to_image"]},
        "order": {"type": "array", "items": {"enum": list(COMPONENTS)}},
        "components": {"type": "array", "minItems": 1, "items": _COMPONENT},
        "max_length": {"type": "integer", "minimum": 2},
        "pad_id": {"type": "integer", "minimum": 0},
        "text_embedding": {"type": "string", "minLength": 1},
        "vae_scaling_factor": {"type": "number", "exclusiveMinimum": 0},
        "image_shape": {"type": "array", "items": {"type": "integer"}},
        "golden": {"type": ["string", "null"]},
        "golden_prompt": {"type": "string"},
        "golden_negative_prompt": {"type": "string"},
        "tolerances": {"type": "object"},
        "report": {"type": ["object", "null"]},
        "source": {"type": "string"},
    },
    "required": ["kind", "order", "components", "max_length", "pad_id", "text_embedding"],
}


@dataclass
class ComponentTensor:
    """One graph input/output of a component (symbolic dims are strings)."""

    name: str
    dtype: str
    shape: list[int | str]


@dataclass
class ComponentSpec:
    """One component: its bundle file, its precision (`fp32`, `fp16`, `W8A8`, ...) and, for an ONNX
    component other than the denoiser, its graph inputs and outputs."""

    name: str
    file: str
    precision: str = "fp32"
    inputs: list[ComponentTensor] = field(default_factory=list)
    outputs: list[ComponentTensor] = field(default_factory=list)

    def input(self, index: int = 0) -> ComponentTensor:
        return self.inputs[index]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ComponentSpec:
        data = dict(data)
        data["inputs"] = [ComponentTensor(**t) for t in data.get("inputs", [])]
        data["outputs"] = [ComponentTensor(**t) for t in data.get("outputs", [])]
        return cls(**data)


@dataclass
class PipelineSpec:
    """The manifest's `pipeline` section (module docstring)."""

    components: list[ComponentSpec]
    max_length: int
    pad_id: int
    text_embedding: str = "last_hidden_state"
    vae_scaling_factor: float = 0.18215
    image_shape: list[int] = field(default_factory=list)
    order: list[str] = field(default_factory=lambda: list(ORDER))
    kind: str = "text_to_image"
    golden: str | None = PIPELINE_GOLDEN
    golden_prompt: str = ""
    golden_negative_prompt: str = ""
    tolerances: dict[str, float] = field(default_factory=dict)
    report: dict[str, Any] | None = None
    source: str = ""

    def component(self, name: str) -> ComponentSpec:
        for spec in self.components:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def has(self, name: str) -> bool:
        return any(c.name == name for c in self.components)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PipelineSpec:
        data = dict(data)
        data["components"] = [ComponentSpec.from_dict(c) for c in data["components"]]
        return cls(**data)

    def problems(self, denoiser_file: str, cond_width: int | None) -> list[str]:
        """Cross-field rules: every component of `order` is listed, the denoiser is `model.onnx`, the
        text encoder's embedding width is the denoiser's condition width."""
        out = []
        names = [c.name for c in self.components]
        for name in self.order:
            if name not in names:
                out.append(f"pipeline.order names {name}, which pipeline.components does not list")
        if "denoiser" in names and self.component("denoiser").file != denoiser_file:
            out.append(f"pipeline denoiser file {self.component('denoiser').file} is not {denoiser_file}")
        if "text_encoder" in names:
            te = self.component("text_encoder")
            emb = next((t for t in te.outputs if t.name == self.text_embedding), None)
            if emb is None:
                out.append(f"text encoder has no output {self.text_embedding!r}")
            elif cond_width is None:
                out.append("the denoiser takes no text embeddings (no conditioning section)")
            elif isinstance(emb.shape[-1], int) and emb.shape[-1] != cond_width:
                out.append(
                    f"text embeddings are {emb.shape[-1]} wide but the denoiser takes {cond_width}; "
                    "export the text encoder of the denoiser's own pipeline"
                )
        for key in self.tolerances:
            if key not in PIPELINE_TOLERANCE_KEYS:
                known = ", ".join(PIPELINE_TOLERANCE_KEYS)
                out.append(f"pipeline.tolerances.{key} is unknown (known: {known})")
        return out
