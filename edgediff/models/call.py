"""One denoiser call for every supported class: `x, t, conditions -> prediction`.

The classes differ in how they are called (`UNet2DModel(sample, timestep)`, PixArt's second
positional argument is `encoder_hidden_states`, SDXL and PixArt take some inputs inside an
`added_cond_kwargs` dict) and in what they return (learned-sigma models stack a variance after
the prediction). `denoise` hides both, so the sampler, calibration and fine-tuning call every
model the same way. Conditions are keyed by `ConditionInput.name`.
"""

from __future__ import annotations

from torch import Tensor, nn

from edgediff.errors import EdgediffError
from edgediff.models.signature import signature_of, supported_classes


def forward_kwargs(model: nn.Module, cond: dict[str, Tensor]) -> dict:
    """The forward kwargs for conditions `cond` (by name): dotted kwargs go into their dict."""
    sig = signature_of(model)
    by_name = {c.name: c for c in sig.conditions}
    kwargs: dict = {}
    for name, value in cond.items():
        c = by_name.get(name)
        if c is None:
            raise EdgediffError(
                f"{sig.class_name} takes no condition {name!r}; it takes {', '.join(by_name) or 'none'}"
            )
        head, _, key = c.kwarg.partition(".")
        if key:
            kwargs.setdefault(head, {})[key] = value
        else:
            kwargs[head] = value
    if sig.class_name == "PixArtTransformer2DModel":
        kwargs.setdefault("added_cond_kwargs", {"resolution": None, "aspect_ratio": None})
    return kwargs


def denoise(model: nn.Module, x: Tensor, t: Tensor, cond: dict[str, Tensor] | None = None) -> Tensor:
    """The model's prediction for latents `x` at timesteps `t` (B,), first `in_channels` channels
    of a learned-sigma output. A module of an unregistered class (a test double, a wrapper) is
    called as `model(x, t, **cond)`."""
    if type(model).__name__ not in supported_classes():
        out = model(x, t, **(cond or {}))
        return getattr(out, "sample", out)
    out = model(x, timestep=t, **forward_kwargs(model, cond or {}), return_dict=False)[0]
    channels = x.shape[1]
    return out[:, :channels] if out.shape[1] == 2 * channels else out
