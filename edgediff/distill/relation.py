"""Relational distillation losses and the memory pixel queue (docs/methods.md 6.10, 1.2(7), 2.1, 4.2).

Shared by MPQ-DM's TRD, MPQ-DMv2's MTRD and RDD's IS_P2P / M_P2P. Conventions:
* A feature map is `[B, C, H, W]`; its *pixel embeddings* are the `HW` channel vectors of each
  sample, L2-normalised (`pixel_embeddings`).
* `KL(P‖Q) = Σ P (log P − log Q)`, teacher distribution first. The teacher side is always
  detached here; the student side never is (docs/methods.md 6.10).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgediff.errors import EdgediffError

REDUCTIONS = ("sum", "mean")


def pixel_embeddings(feat: Tensor) -> Tensor:
    """`[B, C, H, W]` -> `[B, HW, C]` with unit-L2 pixel vectors."""
    if feat.dim() != 4:
        raise EdgediffError(f"relation losses need a [B, C, H, W] feature map, got shape {tuple(feat.shape)}")
    b, c = feat.shape[:2]
    return F.normalize(feat.reshape(b, c, -1).transpose(1, 2), dim=-1)


def _row_kl(teacher_logits: Tensor, student_logits: Tensor) -> Tensor:
    """KL(softmax(t) ‖ softmax(s)) per row (last dim)."""
    p_log = F.log_softmax(teacher_logits.detach(), dim=-1)
    q_log = F.log_softmax(student_logits, dim=-1)
    return (p_log.exp() * (p_log - q_log)).sum(dim=-1)


def _reduce(rows: Tensor, reduction: str) -> Tensor:
    if reduction not in REDUCTIONS:
        raise EdgediffError(f"unknown reduction {reduction!r}: use sum or mean")
    return rows.sum() if reduction == "sum" else rows.mean()


def relation_kl(teacher: Tensor, student: Tensor, tau: float = 1.0, reduction: str = "sum") -> Tensor:
    """Within-sample pixel-to-pixel relation KL (MPQ-DM TRD, docs/methods.md 1.2(7)).

    Per sample `R = F̂ᵀF̂` (HW x HW), rows softmax(R/τ); `Σ_rows KL(P_T ‖ P_S)`, summed over
    samples and rows (`reduction="sum"`, as the paper) or averaged over rows (`"mean"`).
    """
    _same_shape(teacher, student)
    ft, fs = pixel_embeddings(teacher), pixel_embeddings(student)
    rt = ft @ ft.transpose(1, 2) / tau
    rs = fs @ fs.transpose(1, 2) / tau
    return _reduce(_row_kl(rt, rs), reduction)


def batch_relation_kl(teacher: Tensor, student: Tensor, tau: float = 1.0) -> Tensor:
    """In-batch pixel relation KL over all ordered sample pairs (RDD IS_P2P, docs/methods.md 4.2(2)).

    For samples `(b, d)` (including `b = d`) and pixel `i` of `b`:
    `P_{b,d,i} = softmax_j(f_{b,i}·f_{d,j}/τ)` over the pixels `j` of `d`; the loss is the mean
    of `KL(P_T ‖ P_S)` over the `B·B·HW` rows.
    """
    _same_shape(teacher, student)
    ft, fs = pixel_embeddings(teacher), pixel_embeddings(student)
    rt = torch.einsum("bic,djc->bdij", ft, ft) / tau
    rs = torch.einsum("bic,djc->bdij", fs, fs) / tau
    return _row_kl(rt, rs).mean()


def feature_kl(teacher_vec: Tensor, student_vec: Tensor, teacher_temperature: float = 0.9) -> Tensor:
    """RCFD classifier-feature KL (docs/methods.md 4.2(1)):
    `KL(softmax(φ_T/τ_T) ‖ softmax(φ_S))`, batch mean."""
    _same_shape(teacher_vec, student_vec)
    return _row_kl(teacher_vec / teacher_temperature, student_vec).mean()


def queue_relation_kl(
    teacher: Tensor,
    student: Tensor,
    anchors: Tensor,
    tau: float = 0.1,
    kd_temperature: float = 1.0,
    anchor_weights: Tensor | None = None,
) -> Tensor:
    """Pixel-to-queue relation KL (RDD M_P2P, MPQ-DMv2 MTRD; docs/methods.md 4.2(3), 2.1).

    `teacher`, `student`: pixel embeddings `[N, C]` (unit rows). Logits `ℓ = f·Aᵀ/τ` against the
    anchor rows `A` `[K, C]`; `KL(softmax(ℓ_T/T) ‖ softmax(ℓ_S/T))` averaged over the `N` pixels.
    `anchor_weights` (`[N, K]` or `[K]`, positive) add `log w` to both logits: the time-aware
    weighting of the MTRD option (b); `None` weights every anchor equally.
    """
    _same_shape(teacher, student)
    if anchors.dim() != 2 or anchors.shape[1] != teacher.shape[-1]:
        raise EdgediffError(
            f"queue anchors must be [K, {teacher.shape[-1]}], got {tuple(anchors.shape)}; "
            "build the queue with the feature's channel count"
        )
    anchors = anchors.detach()
    lt = teacher.detach() @ anchors.t() / tau
    ls = student @ anchors.t() / tau
    if anchor_weights is not None:
        bias = anchor_weights.clamp(min=1e-12).log().detach()
        lt, ls = lt + bias * kd_temperature, ls + bias * kd_temperature
    return _row_kl(lt / kd_temperature, ls / kd_temperature).mean()


def _same_shape(a: Tensor, b: Tensor) -> None:
    if a.shape != b.shape:
        raise EdgediffError(
            f"teacher and student features differ in shape ({tuple(a.shape)} vs {tuple(b.shape)}); "
            "hook the same layer of the same architecture"
        )


def sample_pixels(
    feat: Tensor, count: int, generator: torch.Generator | None = None, released_reshape: bool = False
) -> Tensor:
    """`count` random pixel embeddings `[count, C]` (unit rows) of a `[B, C, H, W]` map.

    The correct flattening takes each pixel's channel vector (`permute(1, 0, 2, 3)` to
    `[C, B·H·W]`). `released_reshape=True` reproduces RDD's released code, a plain
    `reshape(C, -1)` that mixes channels and positions (docs/methods.md 4.2 code quirk).
    """
    if feat.dim() != 4:
        raise EdgediffError(f"need a [B, C, H, W] feature map, got shape {tuple(feat.shape)}")
    c = feat.shape[1]
    flat = feat.reshape(c, -1) if released_reshape else feat.permute(1, 0, 2, 3).reshape(c, -1)
    n = flat.shape[1]
    idx = torch.randperm(n, generator=generator)[: min(count, n)].to(feat.device)
    return F.normalize(flat[:, idx].t(), dim=-1)


class MemoryQueue(nn.Module):
    """FIFO queue of teacher pixel embeddings with the timestep each came from (docs/methods.md 2.1, 4.2(3)).

    Initialised with random unit vectors (timestep -1, "no time") as in RDD; `push` overwrites
    the oldest rows and wraps around. `anchors(k)` returns `k` evenly spaced rows; with a
    `time_window` the anchors are restricted to entries whose timestep lies within the window
    of the query time (MTRD option (a)), falling back to all rows when too few qualify.
    """

    def __init__(self, size: int, dim: int, seed: int = 0):
        super().__init__()
        if size < 1 or dim < 1:
            raise EdgediffError(f"memory queue needs size >= 1 and dim >= 1, got size={size}, dim={dim}")
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("bank", F.normalize(torch.randn(size, dim, generator=gen), dim=-1))
        self.register_buffer("timesteps", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return int(self.bank.shape[0])

    @torch.no_grad()
    def push(self, emb: Tensor, timestep: int | Tensor = -1) -> None:
        """Write `emb` `[N, C]` (detached, re-normalised) at the pointer, wrapping around."""
        emb = F.normalize(emb.detach().to(self.bank), dim=-1)
        if emb.dim() != 2 or emb.shape[1] != self.bank.shape[1]:
            raise EdgediffError(
                f"queue rows are {self.bank.shape[1]}-d, got {tuple(emb.shape)}; push [N, C] pixel embeddings"
            )
        n = emb.shape[0]
        if n > self.size:
            emb, n = emb[-self.size :], self.size
        ts = torch.as_tensor(timestep, dtype=torch.long, device=self.bank.device).expand(n)
        idx = (self.ptr + torch.arange(n, device=self.bank.device)) % self.size
        self.bank[idx] = emb
        self.timesteps[idx] = ts
        self.ptr.copy_((self.ptr + n) % self.size)
        self.filled.copy_(torch.clamp(self.filled + n, max=self.size))

    def anchor_index(self, count: int, timestep: int | None = None, time_window: int | None = None) -> Tensor:
        """Indices of `count` evenly spaced rows (restricted to the time window when given)."""
        rows = torch.arange(self.size, device=self.bank.device)
        if time_window is not None and timestep is not None:
            near = (self.timesteps >= 0) & ((self.timesteps - int(timestep)).abs() <= time_window)
            if int(near.sum()) >= min(count, self.size):
                rows = rows[near]
        k = min(count, rows.numel())
        pick = torch.linspace(0, rows.numel() - 1, k, device=rows.device).round().long()
        return rows[pick]

    def anchors(self, count: int, timestep: int | None = None, time_window: int | None = None) -> Tensor:
        """`[K, C]` anchor rows (see `anchor_index`)."""
        return self.bank[self.anchor_index(count, timestep, time_window)]

    def time_weights(self, index: Tensor, timestep: int, scale: float) -> Tensor:
        """MTRD option (b): `exp(−|t_anchor − t| / scale)` per anchor; random-init rows weigh 1."""
        ts = self.timesteps[index]
        w = torch.exp(-(ts - int(timestep)).abs().float() / max(scale, 1e-6))
        return torch.where(ts < 0, torch.ones_like(w), w)


class ProjectionHead(nn.Module):
    """RDD's student projection head: 1x1 conv, BatchNorm, ReLU, 1x1 conv (docs/methods.md 4.2(3))."""

    def __init__(self, channels: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or channels
        self.net = nn.Sequential(
            nn.Conv2d(channels, hidden, 1),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
        )

    def forward(self, feat: Tensor) -> Tensor:
        return self.net(feat)
