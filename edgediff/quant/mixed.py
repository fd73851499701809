"""Intra-layer mixed-precision helpers: channel saliency and budget-neutral bit allocation.

docs/methods.md 1.2(3)-(4) (MPQ-DM OMQ) and 2.1 (salient set for the binary residual).
"""

from __future__ import annotations

import torch
from torch import Tensor

from edgediff.errors import EdgediffError


def kurtosis(w: Tensor) -> Tensor:
    """Per output channel `mean((w - μ)^4) / σ^4` over the flattened row, σ unbiased
    (docs/methods.md 1.2(3))."""
    rows = w.detach().float().reshape(w.shape[0], -1)
    mu = rows.mean(dim=1, keepdim=True)
    sigma = rows.std(dim=1, unbiased=True).clamp(min=1e-12)
    return ((rows - mu) ** 4).mean(dim=1) / sigma**4


def allocate_bits(scores: Tensor, base_bits: int, k: int) -> Tensor:
    """OMQ bit vector (docs/methods.md 1.2(4)): top-k scores get b+1 bits, bottom-k b-1, the rest b.

    The mean bit width is exactly `base_bits`. Returns int32 (C,) on the CPU, whatever the
    device of `scores`.
    """
    c = scores.numel()
    if k < 0 or 2 * k > c:
        raise EdgediffError(f"bit split k={k} must be in 0..{c // 2} for {c} channels")
    if k and not 2 <= base_bits <= 7:
        raise EdgediffError(f"mixed bits around {base_bits} leave 1..8: use base bits 2..7 or k=0")
    bits = torch.full((c,), base_bits, dtype=torch.int32)
    order = torch.argsort(scores.detach().float().cpu(), descending=True, stable=True)
    if k:
        bits[order[:k]] = base_bits + 1
        bits[order[c - k :]] = base_bits - 1
    return bits


def top_channels(scores: Tensor, fraction: float) -> Tensor:
    """Indices (sorted) of the `max(1, round(fraction·C))` highest scores."""
    c = scores.numel()
    k = min(c, max(1, round(fraction * c)))
    idx = torch.argsort(scores.detach().float(), descending=True, stable=True)[:k]
    return torch.sort(idx).values
