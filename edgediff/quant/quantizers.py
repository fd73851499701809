"""Weight and activation fake quantizers (nn.Modules; all learned state in the state_dict).

* `WeightQuantizer`: per output channel (axis 0) with a per-channel bit vector (buffer
  `bits`), learnable `scale` (Parameter) and integer `zero_point` (buffer); docs/methods.md 1.2(4),
  6.1, 6.8. `granularity="per_tensor"` ties one scale/zero to all channels.
* `ActQuantizer`: per-tensor `static`, `per_step` (a `[num_steps]` table indexed by the
  sampler step set with `set_step(i)`, docs/methods.md 1.2(6), 6.3) or `dynamic_per_token`
  (docs/methods.md 6.4, no parameters).
Both have an `enabled` flag (a plain attribute, not saved) that turns them into identities.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from edgediff.bitspec import check_bits
from edgediff.errors import EdgediffError
from edgediff.quant.primitives import (
    fake_quant_dynamic_per_token,
    fake_quant_per_channel,
    fake_quant_per_tensor,
    qrange,
    quant_codes,
)
from edgediff.quant.ranges import init_params

ACT_MODES = ("static", "per_step", "dynamic_per_token")
W_GRANULARITIES = ("per_channel", "per_tensor")


class WeightQuantizer(nn.Module):
    """Per-output-channel uniform affine weight quantizer with per-channel bit widths."""

    def __init__(
        self,
        out_channels: int,
        bits: int | Sequence[int],
        granularity: str = "per_channel",
        symmetric: bool = False,
    ):
        super().__init__()
        if granularity not in W_GRANULARITIES:
            raise EdgediffError(f"unknown weight granularity {granularity!r}: use per_channel or per_tensor")
        if isinstance(bits, int):
            vec = [check_bits(bits, "weight bits")] * out_channels
        else:
            vec = [check_bits(b, "weight bits") for b in bits]
            if len(vec) != out_channels:
                raise EdgediffError(
                    f"per-channel weight bits have {len(vec)} entries but the layer has {out_channels} "
                    "output channels; give one bit width per output channel or a single int"
                )
        if granularity == "per_tensor" and len(set(vec)) > 1:
            raise EdgediffError(
                "per_tensor weight quantization needs one bit width; use per_channel for mixed bits"
            )
        self.granularity = granularity
        self.symmetric = symmetric
        self.out_channels = out_channels
        n = out_channels if granularity == "per_channel" else 1
        self.register_buffer("bits", torch.tensor(vec, dtype=torch.int32))
        self.scale = nn.Parameter(torch.ones(n))
        self.register_buffer("zero_point", torch.zeros(n, dtype=torch.int32))
        self.enabled = True

    def channel_params(self) -> tuple[Tensor, Tensor]:
        """`(scale, zero_point)` expanded to one entry per output channel."""
        return self.scale.expand(self.out_channels), self.zero_point.expand(self.out_channels)

    def forward(self, w: Tensor) -> Tensor:
        """Fake-quantize `w` (Cout, ...) per output channel (docs/methods.md 1.2(4))."""
        return self.quantize(w) if self.enabled else w

    def quantize(self, w: Tensor) -> Tensor:
        """Fake-quantize `w` regardless of `enabled`."""
        scale, zero = self.channel_params()
        qmin, qmax = qrange(self.bits)
        return fake_quant_per_channel(w, scale, zero, qmin, qmax, 0)

    @torch.no_grad()
    def codes(self, w: Tensor) -> Tensor:
        """Integer codes of `w` as uint8 (Cout, ...)."""
        scale, zero = self.channel_params()
        qmin, qmax = qrange(self.bits)
        shape = (-1,) + (1,) * (w.dim() - 1)
        c = quant_codes(
            w, scale.reshape(shape), zero.reshape(shape), qmin.reshape(shape), qmax.reshape(shape)
        )
        return c.to(torch.uint8)

    @torch.no_grad()
    def init_range(self, w: Tensor, method: str) -> None:
        """Initialise scale/zero from `w` with `method` in minmax | lp | clip_grid (docs/methods.md 6.2).

        Symmetric: the searched range is `[-r·max|w|, r·max|w|]` and the zero point is the middle
        code `2^(b-1)` exactly (so `q - z` spans `[-2^(b-1), 2^(b-1) - 1]`, a signed b-bit code).
        """
        qmin, qmax = qrange(self.bits)
        bits = self.bits
        if self.granularity == "per_channel":
            rows = w.detach().reshape(self.out_channels, -1)
        else:
            rows, qmin, qmax, bits = w.detach().reshape(1, -1), qmin[:1], qmax[:1], bits[:1]
        if self.symmetric:
            a = rows.float().abs().amax(dim=1)
            scale, _ = init_params(rows, qmin, qmax, method, lo=-a, hi=a)
            zero = (2 ** (bits.long() - 1)).to(torch.int32)
        else:
            scale, zero = init_params(rows, qmin, qmax, method)
        self.scale.copy_(scale.to(self.scale))
        self.zero_point.copy_(zero)


class ActQuantizer(nn.Module):
    """Per-tensor activation quantizer: static, per sampler step, or dynamic per token."""

    def __init__(self, bits: int, mode: str = "static", num_steps: int | None = None, channel_dim: int = -1):
        super().__init__()
        if mode not in ACT_MODES:
            raise EdgediffError(f"unknown activation mode {mode!r}: use one of {', '.join(ACT_MODES)}")
        self.bits = check_bits(bits, "activation bits")
        self.qmin, self.qmax = qrange(self.bits)
        self.mode = mode
        self.channel_dim = channel_dim
        self.name = ""
        self.step: int | None = None
        self.enabled = True
        if mode == "per_step":
            if num_steps is None or int(num_steps) < 1:
                raise EdgediffError(
                    "per_step activation quantizers need the sampler's step count: "
                    "pass num_steps= to quantize_"
                )
            n = int(num_steps)
        else:
            n = 1
        self.num_steps = n if mode == "per_step" else None
        if mode != "dynamic_per_token":
            self.scale = nn.Parameter(torch.ones(n))
            self.register_buffer("zero_point", torch.zeros(n, dtype=torch.int32))
            self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def set_step(self, i: int | None) -> None:
        """Select the table entry for sampler step `i` (0 = first, noisiest call); None clears."""
        if i is not None and self.mode == "per_step" and not 0 <= int(i) < self.num_steps:
            raise EdgediffError(
                f"step {i} is outside the per-step activation table of {self.num_steps} steps "
                f"(layer {self.name or '?'}); sample with {self.num_steps} steps "
                f"or re-quantize with num_steps={i + 1}"
            )
        self.step = None if i is None else int(i)

    def _index(self) -> int:
        if self.mode != "per_step":
            return 0
        if self.step is None:
            raise EdgediffError(
                f"per-step activation quantizer of layer {self.name or '?'} has no step: call "
                "edgediff.quant.set_step(model, i) before each model call (or pass set_step= to ddim_sample)"
            )
        return self.step

    def forward(self, x: Tensor) -> Tensor:
        """Fake-quantize the layer input (docs/methods.md 6.1, 6.3, 6.4)."""
        if not self.enabled:
            return x
        if self.mode == "dynamic_per_token":
            return fake_quant_dynamic_per_token(x, self.qmin, self.qmax, self.channel_dim)
        if not torch.compiler.is_compiling() and not bool(self.initialized):
            raise EdgediffError(
                f"activation quantizer of layer {self.name or '?'} is not calibrated: run "
                "edgediff.quant.calibrate(model, data) first (or disable activation quantization)"
            )
        i = self._index()
        return fake_quant_per_tensor(x, self.scale[i], self.zero_point[i], self.qmin, self.qmax)

    @torch.no_grad()
    def init_range(
        self, samples: Tensor, lo: Tensor, hi: Tensor, method: str, index: int | None = None
    ) -> None:
        """Set entry `index` (all entries when None) from calibration samples and the exact range."""
        if self.mode == "dynamic_per_token":
            return
        scale, zero = init_params(samples.reshape(1, -1), self.qmin, self.qmax, method, lo, hi)
        if index is None:
            self.scale.fill_(float(scale[0]))
            self.zero_point.fill_(int(zero[0]))
        else:
            self.scale[index] = scale[0]
            self.zero_point[index] = zero[0]
        self.initialized.fill_(True)

    def extra_repr(self) -> str:
        steps = f", num_steps={self.num_steps}" if self.num_steps else ""
        return f"bits={self.bits}, mode={self.mode}{steps}"
