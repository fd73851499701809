"""Streaming statistics of a layer input for activation range initialisation.

Keeps the exact per-channel min/max and a uniform random sample of token rows (bottom-k of
random keys, so samples from different batches or steps merge into a uniform sample), which
bounds memory while the range search (docs/methods.md 1.2(1)) still sees every batch. Rows are
kept whole so a per-channel smoothing δ can be applied afterwards.
"""

from __future__ import annotations

import torch
from torch import Tensor

from edgediff.errors import EdgediffError


class ActStats:
    """Per-channel min/max and a row sample of at most `max_elems` elements."""

    def __init__(self, max_elems: int, generator: torch.Generator):
        self.max_elems = max_elems
        self.generator = generator
        self.lo: Tensor | None = None
        self.hi: Tensor | None = None
        self.rows: Tensor | None = None
        self.keys: Tensor | None = None

    def _keep(self, rows: Tensor, keys: Tensor) -> tuple[Tensor, Tensor]:
        cap = max(1, self.max_elems // rows.shape[1])
        if rows.shape[0] <= cap:
            return rows, keys
        idx = torch.topk(keys, cap, largest=False).indices
        return rows[idx], keys[idx]

    def update(self, x: Tensor, channel_dim: int, where: str = "") -> None:
        """Add a batch of layer inputs with the channels on `channel_dim`."""
        rows = x.detach().movedim(channel_dim, -1).reshape(-1, x.shape[channel_dim]).float()
        lo, hi = rows.amin(dim=0), rows.amax(dim=0)  # NaN propagates into both
        if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            raise EdgediffError(
                f"non-finite activations at the input of {where or 'a layer'} during calibration; "
                "check the model weights and calibration data"
            )
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)
        keys = torch.rand(rows.shape[0], generator=self.generator).to(rows.device)
        rows, keys = self._keep(rows, keys)
        if self.rows is not None:
            rows, keys = self._keep(torch.cat([self.rows, rows]), torch.cat([self.keys, keys]))
        self.rows, self.keys = rows, keys

    @classmethod
    def merge(cls, parts: list[ActStats]) -> ActStats:
        """Union of several statistics (still a uniform sample)."""
        out = cls(parts[0].max_elems, parts[0].generator)
        for p in parts:
            out.lo = p.lo if out.lo is None else torch.minimum(out.lo, p.lo)
            out.hi = p.hi if out.hi is None else torch.maximum(out.hi, p.hi)
            if out.rows is None:
                out.rows, out.keys = p.rows, p.keys
            else:
                out.rows, out.keys = out._keep(torch.cat([out.rows, p.rows]), torch.cat([out.keys, p.keys]))
        return out

    def absmax(self) -> Tensor:
        """Per-channel `max|X_j|`."""
        return torch.maximum(self.lo.abs(), self.hi.abs())

    def range(self, delta: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Exact tensor min and max of `X/δ` (δ > 0 per channel)."""
        lo, hi = (self.lo, self.hi) if delta is None else (self.lo / delta, self.hi / delta)
        return lo.min().reshape(1), hi.max().reshape(1)

    def sample(self, delta: Tensor | None = None) -> Tensor:
        """The sampled elements of `X/δ`, flattened."""
        rows = self.rows if delta is None else self.rows / delta
        return rows.reshape(-1)
