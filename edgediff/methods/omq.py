"""OMQ: outlier-driven intra-layer mixed precision with a searched split size (docs/methods.md 1.2(3)-(4)).

Per quantized layer, output channels of the pre-scaled weight `W̃ = W·diag(δ)` are ranked by
kurtosis (or at random, the control of the paper's ablation). For a split size `k` the top-k
channels are *salient* and the bottom-k get `b−1` bits:
* `salient="bits"` (MPQ-DM OMQ): salient channels get `b+1` bits; the mean stays exactly `b`.
* `salient="residual"` (MPQ-DMv2 FZ-RMQ, docs/methods.md 2.1): salient channels keep `b` bits plus
  a 1-bit residual `α_c·sign(R_c)` (α init `mean|R_c|`); `balance=True` gives the bottom-k
  `b−1` bits so the stored bits per weight stay at `b` on average, `False` keeps them at `b`.
`k` is chosen per layer among the candidates (paper `0, C/10, …, C/2`; code `{0, C/10}`) by
the output MSE `‖X·Wᵀ − X̃·Q_k(W̃)ᵀ‖²` on calibration inputs, with activations unquantized
(as the released code) and the recipe's weight range method, so the chosen quantizer state is
exactly the one that was scored and `k = 0` (uniform) is always a candidate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from edgediff.errors import EdgediffError
from edgediff.quant import CalibrationData, LayerQuant, ResidualSpec, quant_disabled, quant_layers
from edgediff.quant.layers import QuantLayer
from edgediff.quant.mixed import allocate_bits, kurtosis

log = logging.getLogger(__name__)

SEARCH_RANGES = ("paper", "code", "fixed")
SELECTIONS = ("kurtosis", "random", "error")
SALIENT_MODES = ("bits", "residual")


def split_candidates(channels: int, search_range: str = "paper") -> list[int]:
    """Split sizes to try: paper `0, ⌊C/10⌋, 2⌊C/10⌋, … ≤ C/2`; code `{0, ⌊C/10⌋}` (docs/methods.md 1.2(4)).

    `fixed` = `{⌊C/10⌋}` only: an ablation that forces the split (it may raise the output MSE).
    """
    if search_range not in SEARCH_RANGES:
        raise EdgediffError(f"unknown OMQ search range {search_range!r}: use paper, code or fixed")
    step = channels // 10
    if step == 0:
        return [0]
    if search_range == "code":
        return [0, step]
    if search_range == "fixed":
        return [step]
    return [i * step for i in range(0, channels // (2 * step) + 1)]


def channel_scores(layer: QuantLayer, selection: str, generator: torch.Generator | None = None) -> Tensor:
    """Saliency per output channel: kurtosis of `W̃` (docs/methods.md 1.2(3)), a random permutation
    (control), or the b-bit quantization error of the channel."""
    wt = layer.effective_weight().detach()
    if selection == "kurtosis":
        return kurtosis(wt)
    if selection == "random":
        return torch.randperm(wt.shape[0], generator=generator).float()
    if selection == "error":
        return (wt - layer.weight_quant.quantize(wt)).pow(2).reshape(wt.shape[0], -1).mean(dim=1)
    raise EdgediffError(f"unknown channel selection {selection!r}: use one of {', '.join(SELECTIONS)}")


@torch.no_grad()
def apply_split(
    layer: QuantLayer, scores: Tensor, base_bits: int, k: int, salient: str = "bits", balance: bool = True
) -> None:
    """Set the bit vector (and residual channels) of split size `k`, then re-initialise the ranges."""
    if salient not in SALIENT_MODES:
        raise EdgediffError(f"unknown salient mode {salient!r}: use bits or residual")
    c = scores.numel()
    order = torch.argsort(scores.detach().float().cpu(), descending=True, stable=True)  # CPU, like `bits`
    if salient == "bits":
        bits = allocate_bits(scores, base_bits, k)
    else:
        if 2 * k > c:
            raise EdgediffError(f"residual split k={k} must be in 0..{c // 2} for {c} channels")
        bits = torch.full((c,), base_bits, dtype=torch.int32)
        if k and balance:
            if base_bits < 2:
                raise EdgediffError("balancing the residual needs base bits >= 2; use balance=False")
            bits[order[c - k :]] = base_bits - 1
    layer.weight_quant.bits.copy_(bits.to(layer.weight_quant.bits))
    layer.init_weight_range()
    if layer.residual is None:
        return
    if salient == "residual":
        wt = layer.effective_weight()
        layer.residual.init(wt, layer.weight_quant.quantize(wt), torch.sort(order[:k]).values)
    else:
        layer.init_residual()  # the recipe's own residual channels, α refreshed for the new ranges


@torch.no_grad()
def _weight_only_output(layer: QuantLayer, x: Tensor) -> Tensor:
    """`X̃ ⊛ Q(W̃)` with the weight quantizer on and the activation quantizer off."""
    w_on = layer.weight_quant.enabled
    a_on = layer.act_quant.enabled if layer.act_quant is not None else True
    layer.set_quant_enabled(weights=True, acts=False)
    try:
        return layer.forward(x)  # bypasses hooks (the search runs inside a pre-hook)
    finally:
        layer.set_quant_enabled(weights=w_on, acts=a_on)


@dataclass(frozen=True)
class SplitChoice:
    """Result of one layer's search: chosen `k`, candidate -> output MSE, channel count, mode."""

    k: int
    mse: dict[int, float]
    channels: int
    salient: str = "bits"


@torch.no_grad()
def search_layer(
    layer: QuantLayer,
    x: Tensor,
    base_bits: int,
    candidates: list[int],
    scores: Tensor,
    salient: str = "bits",
    balance: bool = True,
) -> SplitChoice:
    """Try every split size on input `x`; leave the layer at the best one (ties -> smaller k)."""
    w_on = layer.weight_quant.enabled
    a_on = layer.act_quant.enabled if layer.act_quant is not None else True
    layer.set_quant_enabled(weights=False, acts=False)
    try:
        y_ref = layer.forward(x)  # X·Wᵀ: δ cancels exactly when both quantizers are off
    finally:
        layer.set_quant_enabled(weights=w_on, acts=a_on)
    mse: dict[int, float] = {}
    for k in candidates:
        apply_split(layer, scores, base_bits, k, salient, balance)
        mse[k] = float((_weight_only_output(layer, x) - y_ref).pow(2).mean())
    best = min(candidates, key=lambda k: (mse[k], k))
    apply_split(layer, scores, base_bits, best, salient, balance)
    return SplitChoice(k=best, mse=mse, channels=int(scores.numel()), salient=salient)


def searchable(layer: QuantLayer, base_bits: int) -> bool:
    """Main layers only: weight bits `b` (the W8A8 edge layers keep uniform 8 bits)."""
    return layer.config.w_bits == base_bits and layer.weight_quant.granularity == "per_channel"


@torch.no_grad()
def omq_search(
    model: nn.Module,
    data: CalibrationData,
    base_bits: int,
    *,
    search_range: str = "paper",
    selection: str = "kurtosis",
    salient: str = "bits",
    balance: bool = True,
    samples: int = 64,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, SplitChoice]:
    """Search `k` for every main layer on `samples` calibration inputs spread over all steps.

    Runs the model with all quantizers off; a forward pre-hook scores each layer on its FP
    input (the released code's search setting) and leaves it at the chosen split.
    """
    layers = {n: m for n, m in quant_layers(model).items() if searchable(m, base_bits)}
    if not layers:
        raise EdgediffError(f"no layer with {base_bits}-bit weights to search; check the recipe's bits")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data), generator=gen)[: min(samples, len(data))]
    device = next(model.parameters()).device
    choices: dict[str, SplitChoice] = {}
    bar = tqdm(total=len(layers), desc="OMQ search", disable=None if progress else True, leave=False)

    def make_hook(name: str, layer: QuantLayer):
        def hook(module, args):
            if name in choices:
                return
            scores = channel_scores(layer, selection, gen)
            cands = split_candidates(layer.weight.shape[0], search_range)
            choices[name] = search_layer(layer, args[0], base_bits, cands, scores, salient, balance)
            layer.set_quant_enabled(weights=False, acts=False)
            bar.update(1)

        return hook

    handles = [m.register_forward_pre_hook(make_hook(n, m)) for n, m in layers.items()]
    was_training = model.training
    model.eval()
    try:
        with quant_disabled(model):
            cond = {k: v[idx].to(device) for k, v in data.cond.items()}
            model(data.x[idx].to(device), data.t[idx].to(device), **cond)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
        bar.close()
    missing = sorted(set(layers) - set(choices))
    if missing:
        log.warning("OMQ: layers %s saw no input and keep uniform bits", missing[:5])
    return choices


def searched_layer_quant(layer: QuantLayer, choice: SplitChoice | None) -> LayerQuant:
    """The layer's final `LayerQuant`: its bit vector, and a residual spec only where k > 0.

    A layer whose search chose no residual channel drops its (empty) `BinaryResidual` module,
    so the saved state_dict matches a model rebuilt from the returned rule.
    """
    cfg = layer.config
    bits = [int(b) for b in layer.weight_quant.bits.tolist()]
    w_bits: int | tuple[int, ...] = bits[0] if len(set(bits)) == 1 else tuple(bits)
    residual = cfg.residual
    if choice is not None and choice.salient == "residual" and layer.residual is not None:
        selection = cfg.residual.selection if cfg.residual is not None else "kurtosis"
        residual = (
            None if choice.k == 0 else ResidualSpec(fraction=choice.k / choice.channels, selection=selection)
        )
    if residual is None and layer.residual is not None:
        layer.residual = None
    new = replace(cfg, w_bits=w_bits, residual=residual)
    layer.config = new
    return new
