"""TRD: time-smoothed relation distillation on the last decoder block (docs/methods.md 1.2(7), 7.3).

Feature `F_t` = output of the UNet's last decoder block (`unet.up_blocks[-1]` in diffusers,
before the final norm/SiLU/conv head), captured with forward hooks on the FP and the quantized
model during the same fine-tuning step. Every `N` steps (the released code's cadence) the loss
`λ·Σ_{samples,rows} KL(P_FP ‖ P_Q)` of the pixel-relation rows of the window-averaged features
`F̄ = (1/N)·Σ_k F_{t−k}` is added to the task loss. The sum-reduced loss is divided by the
output element count, the same factor that turns the paper's sum-reduced task loss into our
mean MSE, so `λ = 100` keeps the paper's balance between the two terms.

Gradient options (docs/methods.md 7.3): `mode="target"` (b, default: the current step's quantized
feature against the window-averaged FP feature; no extra forward) or `mode="window"` (a: the
quantized features of the previous window steps are recomputed with gradients and averaged,
costing N−1 extra forwards every N steps). `detach=True` reproduces the released code, whose
hook detaches the quantized feature, so TRD adds a constant and no gradient.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from edgediff.distill.relation import relation_kl
from edgediff.errors import EdgediffError

TRD_MODES = ("target", "window")


def last_decoder_block(unet: nn.Module) -> nn.Module:
    """`unet.up_blocks[-1]`: the last decoder block of a diffusers UNet."""
    blocks = getattr(unet, "up_blocks", None)
    if not blocks:
        raise EdgediffError(
            f"{type(unet).__name__} has no up_blocks; TRD/MTRD need a diffusers UNet (or turn them off)"
        )
    return blocks[-1]


class FeatureTap:
    """Forward hook keeping the latest output of one module (detached when asked)."""

    def __init__(self, module: nn.Module, detach: bool = False):
        self.detach = detach
        self.value: Tensor | None = None
        self._handle: RemovableHandle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args, out) -> None:
        out = out[0] if isinstance(out, tuple) else out
        self.value = out.detach() if self.detach else out

    def remove(self) -> None:
        self._handle.remove()
        self.value = None


class TRDLoss:
    """Window bookkeeping and the TRD term for one fine-tuning run (see module docstring)."""

    def __init__(self, window: int = 2, tau: float = 1.0, weight: float = 100.0, mode: str = "target"):
        if window < 1:
            raise EdgediffError(f"TRD window must be >= 1, got {window}")
        if mode not in TRD_MODES:
            raise EdgediffError(f"unknown TRD mode {mode!r}: use target (option b) or window (option a)")
        self.window, self.tau, self.weight, self.mode = window, tau, weight, mode
        self._fp: deque[Tensor] = deque(maxlen=window)
        self._inputs: deque[tuple[int, Tensor, Tensor]] = deque(maxlen=window)
        self._last_step = -1

    def state_dict(self) -> dict:
        """The current window (FP features, inputs) and the last step seen (exact resume)."""
        return {
            "fp": [f.cpu() for f in self._fp],
            "inputs": [(s, x.cpu(), t.cpu()) for s, x, t in self._inputs],
            "last_step": self._last_step,
        }

    def load_state_dict(self, state: dict) -> None:
        self._fp.clear()
        self._inputs.clear()
        self._fp.extend(state["fp"])
        self._inputs.extend(state["inputs"])
        self._last_step = int(state["last_step"])

    def __call__(
        self,
        step: int,
        x: Tensor,
        t: Tensor,
        fp_feat: Tensor,
        q_feat: Tensor,
        recompute: Callable[[int, Tensor, Tensor], Tensor] | None = None,
    ) -> Tensor | None:
        """TRD at sampler step `step` (None between evaluations); `recompute(step, x, t)` must
        return the quantized feature of an earlier step with gradients (mode "window")."""
        if step <= self._last_step:  # a new trajectory started: the window restarts
            self._fp.clear()
            self._inputs.clear()
        self._last_step = step
        if self._fp and self._fp[0].device != fp_feat.device:  # restored from a CPU checkpoint
            self._fp = deque((f.to(fp_feat.device) for f in self._fp), maxlen=self.window)
            self._inputs = deque(
                ((s, xx.to(x.device), tt.to(t.device)) for s, xx, tt in self._inputs), maxlen=self.window
            )
        self._fp.append(fp_feat.detach())
        self._inputs.append((step, x, t))
        if len(self._fp) < self.window or (step + 1) % self.window:
            return None
        fp_mean = torch.stack(list(self._fp)).mean(dim=0)
        if self.mode == "window" and self.window > 1 and q_feat.requires_grad:
            if recompute is None:
                raise EdgediffError("TRD mode 'window' needs a recompute function for the earlier steps")
            earlier = [recompute(s, xx, tt) for s, xx, tt in list(self._inputs)[:-1]]
            q_mean = torch.stack([*earlier, q_feat]).mean(dim=0)
        else:
            q_mean = q_feat
        return self.weight * relation_kl(fp_mean, q_mean, self.tau, "sum") / x.numel()
