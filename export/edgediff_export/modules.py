"""Export modules: a quantized layer rebuilt from its `QuantLayerSpec` on integer codes.

`prepare_for_export(model, placement)` returns a deep copy of the model in which every
`QuantLayer` is replaced by an `ExportQuantLayer` that computes exactly what the ONNX graph will
compute (weights as integer initializers + DequantizeLinear, activations as Q/DQ with constant
or per-step gathered scales, binary residuals as one custom node), plus a `StepInput` that the
wrapper sets from the graph's `step` input (docs/methods.md 6.3: scales indexed by sampler step).

Containers: weight codes of b <= 8 bits are stored as uint8 with uint8 zero points (the passes
narrow them to uint4/uint2 where the whole tensor fits); the residual node takes int8 codes
`q - 128` with int8 zero points `z - 128`, the same values exactly. Placement `ort` keeps the
quantizer's asymmetric uint8 activations; `trt` uses symmetric int8 (zero point 0) with a Clip
that carries the asymmetric range, which is exact when `[-z, qmax - z]` fits in [-128, 127].
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgediff.quant import QuantLayer, quant_layers
from edgediff.quant.branches import lowrank_apply, tqe_apply
from edgediff.quant.spec import QuantLayerSpec
from edgediff_export.errors import ExportError
from edgediff_export.signs import pack_signs
from edgediff_export.torch_ops import (
    clip_qdq,
    dq_weight,
    qdq,
    residual_binary_conv,
    residual_binary_linear,
)

PLACEMENTS = ("ort", "trt")


class StepInput:
    """Holds the current step index tensor while the export wrapper runs (not a module state)."""

    def __init__(self) -> None:
        self.step: Tensor | None = None


def _col(v: Tensor, ndim: int) -> Tensor:
    return v.reshape(-1, *([1] * (ndim - 1)))


def _pack_signs(signs: Tensor) -> Tensor:
    """int8 ±1 [K, n] -> uint8 [K, ceil(n/8)] through the one packing implementation (`signs.py`)."""
    return torch.from_numpy(pack_signs(signs.detach().cpu().numpy()))


@dataclass(frozen=True)
class ActExport:
    mode: str
    qmin: int
    qmax: int
    channel_dim: int


class ExportQuantLayer(nn.Module):
    """One quantized Linear/Conv2d as the exported graph computes it."""

    def __init__(
        self,
        spec: QuantLayerSpec,
        placement: str,
        steps: StepInput,
        out_range: tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        if placement not in PLACEMENTS:
            raise ExportError(f"unknown placement {placement!r}: use one of {', '.join(PLACEMENTS)}")
        self.name = spec.name
        self.kind = spec.kind
        self.placement = placement
        self._steps = steps
        self.conv = (spec.stride, spec.padding, spec.dilation, spec.groups)
        codes = spec.weight_codes.to(torch.int32)
        zero = spec.weight_zero_point.to(torch.int32)
        if codes.min() < 0 or codes.max() > 255 or zero.min() < 0 or zero.max() > 255:
            raise ExportError(
                f"layer {spec.name}: weight codes or zero points outside 0..255; re-quantize it"
            )
        w_scale = spec.weight_scale.detach().float().clone()
        self.trt_approximate = False
        if placement == "trt":
            # TensorRT: symmetric int8, zero point 0. Exact codes q - z (docs/methods.md 1.7) where they fit
            # in int8, else (8-bit asymmetric channels) the nearest symmetric int8 requantization
            # of the same dequantized weight, s' = max|w_c| / 127: an approximation parity measures.
            sym = codes - _col(zero, codes.dim())
            fits = (sym.flatten(1).amin(1) >= -128) & (sym.flatten(1).amax(1) <= 127)
            if not bool(fits.all()):
                self.trt_approximate = True
                w = sym.float() * _col(w_scale, codes.dim())
                new_scale = (w.abs().flatten(1).amax(1) / 127.0).clamp(min=1e-12)
                requant = torch.round(w / _col(new_scale, codes.dim())).clamp(-127, 127).to(torch.int32)
                sym = torch.where(_col(fits, codes.dim()), sym, requant)
                w_scale = torch.where(fits, w_scale, new_scale)
            codes, zero = sym + 128, torch.full_like(zero, 128)  # stored below as int8 q - 128, z = 0
        self.register_buffer(
            "w_codes", codes.to(torch.uint8) if placement == "ort" else (codes - 128).to(torch.int8)
        )
        self.register_buffer(
            "w_zero", zero.to(torch.uint8) if placement == "ort" else (zero - 128).to(torch.int8)
        )
        self.register_buffer("w_scale", w_scale)
        self.register_buffer("bias", None if spec.bias is None else spec.bias.detach().float().clone())
        self.register_buffer(
            "inv_smooth", None if spec.smooth is None else (1.0 / spec.smooth.float()).clone()
        )
        self.has_residual = spec.residual is not None and spec.residual.channels.numel() > 0
        if self.has_residual:
            r = spec.residual
            order = torch.argsort(r.channels)
            self.register_buffer("res_channels", r.channels[order].to(torch.int64).clone())
            self.register_buffer(
                "res_signs", _pack_signs(r.signs[order].reshape(len(order), -1).to(torch.int8))
            )
            self.register_buffer("res_alpha", r.alphas[order].float().clone())
            self.register_buffer("wq_i8", (codes - 128).to(torch.int8))
            self.register_buffer("wz_i8", (zero - 128).to(torch.int8))
        self.out_q = None
        if out_range is not None and placement == "ort":
            # Output Q/DQ (uint8, asymmetric) so ONNX Runtime fuses DQ -> Conv -> Q to QLinearConv.
            lo, hi = min(float(out_range[0]), 0.0), max(float(out_range[1]), 0.0)
            scale = max(hi - lo, 1e-8) / 255.0
            self.register_buffer("out_scale", torch.tensor(scale, dtype=torch.float32))
            self.register_buffer("out_zero", torch.tensor(int(round(-lo / scale)), dtype=torch.uint8))
            self.out_q = True
        # Low-rank FP branch (docs/methods.md 3.7):
        # kept as MatMuls/convs on the quantized input (+ per-frame Mul).
        self.has_lowrank = spec.lowrank is not None
        # Q-VDiT TQE branch (docs/methods.md 3.7): MatMul(X̂, α) -> Mul(M) -> MatMul(·, βᵀ) -> Add, with M
        # computed in the graph from the (pre-scaled) input and X̂ (standard ops only).
        t = spec.tqe
        self.tqe = None if t is None else (t.frames, t.layout, t.tokens, t.use_m)
        if t is not None:
            self.register_buffer("tqe_alpha", spec.tqe.alpha.float().clone())
            self.register_buffer("tqe_beta", spec.tqe.beta.float().clone())
        if spec.lowrank is not None:
            self.register_buffer("lr_A", spec.lowrank.A.float().clone())
            self.register_buffer("lr_B", spec.lowrank.B.float().clone())
            self.register_buffer("lr_M", None if spec.lowrank.M is None else spec.lowrank.M.float().clone())
        self.lora_form = _register_lora(self, spec)
        self.act: ActExport | None = None
        if spec.act is not None:
            a = spec.act
            self.act = ActExport(a.mode, a.qmin, a.qmax, a.channel_dim)
            if a.mode != "dynamic_per_token":
                scale = a.scale.detach().float().reshape(-1).clone()
                zero_a = a.zero_point.detach().to(torch.int32).reshape(-1)
                if placement == "ort":
                    if zero_a.min() < 0 or zero_a.max() > 255 or a.qmin < 0 or a.qmax > 255:
                        raise ExportError(f"layer {spec.name}: activation range does not fit uint8")
                    self.register_buffer("a_zero", zero_a.to(torch.uint8))
                else:
                    # Symmetric int8 (zero point 0, TensorRT's only activation format). The Clip to the
                    # quantizer's float range keeps the b-bit asymmetric grid exactly when its integer
                    # range [qmin - z, qmax - z] fits in [-128, 127] (always for b <= 7). Otherwise
                    # (8-bit asymmetric) the nearest symmetric int8 quantizer is used, scale
                    # s * max(z - qmin, qmax - z) / 127: an approximation that parity then measures.
                    lo, hi = (a.qmin - zero_a).float(), (a.qmax - zero_a).float()
                    self.register_buffer("a_clip_lo", lo * scale)
                    self.register_buffer("a_clip_hi", hi * scale)
                    fits = (lo >= -128) & (hi <= 127)
                    self.trt_approximate = self.trt_approximate or bool((~fits).any())
                    scale = torch.where(fits, scale, scale * torch.maximum(-lo, hi) / 127.0)
                    self.register_buffer("a_zero", torch.zeros_like(zero_a, dtype=torch.int8))
                self.register_buffer("a_scale", scale)

    # -------------------------------------------------------------- activation path

    def _scale_zero(self) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        if self.act.mode == "per_step":
            step = self._steps.step
            if step is None:
                raise ExportError(f"layer {self.name} has per-step scales but the graph has no step input")
            pick = lambda t: t[step] if t is not None else None  # noqa: E731
        else:
            pick = lambda t: t[0] if t is not None else None  # noqa: E731
        return (
            pick(self.a_scale),
            pick(self.a_zero),
            pick(getattr(self, "a_clip_lo", None)),
            pick(getattr(self, "a_clip_hi", None)),
        )

    def _prescale(self, x: Tensor) -> Tensor:
        if self.inv_smooth is None:
            return x
        shape = [1] * x.dim()
        shape[-1 if self.kind == "linear" else 1] = -1
        return x * self.inv_smooth.reshape(shape)

    def quantize_input(self, x: Tensor) -> Tensor:
        x = self._prescale(x)
        if self.act is None:
            return x
        if self.act.mode == "dynamic_per_token":
            return _dynamic_per_token(x, self.act.qmin, self.act.qmax, self.act.channel_dim)
        scale, zero, lo, hi = self._scale_zero()
        if self.placement == "ort":
            return qdq(x, scale, zero, self.act.qmin, self.act.qmax)
        return clip_qdq(x, lo, hi, scale, zero, -128, 127)

    # -------------------------------------------------------------- weights and branches

    def _branches(self, xq: Tensor, y: Tensor) -> Tensor:
        if self.lora_form == "dense":
            y = y + self._op(xq, self.lora_delta, None)
        elif self.lora_form == "factored":
            y = y + self._lora_factored(xq)
        if self.has_lowrank:
            if self.kind == "linear":
                y = y + lowrank_apply(xq, self.lr_A, self.lr_B, self.lr_M)
            else:  # A: (r, Cin, kh, kw) with the layer's geometry, then B as a 1x1 conv
                stride, padding, dilation, _ = self.conv
                u = F.conv2d(xq, self.lr_A, None, stride, padding, dilation)
                y = y + F.conv2d(u, self.lr_B.reshape(*self.lr_B.shape, 1, 1))
        return y

    def _lora_factored(self, xq: Tensor) -> Tensor:
        """`ΔW·x` from the rank-r factors (docs/methods.md 6.7) without materialising ΔW.

        Linear: `B·(A·x)`. Conv (per-tap factors): a 1x1 conv to r·T channels (A of every tap),
        a depthwise conv whose one-hot kernels shift each tap's channels into place with the
        layer's stride, padding and dilation, and a 1x1 conv with B of every tap. The 1x1 conv has
        no bias, so padding after it equals padding before it: the result is `conv(x, ΔW)`.
        """
        if self.kind == "linear":
            return F.linear(F.linear(xq, self.lora_A), self.lora_B)
        stride, padding, dilation, _ = self.conv
        u = F.conv2d(xq, self.lora_A)
        if self.lora_shift is not None:
            u = F.conv2d(u, self.lora_shift, None, stride, padding, dilation, groups=u.shape[1])
        return F.conv2d(u, self.lora_B)

    def _op(self, x: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:
        if self.kind == "linear":
            return F.linear(x, w, bias)
        stride, padding, dilation, groups = self.conv
        return F.conv2d(x, w, bias, stride, padding, dilation, groups)

    def forward(self, x: Tensor) -> Tensor:
        xq = self.quantize_input(x)
        if self.has_residual:
            bias = self.bias if self.bias is not None else torch.zeros_like(self.w_scale)
            if self.kind == "linear":
                y = residual_binary_linear(
                    xq,
                    self.wq_i8,
                    self.w_scale,
                    self.wz_i8,
                    self.res_signs,
                    self.res_alpha,
                    self.res_channels,
                    bias,
                    int(self.wq_i8.shape[1]),
                )
            else:
                stride, padding, dilation, groups = self.conv
                if isinstance(padding, str):
                    raise ExportError(
                        f"layer {self.name}: string padding {padding!r} is not supported for export"
                    )
                y = residual_binary_conv(
                    xq,
                    self.wq_i8,
                    self.w_scale,
                    self.wz_i8,
                    self.res_signs,
                    self.res_alpha,
                    self.res_channels,
                    bias,
                    list(stride),
                    list(padding),
                    list(dilation),
                    int(groups),
                    list(self.wq_i8.shape[2:]),
                )
        else:
            w = dq_weight(self.w_codes, self.w_scale, self.w_zero)
            y = self._op(xq, w, self.bias)
        y = self._branches(xq, y)
        if self.tqe is not None:
            y = y + tqe_apply(self._prescale(x), xq, self.tqe_alpha, self.tqe_beta, *self.tqe)
        if self.out_q:
            y = qdq(y, self.out_scale, self.out_zero, 0, 255)
        return y


def _register_lora(layer: nn.Module, spec: QuantLayerSpec) -> str | None:
    """Store the additive LoRA as the smaller of its factors and its dense ΔW; returns the form.

    Factors cost `T·r·(Cin + Cout)` floats plus `r·T²` one-hot shift weights for a conv with T
    kernel taps, against `Cout·Cin·T` for ΔW: at the reference model's rank 4, 3.5x (32 channels)
    to 15x (128 channels) fewer on its 3x3 convs. Grouped convs keep ΔW.
    """
    for name in ("lora_delta", "lora_A", "lora_B", "lora_shift"):
        layer.register_buffer(name, None)
    if spec.lora is None:
        return None
    A, B = spec.lora.A.detach().float(), spec.lora.B.detach().float()
    rank, cout, cin = A.shape[0], B.shape[0], A.shape[1]
    taps = 1 if A.dim() == 2 else A.shape[2] * A.shape[3]
    shift_needed = A.dim() == 4 and (
        taps > 1 or any(s != 1 for s in spec.stride or (1,)) or any(p != 0 for p in _pads(spec.padding))
    )
    factored_size = taps * rank * (cin + cout) + (rank * taps * taps if shift_needed else 0)
    if spec.groups != 1 or factored_size >= cout * cin * taps:
        layer.lora_delta = spec.lora.delta().detach().float().clone()
        return "dense"
    if A.dim() == 2:
        layer.lora_A, layer.lora_B = A.clone(), B.clone()
        return "factored"
    kh, kw = A.shape[2:]
    # channel t·r + j carries tap t = (u, v) of rank component j
    layer.lora_A = A.permute(2, 3, 0, 1).reshape(taps * rank, cin, 1, 1).contiguous()
    layer.lora_B = B.permute(0, 2, 3, 1).reshape(cout, taps * rank, 1, 1).contiguous()
    if shift_needed:
        onehot = torch.eye(taps).reshape(taps, 1, kh, kw)
        layer.lora_shift = onehot.repeat_interleave(rank, dim=0).contiguous()
    return "factored"


def _pads(padding: tuple[int, int] | str | None) -> tuple[int, ...]:
    if padding is None:
        return (0,)
    if isinstance(padding, str):
        return (0,) if padding == "valid" else (1,)  # "same" pads unless the kernel is 1x1
    return tuple(padding)


def _dynamic_per_token(x: Tensor, qmin: int, qmax: int, dim: int) -> Tensor:
    """Dynamic per-token asymmetric min-max fake quantization in plain ops (docs/methods.md 6.4)."""
    lo = x.amin(dim=dim, keepdim=True).clamp(max=0.0)
    hi = x.amax(dim=dim, keepdim=True).clamp(min=0.0)
    scale = ((hi - lo) / float(qmax - qmin)).clamp(min=1e-8)
    zero = torch.clamp(torch.round(qmin - lo / scale), qmin, qmax)
    return (torch.clamp(torch.round(x / scale) + zero, qmin, qmax) - zero) * scale


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def prepare_for_export(
    model: nn.Module, placement: str = "ort", out_ranges: dict[str, tuple[float, float]] | None = None
) -> tuple[nn.Module, StepInput, list[str]]:
    """Copy `model`, swap each `QuantLayer` for an `ExportQuantLayer`; returns names swapped.

    `out_ranges` (layer name -> observed output min/max) adds output Q/DQ pairs to conv layers for
    the `ort` placement (docs/deployment.md 11: Q/DQ on inputs and outputs lets ONNX Runtime fuse).
    """
    exported = copy.deepcopy(model).eval()
    steps = StepInput()
    names = []
    for name, layer in list(quant_layers(exported).items()):
        assert isinstance(layer, QuantLayer)
        spec = layer.fold()
        rng = (out_ranges or {}).get(name) if spec.kind == "conv2d" else None
        _set_submodule(exported, name, ExportQuantLayer(spec, placement, steps, rng))
        names.append(name)
    return exported, steps, names


class UNetExportWrapper(nn.Module):
    """`(sample, timestep[, step], **extra) -> model output`, the step routed to per-step scales.

    `extra_names` are further model inputs (e.g. `encoder_hidden_states`, `class_labels`) passed as
    keyword arguments, in this order after `sample` and `timestep` (and `step` when present).
    """

    def __init__(
        self, unet: nn.Module, steps: StepInput | None, with_step: bool, extra_names: tuple[str, ...] = ()
    ):
        super().__init__()
        self.unet = unet
        self._steps = steps
        self.with_step = with_step
        self.extra_names = extra_names

    MAX_EXTRA = 3

    def forward(
        self,
        sample: Tensor,
        timestep: Tensor,
        step: Tensor | None = None,
        extra0: Tensor | None = None,
        extra1: Tensor | None = None,
        extra2: Tensor | None = None,
    ) -> Tensor:
        extra = (extra0, extra1, extra2)[: len(self.extra_names)]
        if self._steps is not None:
            self._steps.step = step
        try:
            kwargs = dict(zip(self.extra_names, extra))
            return self.unet(sample, timestep, **kwargs, return_dict=False)[0]
        finally:
            if self._steps is not None:
                self._steps.step = None
