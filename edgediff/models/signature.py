"""What a denoiser class takes and returns: the one place that knows a diffusers model class.

Every stage asks `signature_of(model)` instead of testing model classes itself: the loader
(which class to build from a folder's `_class_name`), calibration and the PyTorch sampler (which
conditioning kwargs to pass, how to split a learned-sigma output), the exporter (the graph
inputs and their dynamic axes) and, through the bundle manifest, the runtime.

Shapes are symbolic: `"batch"` is the dynamic batch axis, other strings name config-derived
sizes that `ModelSignature.conditions_for(config)` resolves to ints from the model's config
(`"tokens"`, the text length, stays symbolic).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from edgediff.errors import EdgediffError

Layout = Literal["BCHW", "BCFHW"]
Family = Literal["unet", "transformer"]


@dataclass(frozen=True)
class ConditionInput:
    """One conditioning kwarg of the model's forward: its graph name, dtype and symbolic shape.

    `kwarg` is the forward argument (`"encoder_hidden_states"`, `"class_labels"`, or a dotted
    key into a dict argument: `"added_cond_kwargs.text_embeds"`); `name` is the ONNX input name.
    """

    kwarg: str
    name: str
    dtype: Literal["float32", "int64"]
    shape: tuple[str | int, ...]


@dataclass(frozen=True)
class ModelSignature:
    """A denoiser class's call contract.

    - `layout`: the sample layout, `BCHW` for images, `BCFHW` (batch, channels, frames, height,
      width) for video latents;
    - `conditions`: the conditioning inputs the class can take besides `sample` and `timestep`,
      in graph order (which of them a given config uses, `class_labels` of a class-conditional
      UNet2DModel say, is decided from its config by the loader);
    - `learned_sigma`: the output stacks the prediction and a variance over channels
      (`out_channels == 2 * in_channels`); samplers use the first half. Which configs do that
      is read per config by `output_channels` (DiT-XL/2 and PixArt do, a small DiT may not);
    - `family`: `transformer` for token models (their Linear layers get per-token dynamic
      activation quantization in the default recipe), `unet` otherwise.
    """

    class_name: str
    layout: Layout
    conditions: tuple[ConditionInput, ...] = ()
    learned_sigma: bool = False
    family: Family = "unet"

    @property
    def condition_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.conditions)

    def sample_shape(self, config) -> tuple[int, ...]:
        """One sample's shape from the model config: `(C, H, W)`, or `(C, F, H, W)` for `BCFHW`."""
        cfg = dict(config)
        if "in_channels" not in cfg or "sample_size" not in cfg:
            raise EdgediffError(f"{self.class_name} config lacks in_channels/sample_size; re-save the model")
        size = cfg["sample_size"]
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        if self.layout == "BCFHW":
            frames = cfg.get("video_length") or cfg.get("num_frames")
            if not frames:
                raise EdgediffError(f"{self.class_name} config gives no frame count (video_length)")
            return (int(cfg["in_channels"]), int(frames), int(h), int(w))
        return (int(cfg["in_channels"]), int(h), int(w))

    def output_channels(self, config) -> int:
        """Channels of the prediction the sampler uses: the first `in_channels` of a learned-sigma output."""
        cfg = dict(config)
        out = cfg.get("out_channels") or cfg["in_channels"]
        return int(cfg["in_channels"]) if int(out) == 2 * int(cfg["in_channels"]) else int(out)

    def conditions_for(self, config) -> tuple[ConditionInput, ...]:
        """The conditions a given config uses, with config-derived sizes resolved to ints.

        `class_labels` only when the config embeds classes (`num_class_embeds`/`class_embed_type`
        of a UNet, `num_embeds_ada_norm` of a DiT); the `encoder_hidden_states` width from
        `cross_attention_dim` (UNet) or `caption_channels` (PixArt, Latte); SDXL's
        `added_cond_kwargs` only for `addition_embed_type == "text_time"`; PixArt's resolution
        and aspect ratio only when the config uses additional conditions (the 1024 px models).
        """
        cfg = dict(config)
        used = []
        for c in self.conditions:
            size = _condition_size(self.class_name, c, cfg)
            if size is _UNUSED:
                continue
            shape = tuple(size.get(d, d) if isinstance(d, str) else d for d in c.shape)
            used.append(ConditionInput(c.kwarg, c.name, c.dtype, shape))
        return tuple(used)


_SIGNATURES: dict[str, ModelSignature] = {}


def register(signature: ModelSignature) -> ModelSignature:
    """Add a model class; its `class_name` must be the diffusers config's `_class_name`."""
    _SIGNATURES[signature.class_name] = signature
    return signature


def supported_classes() -> tuple[str, ...]:
    return tuple(sorted(_SIGNATURES))


def signature_for_class(class_name: str) -> ModelSignature:
    """The registered signature of `class_name`, or a one-line error listing the supported ones."""
    try:
        return _SIGNATURES[class_name]
    except KeyError:
        raise EdgediffError(
            f"model class {class_name!r} is not supported; supported: {', '.join(supported_classes())}"
        ) from None


_UNUSED = object()


def _first_int(*values) -> int | None:
    for v in values:
        if isinstance(v, (list, tuple)):
            v = v[0] if v else None
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def _condition_size(class_name: str, c: ConditionInput, cfg: dict):
    """Sizes of condition `c` under config `cfg` (symbolic name -> int), or `_UNUSED`."""
    if c.name == "class_labels":
        if class_name == "DiTTransformer2DModel":
            return {} if cfg.get("num_embeds_ada_norm") else _UNUSED
        return {} if cfg.get("num_class_embeds") or cfg.get("class_embed_type") else _UNUSED
    if c.name == "encoder_hidden_states":
        width = _first_int(cfg.get("caption_channels"), cfg.get("cross_attention_dim"))
        if width is None:
            raise EdgediffError(f"{class_name} config gives no cross_attention_dim/caption_channels")
        return {"cross_dim": width}
    if c.name in ("text_embeds", "time_ids"):
        if cfg.get("addition_embed_type") != "text_time":
            return _UNUSED
        time_dim = int(cfg.get("addition_time_embed_dim") or 0)
        text = int(cfg.get("projection_class_embeddings_input_dim") or 0) - 6 * time_dim
        return {"text_dim": text}
    if c.name in ("resolution", "aspect_ratio"):
        use = cfg.get("use_additional_conditions")
        if use is None:  # diffusers' own rule: only the 1024 px PixArt-alpha configs use them
            use = cfg.get("sample_size") == 128
        return {} if use else _UNUSED
    return {}


_EHS = ConditionInput(
    "encoder_hidden_states", "encoder_hidden_states", "float32", ("batch", "tokens", "cross_dim")
)
_LABELS = ConditionInput("class_labels", "class_labels", "int64", ("batch",))

_TEXT_EMBEDS = ConditionInput(
    "added_cond_kwargs.text_embeds", "text_embeds", "float32", ("batch", "text_dim")
)
_TIME_IDS = ConditionInput("added_cond_kwargs.time_ids", "time_ids", "float32", ("batch", 6))
_RESOLUTION = ConditionInput("added_cond_kwargs.resolution", "resolution", "float32", ("batch", 2))
_ASPECT = ConditionInput("added_cond_kwargs.aspect_ratio", "aspect_ratio", "float32", ("batch", 1))

register(ModelSignature("UNet2DModel", "BCHW", (_LABELS,)))
register(ModelSignature("UNet2DConditionModel", "BCHW", (_EHS, _LABELS, _TEXT_EMBEDS, _TIME_IDS)))
register(ModelSignature("DiTTransformer2DModel", "BCHW", (_LABELS,), family="transformer"))
register(
    ModelSignature("PixArtTransformer2DModel", "BCHW", (_EHS, _RESOLUTION, _ASPECT), family="transformer")
)
register(ModelSignature("LatteTransformer3DModel", "BCFHW", (_EHS,), family="transformer"))


def signature_of(model) -> ModelSignature:
    """The signature of a model instance (a quantized model keeps its diffusers class)."""
    return signature_for_class(type(model).__name__)
