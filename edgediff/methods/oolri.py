"""OOLRI: LoRA initialised from the truncated SVD of the quantization error (docs/methods.md 2.1, INFERRED).

With an additive LoRA after quantization, `Ŵ = Q(W̃) [+ α·sign(R)] + B·A`, the error
`E = W̃ − Q̂(W̃)` (binary residual included) is approximated by its rank-r truncated SVD
`E ≈ U_r Σ_r V_rᵀ`; `B = U_r Σ_r^{1/2}`, `A = Σ_r^{1/2} V_rᵀ` (LoftQ/QERA-style). Conv LoRA
composes per kernel tap, so each tap's `Cout × Cin/g` slice gets its own SVD. `iters > 1`
alternates LoftQ-style: the stored FP weight becomes `W̃ − B·A` (so `Q` quantizes it), then
`B·A ← SVD_r(W̃ − Q(W̃ − B·A))`; the sum `Q(·) + B·A` keeps approximating the original `W̃`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from edgediff.errors import EdgediffError
from edgediff.quant.layers import QuantLayer


def svd_factors(err: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """`(A, B)` with `B·A` the best rank-`rank` approximation of `err` (per tap for conv).

    Linear `err` (Cout, Cin) -> A (r, Cin), B (Cout, r); conv (Cout, Cin, kh, kw) ->
    A (r, Cin, kh, kw), B (Cout, r, kh, kw). Ranks above `min(Cout, Cin)` are zero-padded.
    """
    mats = err.detach().float()
    if mats.dim() == 2:
        mats = mats.unsqueeze(0)
    else:
        mats = mats.permute(2, 3, 0, 1).reshape(-1, err.shape[0], err.shape[1])
    u, s, vh = torch.linalg.svd(mats, full_matrices=False)
    r = min(rank, s.shape[-1])
    root = s[:, :r].sqrt()
    b = torch.zeros(mats.shape[0], mats.shape[1], rank, device=mats.device)
    a = torch.zeros(mats.shape[0], rank, mats.shape[2], device=mats.device)
    b[:, :, :r] = u[:, :, :r] * root.unsqueeze(1)
    a[:, :r, :] = root.unsqueeze(2) * vh[:, :r, :]
    if err.dim() == 2:
        return a[0].to(err), b[0].to(err)
    kh, kw = err.shape[2:]
    a = a.reshape(kh, kw, rank, -1).permute(2, 3, 0, 1)
    b = b.reshape(kh, kw, -1, rank).permute(2, 3, 0, 1)
    return a.contiguous().to(err), b.contiguous().to(err)


def _main_quantized(layer: QuantLayer, wt: Tensor) -> Tensor:
    w = layer.weight_quant.quantize(wt)
    if layer.residual is not None:
        w = layer.residual(wt, w)
    return w


@torch.no_grad()
def oolri_init(layer: QuantLayer, iters: int = 1) -> dict[str, float]:
    """Initialise `layer.lora` (additive) from the quantization error; returns the error before/after."""
    lora = layer.lora
    if lora is None or lora.mode != "additive":
        raise EdgediffError(
            f"OOLRI needs an additive LoRA on layer {layer.name or '?'}; "
            "use lora_mode='additive' (an SVD of the error has no meaning for a merged LoRA)"
        )
    if iters < 1:
        raise EdgediffError(f"OOLRI iterations must be >= 1, got {iters}")
    target = layer.effective_weight().detach().clone()
    before = float((target - _main_quantized(layer, target)).pow(2).sum())
    for it in range(iters):
        if it:  # LoftQ step: quantize W̃ − B·A instead of W̃
            shifted = target - lora.delta()
            if layer.smooth is not None and not bool(layer.smooth.folded):
                shifted = shifted / layer.smooth.weight_factor(shifted)
            layer.weight.copy_(shifted)
            layer.init_weight_range()
            if layer.residual is not None:
                wt = layer.effective_weight()
                layer.residual.init(
                    wt, layer.weight_quant.quantize(wt), torch.nonzero(layer.residual.mask)[:, 0]
                )
        err = target - _main_quantized(layer, layer.effective_weight())
        a, b = svd_factors(err, lora.rank)
        lora.A.copy_(a)
        lora.B.copy_(b)
    after = float((target - _main_quantized(layer, layer.effective_weight()) - lora.delta()).pow(2).sum())
    return {"error_before": before, "error_after": after}
