"""Range initialisation for uniform affine quantizers (docs/methods.md 6.2).

* `minmax_params`: `s = (max - min)/(qmax - qmin)`, `z = round(qmin - min/s)`, with the range
  widened to include 0 (so 0 is exact).
* `search_params`: a grid of shrink ratios `r` applied to both ends, `[r*min, r*max]`, keeping
  the ratio with the smallest `mean(|x - Q(x)|^p)` per row. Two grids are used:
  `LP_RATIOS` (80 ratios `1 - 0.01 i`, p = 2.4, MPQ-DM/EfficientDM, docs/methods.md 1.2(1)) and
  `CLIP_RATIOS` (0.02 .. 0.98 step 0.02, p = 2, ViDiT-Q/Q-VDiT, docs/methods.md 3.2).
Rows are output channels for weights (per-channel) and a single row for activations.
"""

from __future__ import annotations

import torch
from torch import Tensor

from edgediff.errors import EdgediffError

LP_RATIOS: tuple[float, ...] = tuple(1.0 - 0.01 * i for i in range(80))
LP_P = 2.4
CLIP_RATIOS: tuple[float, ...] = tuple(round(0.02 * i, 2) for i in range(1, 50))
CLIP_P = 2.0
_EPS = 1e-8
_CHUNK_ELEMS = 1 << 22

RANGE_METHODS = ("minmax", "lp", "clip_grid")


def minmax_params(lo: Tensor, hi: Tensor, qmin, qmax) -> tuple[Tensor, Tensor]:
    """Scale and integer zero point covering `[min(lo, 0), max(hi, 0)]` (docs/methods.md 6.2 (i))."""
    lo = lo.float().clamp(max=0.0)
    hi = hi.float().clamp(min=0.0)
    qmin_f = qmin.float() if isinstance(qmin, Tensor) else float(qmin)
    qmax_f = qmax.float() if isinstance(qmax, Tensor) else float(qmax)
    scale = ((hi - lo) / (qmax_f - qmin_f)).clamp(min=_EPS)
    zero = torch.clamp(torch.round(qmin_f - lo / scale), qmin_f, qmax_f)
    return scale, zero.to(torch.int32)


def search_params(
    rows: Tensor,
    qmin,
    qmax,
    ratios: tuple[float, ...],
    p: float,
    lo: Tensor | None = None,
    hi: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Shrinking-range grid search per row of `rows` (R, N) (docs/methods.md 1.2(1), 3.2).

    `lo`/`hi` (R,) default to the row min/max; `qmin`/`qmax` are ints or (R,) tensors.
    Returns `(scale, zero_point)` of shape (R,).
    """
    rows = rows.float()
    lo = rows.amin(dim=1) if lo is None else lo.float().reshape(-1)
    hi = rows.amax(dim=1) if hi is None else hi.float().reshape(-1)
    per_row = isinstance(qmin, Tensor)
    q_lo = qmin.float().reshape(1, -1, 1) if per_row else float(qmin)
    q_hi = qmax.float().reshape(1, -1, 1) if per_row else float(qmax)
    best_err = torch.full_like(lo, float("inf"))
    best_s, best_z = minmax_params(lo, hi, qmin, qmax)
    # several ratios at once (k, R, N), bounded to _CHUNK_ELEMS elements per pass
    k = max(1, min(len(ratios), _CHUNK_ELEMS // max(1, rows.numel())))
    for i in range(0, len(ratios), k):
        r = torch.tensor(ratios[i : i + k], dtype=rows.dtype, device=rows.device).reshape(-1, 1)
        s, z = minmax_params(lo * r, hi * r, qmin, qmax)  # (k, R)
        s3, z3 = s.unsqueeze(-1), z.unsqueeze(-1).float()
        # |x - s*(clip(round(x/s) + z) - z)|^p in place (the math of fake_quant_math)
        buf = torch.div(rows, s3).round_().add_(z3)
        (buf.clamp_(min=q_lo, max=q_hi) if per_row else buf.clamp_(q_lo, q_hi)).sub_(z3).mul_(s3)
        buf.sub_(rows).abs_()
        err = (buf.square_() if p == 2 else buf.pow_(p)).mean(dim=2)  # (k, R)
        err_min, idx = err.min(dim=0)  # first minimum wins, as in a sequential scan
        better = err_min < best_err
        best_err = torch.where(better, err_min, best_err)
        best_s = torch.where(better, s.gather(0, idx[None])[0], best_s)
        best_z = torch.where(better, z.gather(0, idx[None])[0], best_z)
    return best_s, best_z


def init_params(
    rows: Tensor, qmin, qmax, method: str, lo: Tensor | None = None, hi: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Dispatch on `method` in `RANGE_METHODS`; rows (R, N) -> `(scale, zero_point)` (R,)."""
    if method == "minmax":
        lo = rows.float().amin(dim=1) if lo is None else lo.reshape(-1)
        hi = rows.float().amax(dim=1) if hi is None else hi.reshape(-1)
        return minmax_params(lo, hi, qmin, qmax)
    if method == "lp":
        return search_params(rows, qmin, qmax, LP_RATIOS, LP_P, lo, hi)
    if method == "clip_grid":
        return search_params(rows, qmin, qmax, CLIP_RATIOS, CLIP_P, lo, hi)
    raise EdgediffError(f"unknown range method {method!r}: use one of {', '.join(RANGE_METHODS)}")
