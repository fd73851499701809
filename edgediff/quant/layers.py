"""`QuantLinear` / `QuantConv2d`: fake-quantized drop-in replacements built from a float layer.

Forward (docs/methods.md 1.2(5), 2.1, 3.2, 6.6, 6.7):
`W̃ = (W + ΔW_merged)·diag(δ)`, `Ŵ = Q_w(W̃) [+ α·sign(W̃ − Q_w(W̃))] [+ ΔW_additive] [+ B·A]`,
`X̂ = Q_a(X·diag(δ)^-1)`, `y = X̂ ⊛ Ŵ + bias [+ M ⊙ (X̂·Aᵀ·Bᵀ)] [+ ((M ⊙ X̂)·α)·βᵀ]`; the last
term is Q-VDiT's TQE branch (docs/methods.md 3.2), whose `M` is computed from `X` and `X̂`.
The FP branches (additive LoRA, low-rank without M) act on the same `X̂` as the main weight,
so they are added to the weight (one GEMM/conv); the per-frame branch runs separately.
"""

from __future__ import annotations

import abc

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgediff.errors import EdgediffError
from edgediff.quant.branches import BinaryResidual as _BinaryResidual
from edgediff.quant.branches import LoRA, LowRankBranch, Smooth, TQEBranch
from edgediff.quant.mixed import kurtosis, top_channels
from edgediff.quant.quantizers import ActQuantizer, WeightQuantizer
from edgediff.quant.recipe import LayerQuant
from edgediff.quant.spec import (
    ActSpec,
    LoRAFactors,
    LowRankFactors,
    QuantLayerSpec,
    ResidualCodes,
    TQEFactors,
)

_SMOOTH_EPS = 1e-5


def _clone(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach().clone()


class QuantLayer(nn.Module, abc.ABC):
    """Common part of `QuantLinear` and `QuantConv2d` (see module docstring)."""

    kind = ""
    channel_dim = -1

    def __init__(self, weight: Tensor, bias: Tensor | None, config: LayerQuant, num_steps: int | None = None):
        super().__init__()
        self.config = config
        self.name = ""
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=weight.requires_grad)
        self.bias = (
            None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)
        )
        shape = tuple(self.weight.shape)
        cout = shape[0]
        self.weight_quant = WeightQuantizer(cout, config.w_bits, config.w_granularity, config.w_symmetric)
        self.act_quant = (
            None
            if config.a_bits is None
            else ActQuantizer(config.a_bits, config.a_mode, num_steps, channel_dim=self.channel_dim)
        )
        groups = getattr(self, "groups", 1)
        self.smooth = Smooth(shape[1] * groups, groups) if config.smooth else None
        self.lora = None if config.lora is None else LoRA(shape, config.lora.rank, config.lora.mode)
        self.residual = None if config.residual is None else _BinaryResidual(cout)
        self.lowrank = (
            None
            if config.lowrank is None
            else LowRankBranch(shape, config.lowrank.rank, config.lowrank.frames)
        )
        t = config.tqe
        self.tqe = None if t is None else TQEBranch(shape, t.frames, t.layout, t.tokens, t.rank, t.m)
        self.to(self.weight.device)
        self.init_weight_range("minmax")

    # ------------------------------------------------------------ forward pieces

    @abc.abstractmethod
    def _op(self, x: Tensor, w: Tensor) -> Tensor:
        """The float op (linear or conv) on the quantized input and weight."""

    def effective_weight(self) -> Tensor:
        """`W̃ = (W + ΔW_merged)·diag(δ)`, the tensor the weight quantizer sees."""
        w = self.weight
        if self.lora is not None and self.lora.mode == "merged":
            w = w + self.lora.delta()
        if self.smooth is not None:
            w = self.smooth.scale_weight(w)
        return w

    def quantized_weight(self) -> Tensor:
        """`Ŵ`: quantized main weight plus binary residual and the FP branches that fold into it."""
        wt = self.effective_weight()
        w = self.weight_quant(wt)
        if self.residual is not None and self.weight_quant.enabled:
            w = self.residual(wt, w)
        if self.lora is not None and self.lora.mode == "additive":
            w = w + self.lora.delta()
        if self.lowrank is not None and self.lowrank.M is None:
            w = w + self.lowrank.weight()
        return w.to(self.weight.dtype)

    def _prescale(self, x: Tensor) -> Tensor:
        return x if self.smooth is None else self.smooth.scale_input(x, self.channel_dim)

    def quantize_input(self, x: Tensor) -> Tensor:
        """`X̂ = Q_a(X·diag(δ)^-1)`."""
        x = self._prescale(x)
        return x if self.act_quant is None else self.act_quant(x)

    def forward(self, x: Tensor) -> Tensor:
        xs = self._prescale(x)
        xq = xs if self.act_quant is None else self.act_quant(xs)
        y = self._op(xq, self.quantized_weight())
        if self.lowrank is not None and self.lowrank.M is not None:
            y = y + self.lowrank(xq).to(y.dtype)
        if self.tqe is not None:
            y = y + self.tqe(xs, xq).to(y.dtype)
        return y

    # ------------------------------------------------------------ initialisation

    def set_quant_enabled(self, weights: bool = True, acts: bool = True) -> None:
        """Turn the weight / activation quantizers on or off (off = identity)."""
        self.weight_quant.enabled = weights
        if self.act_quant is not None:
            self.act_quant.enabled = acts

    @torch.no_grad()
    def init_weight_range(self, method: str | None = None) -> None:
        """Weight quantizer range from `W̃` (`method` defaults to the recipe's `w_range`)."""
        self.weight_quant.init_range(self.effective_weight(), method or self.config.w_range)

    @torch.no_grad()
    def init_residual(self) -> None:
        """Choose the salient channels and set `α = mean|R_c|` (docs/methods.md 2.1)."""
        if self.residual is None:
            return
        wt = self.effective_weight()
        wq = self.weight_quant.quantize(wt)
        if self.config.residual.selection == "kurtosis":
            scores = kurtosis(wt)
        else:
            scores = (wt - wq).pow(2).reshape(wt.shape[0], -1).mean(dim=1)
        self.residual.init(wt, wq, top_channels(scores, self.config.residual.fraction))

    @torch.no_grad()
    def set_smooth(self, act_absmax: Tensor) -> None:
        """`δ_j = sqrt(max|X_j| / max|W_j|)` per input channel (docs/methods.md 1.2(2))."""
        if self.smooth is None:
            raise EdgediffError(f"layer {self.name} has no smoothing; set smooth=True in its LayerQuant")
        w = self.weight
        if self.lora is not None and self.lora.mode == "merged":
            w = w + self.lora.delta()
        cout, cin_g = w.shape[0], w.shape[1]
        wmax = w.abs().reshape(cout, cin_g, -1).amax(dim=2)
        wmax = wmax.reshape(self.smooth.groups, cout // self.smooth.groups, cin_g).amax(dim=1).reshape(-1)
        delta = (act_absmax.to(wmax).clamp(min=_SMOOTH_EPS) / wmax.clamp(min=_SMOOTH_EPS)).sqrt()
        self.smooth.delta.copy_(delta)
        self.smooth.folded.fill_(False)

    # ------------------------------------------------------------ export

    def _conv_fields(self) -> dict:
        return dict(kernel_size=None, stride=None, padding=None, dilation=None, groups=1)

    @torch.no_grad()
    def spec(self) -> QuantLayerSpec:
        """The export description (codes of `W̃`, merged LoRA and δ already inside)."""
        wt = self.effective_weight()
        wq = self.weight_quant
        scale, zero = wq.channel_params()
        residual = None
        if self.residual is not None:
            channels = torch.nonzero(self.residual.mask).reshape(-1)
            w_main = wq.quantize(wt)
            residual = ResidualCodes(
                channels=channels,
                signs=self.residual.signs(wt, w_main)[channels],
                alphas=_clone(self.residual.alpha[channels]),
            )
        act = None
        if self.act_quant is not None:
            aq = self.act_quant
            dyn = aq.mode == "dynamic_per_token"
            act = ActSpec(
                mode=aq.mode,
                bits=aq.bits,
                qmin=aq.qmin,
                qmax=aq.qmax,
                scale=None if dyn else _clone(aq.scale),
                zero_point=None if dyn else _clone(aq.zero_point),
                channel_dim=aq.channel_dim,
            )
        lora = None
        if self.lora is not None and self.lora.mode == "additive":
            lora = LoRAFactors(A=_clone(self.lora.A), B=_clone(self.lora.B))
        lowrank = None
        if self.lowrank is not None:
            lowrank = LowRankFactors(
                A=_clone(self.lowrank.A), B=_clone(self.lowrank.B), M=_clone(self.lowrank.M)
            )
        tqe = None
        if self.tqe is not None:
            b = self.tqe
            tqe = TQEFactors(
                alpha=_clone(b.alpha),
                beta=_clone(b.beta),
                frames=b.frames,
                layout=b.layout,
                tokens=b.tokens,
                use_m=b.use_m,
            )
        return QuantLayerSpec(
            name=self.name,
            kind=self.kind,
            in_channels=int(wt.shape[1]) * self._conv_fields()["groups"],
            out_channels=int(wt.shape[0]),
            weight_codes=wq.codes(wt),
            weight_scale=_clone(scale),
            weight_zero_point=_clone(zero),
            weight_bits=_clone(wq.bits),
            bias=_clone(self.bias),
            act=act,
            smooth=None if self.smooth is None else _clone(self.smooth.delta),
            residual=residual,
            lowrank=lowrank,
            lora=lora,
            tqe=tqe,
            **self._conv_fields(),
        )

    @torch.no_grad()
    def fold(self) -> QuantLayerSpec:
        """Merge merged-LoRA and δ into `weight` (B zeroed, `smooth.folded` set); returns `spec()`.

        The forward output is unchanged; the module keeps its structure, so its state_dict
        still loads into a model quantized with the same recipe.
        """
        self.weight.copy_(self.effective_weight())
        if self.lora is not None and self.lora.mode == "merged":
            self.lora.B.zero_()
        if self.smooth is not None:
            self.smooth.folded.fill_(True)
        return self.spec()

    def extra_repr(self) -> str:
        return f"{self.config.label}, a_mode={self.config.a_mode}, shape={tuple(self.weight.shape)}"


class QuantLinear(QuantLayer):
    """Fake-quantized `nn.Linear` (input quantized per tensor or per token over the last dim)."""

    kind = "linear"
    channel_dim = -1

    def __init__(self, weight: Tensor, bias: Tensor | None, config: LayerQuant, num_steps: int | None = None):
        self.in_features, self.out_features = int(weight.shape[1]), int(weight.shape[0])
        super().__init__(weight, bias, config, num_steps)

    @classmethod
    def from_float(cls, m: nn.Linear, config: LayerQuant, num_steps: int | None = None) -> QuantLinear:
        """Copy `m`'s weight and bias."""
        return cls(m.weight, m.bias, config, num_steps)

    def _op(self, x: Tensor, w: Tensor) -> Tensor:
        return F.linear(x, w, self.bias)


class QuantConv2d(QuantLayer):
    """Fake-quantized `nn.Conv2d` (keeps stride, padding, dilation and groups)."""

    kind = "conv2d"
    channel_dim = 1

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor | None,
        config: LayerQuant,
        num_steps: int | None = None,
        *,
        stride=(1, 1),
        padding=(0, 0),
        dilation=(1, 1),
        groups: int = 1,
    ):
        self.stride, self.padding, self.dilation, self.groups = (
            tuple(stride),
            padding,
            tuple(dilation),
            groups,
        )
        if not isinstance(padding, str):
            self.padding = tuple(padding)
        self.out_channels, self.in_channels = int(weight.shape[0]), int(weight.shape[1]) * groups
        self.kernel_size = tuple(weight.shape[2:])
        super().__init__(weight, bias, config, num_steps)

    @classmethod
    def from_float(cls, m: nn.Conv2d, config: LayerQuant, num_steps: int | None = None) -> QuantConv2d:
        """Copy `m`'s weight, bias and conv parameters (zero padding only)."""
        if m.padding_mode != "zeros":
            raise EdgediffError(
                f"conv padding_mode {m.padding_mode!r} is not supported; keep that layer FP with a None rule"
            )
        return cls(
            m.weight,
            m.bias,
            config,
            num_steps,
            stride=m.stride,
            padding=m.padding,
            dilation=m.dilation,
            groups=m.groups,
        )

    def _op(self, x: Tensor, w: Tensor) -> Tensor:
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def _conv_fields(self) -> dict:
        return dict(
            kernel_size=self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
        )
