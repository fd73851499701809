"""Optional parts of a quantized layer: smoothing, LoRA, binary residual, low-rank branch.

All act on weights shaped like the wrapped layer's: (Cout, Cin) for linear and
(Cout, Cin/groups, kh, kw) for conv.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgediff.errors import EdgediffError

LORA_MODES = ("merged", "additive")


class Smooth(nn.Module):
    """Per-input-channel pre-scale δ: `X/δ`, `W·δ` (docs/methods.md 1.2(2), 6.5).

    Buffers: `delta` (Cin,) and `folded` (bool): once folded, the layer weight already holds
    `W·δ` and only the input division remains.
    """

    def __init__(self, in_channels: int, groups: int = 1):
        super().__init__()
        self.groups = groups
        self.register_buffer("delta", torch.ones(in_channels))
        self.register_buffer("folded", torch.zeros((), dtype=torch.bool))

    def scale_input(self, x: Tensor, channel_dim: int) -> Tensor:
        """`X·diag(δ)^-1` with the channels on `channel_dim`."""
        shape = [1] * x.dim()
        shape[channel_dim] = -1
        return x / self.delta.reshape(shape)

    def weight_factor(self, weight: Tensor) -> Tensor:
        """δ arranged like the weight's (Cout, Cin/groups) input axis, for grouped convs too."""
        cout, cin_g = weight.shape[0], weight.shape[1]
        d = self.delta.reshape(self.groups, 1, cin_g).expand(self.groups, cout // self.groups, cin_g)
        return d.reshape(cout, cin_g, *([1] * (weight.dim() - 2)))

    def scale_weight(self, weight: Tensor) -> Tensor:
        """`W·diag(δ)` unless already folded into the weight."""
        return torch.where(self.folded, weight, weight * self.weight_factor(weight))


class LoRA(nn.Module):
    """Low-rank adapter `ΔW = B·A` (docs/methods.md 1.2(5), 6.6, 6.7).

    Linear: `A` (r, Cin) Kaiming-uniform (a = √5), `B` (Cout, r) zeros. Conv k×k: `A`
    (r, Cin/g, kh, kw), `B` (Cout, r, kh, kw), composed per kernel tap:
    `ΔW[:, :, u, v] = B[:, :, u, v] · A[:, :, u, v]`. `mode="merged"` adds ΔW to the FP weight
    before weight quantization (QALoRA); `mode="additive"` adds it after quantization (an FP
    branch acting on the quantized input).
    """

    def __init__(self, weight_shape: tuple[int, ...], rank: int, mode: str = "merged"):
        super().__init__()
        if mode not in LORA_MODES:
            raise EdgediffError(f"unknown LoRA mode {mode!r}: use merged or additive")
        if rank < 1:
            raise EdgediffError(f"LoRA rank must be >= 1, got {rank}")
        cout, cin, *taps = weight_shape
        self.mode = mode
        self.rank = rank
        self.A = nn.Parameter(torch.empty(rank, cin, *taps))
        self.B = nn.Parameter(torch.zeros(cout, rank, *taps))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))

    def delta(self) -> Tensor:
        """The weight update ΔW, shaped like the layer weight."""
        return lora_delta(self.A, self.B)


def lora_delta(A: Tensor, B: Tensor) -> Tensor:
    """`B·A` for linear factors, per-tap `B[:,:,u,v]·A[:,:,u,v]` for conv factors (docs/methods.md 1.2(5))."""
    if A.dim() == 2:
        return B @ A
    return torch.einsum("orhw,rihw->oihw", B, A)


def sign_ste(r: Tensor) -> Tensor:
    """±1 (0 maps to +1) with a straight-through gradient; forward value is exactly ±1."""
    s = torch.where(r >= 0, torch.ones_like(r), -torch.ones_like(r))
    return s + (r - r.detach())


class BinaryResidual(nn.Module):
    """1-bit residual on chosen output channels (docs/methods.md 2.1 FZ-RMQ, 2.4).

    `R = W̃ − Q_b(W̃)`, `Ŵ_c = Q_b(W̃_c) + α_c·sign(R_c)` for channels in `mask`; signs are
    recomputed from the current weights (STE), `α` is learnable and initialised to `mean|R_c|`.
    Buffers/params have full length Cout, so the state_dict shape does not depend on the set.
    """

    def __init__(self, out_channels: int):
        super().__init__()
        self.register_buffer("mask", torch.zeros(out_channels, dtype=torch.bool))
        self.alpha = nn.Parameter(torch.zeros(out_channels))

    def _view(self, v: Tensor, w: Tensor) -> Tensor:
        return v.reshape(-1, *([1] * (w.dim() - 1)))

    def forward(self, w_tilde: Tensor, w_q: Tensor) -> Tensor:
        """Add `α_c·sign(W̃_c − Q(W̃_c))` to the quantized weight on the masked channels."""
        a = self.alpha * self.mask.to(self.alpha.dtype)
        return w_q + self._view(a, w_q) * sign_ste(w_tilde - w_q)

    @torch.no_grad()
    def init(self, w_tilde: Tensor, w_q: Tensor, channels: Tensor) -> None:
        """Select `channels` and set `α_c = mean|R_c|` there (0 elsewhere)."""
        self.mask.zero_()
        self.mask[channels] = True
        r = (w_tilde - w_q).abs().reshape(w_q.shape[0], -1).mean(dim=1)
        self.alpha.copy_(torch.where(self.mask, r, torch.zeros_like(r)))

    @torch.no_grad()
    def signs(self, w_tilde: Tensor, w_q: Tensor) -> Tensor:
        """int8 ±1 signs of the residual, all channels."""
        return torch.where(w_tilde - w_q >= 0, 1, -1).to(torch.int8)


class LowRankBranch(nn.Module):
    """Rank-r FP branch on the quantized input: `Q(X)·Aᵀ·Bᵀ` (docs/methods.md 3.2 TQE, 6.7).

    `A` (r, Cin[, kh, kw]) Kaiming-uniform, `B` (Cout, r) zeros. With `frames` (linear only)
    a learnable per-frame scale `M` (frames,), init 1, multiplies the branch output of the
    tokens of each frame (tokens on dim -2, split into `frames` equal blocks). Rank 1 with `M`
    is Q-VDiT's TQE; the released code's `(1 + M)` factor corresponds to `M = 2` at init.
    """

    def __init__(self, weight_shape: tuple[int, ...], rank: int, frames: int | None = None):
        super().__init__()
        if rank < 1:
            raise EdgediffError(f"low-rank branch rank must be >= 1, got {rank}")
        cout, cin, *taps = weight_shape
        if frames is not None and taps:
            raise EdgediffError("a per-frame scale M needs a linear layer; drop frames= for conv layers")
        self.weight_shape = tuple(weight_shape)
        self.A = nn.Parameter(torch.empty(rank, cin, *taps))
        self.B = nn.Parameter(torch.zeros(cout, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.M = nn.Parameter(torch.ones(frames)) if frames else None

    def weight(self) -> Tensor:
        """The branch as a weight `B·A`, shaped like the layer weight (used when M is None)."""
        return (self.B @ self.A.reshape(self.A.shape[0], -1)).reshape(self.weight_shape)

    def forward(self, xq: Tensor) -> Tensor:
        """Branch output for a linear input (..., N, Cin) with per-frame scaling by M."""
        return lowrank_apply(xq, self.A, self.B, self.M)


def lowrank_apply(xq: Tensor, A: Tensor, B: Tensor, M: Tensor | None) -> Tensor:
    """`(Q(X)·Aᵀ)·Bᵀ`, frame block i of the tokens (dim -2) scaled by `M_i` (docs/methods.md 3.2 Eq. 7-8)."""
    y = F.linear(F.linear(xq, A), B)
    if M is None:
        return y
    n, t = y.shape[-2], M.shape[0]
    if n % t:
        raise EdgediffError(
            f"{n} tokens do not split into {t} frames; set LowRankSpec.frames to the frame count"
        )
    y = y.reshape(*y.shape[:-2], t, n // t, y.shape[-1]) * M.reshape(t, 1, 1)
    return y.reshape(*y.shape[:-3], n, y.shape[-1])


# ---------------------------------------------------------------- Q-VDiT TQE (docs/methods.md 3.2)

_TQE_EPS = 1e-12


def frame_blocks(x: Tensor, frames: int, layout: str, tokens: int | None = None) -> Tensor:
    """A linear input regrouped as `(B, F, K)`: per sample, one flat block per frame.

    `spatial`: `x` is `(B·F, N, C)` with row `b·F + f` (diffusers' Latte spatial blocks), so the
    rows of one sample are consecutive and the frame is the minor index. `temporal`: `x` is
    `(B·N, F, C)` with row `b·N + n` (Latte temporal blocks): `(B, N, F, C)` is permuted to
    `(B, F, N, C)` before flattening, so a frame block holds that frame's N tokens.
    """
    if layout == "spatial":
        if x.shape[0] % frames:
            raise EdgediffError(
                f"{x.shape[0]} rows do not split into {frames} frames; set the TQE frame count to the video's"
            )
        return x.reshape(x.shape[0] // frames, frames, -1)
    if layout == "temporal":
        if x.dim() < 3 or x.shape[-2] != frames or tokens is None or x.shape[0] % tokens:
            raise EdgediffError(
                f"temporal TQE input {tuple(x.shape)} is not (B·{tokens}, {frames}, C); "
                "set TQESpec.frames/tokens from the model config"
            )
        b = x.shape[0] // tokens
        return x.reshape(b, tokens, frames, -1).permute(0, 2, 1, 3).reshape(b, frames, -1)
    raise EdgediffError(f"unknown TQE layout {layout!r}: use spatial or temporal")


def tqe_frame_scale(x: Tensor, xq: Tensor, frames: int, layout: str, tokens: int | None = None) -> Tensor:
    """`M_i = η_i / ω_i` per sample and frame, `(B, F)` (docs/methods.md 3.2, paper Eq. 9).

    `η = softmax_i(1 − cos(X_i, Q(X)_i))` over the frames of a sample, `ω_i = Σ|X_i| / Σ|X|`
    (frame i's share of the sample's absolute activation mass); `X_i` is frame i's flat block.
    """
    xf = frame_blocks(x.float(), frames, layout, tokens)
    qf = frame_blocks(xq.float(), frames, layout, tokens)
    dot = (xf * qf).sum(dim=-1)
    norm = xf.square().sum(dim=-1).sqrt() * qf.square().sum(dim=-1).sqrt()
    cos = dot / norm.clamp(min=_TQE_EPS)
    eta = torch.softmax(1.0 - cos, dim=-1)
    mass = xf.abs().sum(dim=-1)
    omega = mass / mass.sum(dim=-1, keepdim=True).clamp(min=_TQE_EPS)
    return eta / omega.clamp(min=_TQE_EPS)


def frame_scale_to_tokens(m: Tensor, like: Tensor, layout: str, tokens: int | None = None) -> Tensor:
    """Broadcast `M` `(B, F)` back onto the token layout of `like` (shape `(rows, F|N, 1)`)."""
    b, f = m.shape
    if layout == "spatial":
        return m.reshape(b * f, *([1] * (like.dim() - 1)))
    return m.reshape(b, 1, f, 1).expand(b, tokens, f, 1).reshape(b * tokens, f, 1)


def tqe_apply(
    x: Tensor,
    xq: Tensor,
    alpha: Tensor,
    beta: Tensor,
    frames: int,
    layout: str,
    tokens: int | None = None,
    use_m: bool = True,
) -> Tensor:
    """TQE branch `Δ·βᵀ` with `Δ_i = (M_i·Q(X)_i)·α` per frame i (docs/methods.md 3.2, Eq. 7-8).

    `alpha` (Cin, r), `beta` (Cout, r). `M` is computed from this input (no gradient: it is a
    statistic of the input like the dynamic activation ranges); `use_m=False` gives `M = 1`.
    """
    u = xq @ alpha.to(xq.dtype)
    if use_m:
        m = tqe_frame_scale(x.detach(), xq.detach(), frames, layout, tokens)
        u = u * frame_scale_to_tokens(m, u, layout, tokens).to(u.dtype)
    return u @ beta.to(u.dtype).t()


class TQEBranch(nn.Module):
    """Q-VDiT's token-aware quantization estimator on a linear layer (docs/methods.md 3.2).

    `alpha` (Cin, r) Kaiming-uniform (fan-in Cin, a = √5, as LoRA's A), `beta` (Cout, r) zeros,
    so the branch is zero until trained. `frames`/`layout`/`tokens`/`use_m` as in `tqe_apply`.
    """

    def __init__(
        self,
        weight_shape: tuple[int, ...],
        frames: int,
        layout: str,
        tokens: int | None = None,
        rank: int = 1,
        use_m: bool = True,
    ):
        super().__init__()
        if len(weight_shape) != 2:
            raise EdgediffError("the TQE branch needs a linear layer; drop tqe= for conv layers")
        if rank < 1:
            raise EdgediffError(f"TQE rank must be >= 1, got {rank}")
        cout, cin = weight_shape
        self.frames, self.layout, self.tokens, self.use_m = frames, layout, tokens, use_m
        self.alpha = nn.Parameter(torch.empty(cin, rank))
        self.beta = nn.Parameter(torch.zeros(cout, rank))
        nn.init.kaiming_uniform_(self.alpha.data.t(), a=math.sqrt(5))

    def forward(self, x: Tensor, xq: Tensor) -> Tensor:
        """Branch output for the layer's (pre-quantization) input `x` and quantized input `xq`."""
        return tqe_apply(x, xq, self.alpha, self.beta, self.frames, self.layout, self.tokens, self.use_m)

    def extra_repr(self) -> str:
        return f"frames={self.frames}, layout={self.layout}, rank={self.alpha.shape[1]}, m={self.use_m}"
