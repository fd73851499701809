"""What a denoiser class takes and returns: the one place that knows a diffusers model class.

Every stage asks `signature_of(model)` instead of testing model classes itself: the loader
(which class to build from a folder's `_class_name`), calibration and the PyTorch sampler (which
conditioning kwargs to pass, how to split a learned-sigma output), the exporter (the graph
inputs and their dynamic axes) and, through the bundle manifest, the runtime.

Shapes are symbolic: `"batch"` is the dynamic batch axis, other strings name config-derived
sizes that `ModelSignature.input_shapes` resolves from the model's config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from edgediff.errors import EdgediffError

Layout = Literal["BCHW", "BCFHW"]


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
      (`out_channels == 2 * in_channels`); samplers use the first half.
    """

    class_name: str
    layout: Layout
    conditions: tuple[ConditionInput, ...] = ()
    learned_sigma: bool = False

    @property
    def condition_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.conditions)


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


_EHS = ConditionInput(
    "encoder_hidden_states", "encoder_hidden_states", "float32", ("batch", "tokens", "cross_dim")
)
_LABELS = ConditionInput("class_labels", "class_labels", "int64", ("batch",))

register(ModelSignature("UNet2DModel", "BCHW", (_LABELS,)))
register(ModelSignature("UNet2DConditionModel", "BCHW", (_EHS, _LABELS)))
register(ModelSignature("DiTTransformer2DModel", "BCHW", (_LABELS,)))
register(ModelSignature("PixArtTransformer2DModel", "BCHW", (_EHS,)))
register(ModelSignature("LatteTransformer3DModel", "BCFHW", (_EHS,)))
