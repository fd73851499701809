"""MPQ-DM unit checks, docs/methods.md 1.6 (i)-(vii), on a tiny UNet built from a config."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgediff.errors import EdgediffError
from edgediff.methods.common import quant_forward
from edgediff.methods.mpqdm import (
    DistillTerms,
    MPQDMConfig,
    fp_island_names,
    mpqdm_recipe,
    prepare,
    run_mpqdm,
)
from edgediff.methods.omq import apply_split, channel_scores, search_layer, split_candidates
from edgediff.methods.trd import TRDLoss
from edgediff.quant import (
    LayerQuant,
    LoRASpec,
    QuantConv2d,
    QuantLinear,
    quant_disabled,
    quant_layers,
)
from edgediff.quant.mixed import kurtosis

from .tiny import BASE, SCHED, assert_round_trip_bit_exact, tiny_unet


@pytest.fixture(scope="module")
def prepared():
    """A tiny MPQ-DM model after calibration and an OMQ search forced to k = C/10 (W3A4)."""
    fp = tiny_unet()
    cfg = MPQDMConfig(base=BASE, omq_range="fixed")
    model, recipe, record, data = prepare(
        fp, SCHED, "W3A4", mpqdm_recipe("W3A4", fp, cfg), cfg, progress=False
    )
    return fp, model, recipe, record, data


def _conv_layer(w_bits=3, smooth=True, lora=None, seed=0) -> QuantConv2d:
    torch.manual_seed(seed)
    conv = nn.Conv2d(16, 24, 3, padding=1)
    lq = LayerQuant(w_bits=w_bits, a_bits=4, smooth=smooth, lora=lora)
    return QuantConv2d.from_float(conv, lq)


def test_prescale_is_output_preserving_in_fp():
    """(i) δ-scaled input and weight give the FP output when quantization is off."""
    layer = _conv_layer()
    x = torch.randn(4, 16, 8, 8) * torch.linspace(0.1, 20, 16).reshape(1, -1, 1, 1)
    layer.set_smooth(x.abs().amax(dim=(0, 2, 3)))
    assert not torch.allclose(layer.smooth.delta, torch.ones(16))
    layer.set_quant_enabled(weights=False, acts=False)
    ref = F.conv2d(x, layer.weight, layer.bias, padding=1)
    torch.testing.assert_close(layer(x), ref, rtol=1e-5, atol=1e-5)


def test_prescale_preserves_the_whole_calibrated_model(prepared):
    """(i) on the model: with every quantizer off the calibrated MPQ-DM model is the FP model."""
    fp, model, _, _, _ = prepared
    assert any(layer.smooth is not None for layer in quant_layers(model).values())
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 900])
    with torch.no_grad(), quant_disabled(model):
        lora_off = {n: layer.lora.B.abs().sum() for n, layer in quant_layers(model).items() if layer.lora}
        assert all(v == 0 for v in lora_off.values())
        torch.testing.assert_close(model(x, t).sample, fp(x, t).sample, rtol=1e-4, atol=1e-5)


def test_omq_keeps_mean_bits_exactly(prepared):
    """(ii) every searched layer keeps mean bit width b, and some channels moved to b±1."""
    _, model, recipe, record, _ = prepared
    mixed = 0
    for name, layer in quant_layers(model).items():
        bits = layer.weight_quant.bits
        if name in record["split"]:
            assert bits.sum().item() == 3 * bits.numel()
            mixed += int(record["split"][name]["k"] > 0)
            assert set(bits.tolist()) <= {2, 3, 4}
    assert mixed > 10
    # the bit vectors are in the recipe (one rule per layer)
    rules = dict(recipe.rules)
    name = next(n for n, s in record["split"].items() if s["k"] > 0)
    assert isinstance(rules[name].w_bits, tuple) and sum(rules[name].w_bits) == 3 * len(rules[name].w_bits)


def test_kurtosis_on_a_hand_case():
    """mean((w−μ)^4)/σ^4, σ unbiased: [0,0,0,4] -> 21/16; [1,−1,1,−1] -> 1/(4/3)^2 = 9/16."""
    k = kurtosis(torch.tensor([[0.0, 0.0, 0.0, 4.0], [1.0, -1.0, 1.0, -1.0]]))
    torch.testing.assert_close(k, torch.tensor([21 / 16, 9 / 16]))


def _independent_kurtosis(w: torch.Tensor) -> torch.Tensor:
    rows = w.detach().double().reshape(w.shape[0], -1)
    d = rows - rows.mean(dim=1, keepdim=True)
    var = (d**2).sum(dim=1) / (rows.shape[1] - 1)
    return (d**4).mean(dim=1) / var**2


def test_omq_search_gives_the_extra_bit_to_the_highest_kurtosis_channels(prepared):
    """Through `prepare` (the method's path): top-k kurtosis of W̃ get b+1 bits, bottom-k b−1."""
    _, model, _, record, _ = prepared
    checked = 0
    for name, layer in quant_layers(model).items():
        k = record["split"].get(name, {}).get("k", 0)
        if not k:
            continue
        scores = _independent_kurtosis(layer.effective_weight())
        order = torch.argsort(scores, descending=True).tolist()
        if scores[order[k - 1]] == scores[order[k]] or scores[order[-k]] == scores[order[-k - 1]]:
            continue  # a tie at the boundary: either channel is a correct choice
        bits = layer.weight_quant.bits.tolist()
        assert sorted(i for i, b in enumerate(bits) if b == 4) == sorted(order[:k]), name
        assert sorted(i for i, b in enumerate(bits) if b == 2) == sorted(order[-k:]), name
        checked += 1
    assert checked > 10


def test_split_candidates_paper_and_code_ranges():
    assert split_candidates(64, "paper") == [0, 6, 12, 18, 24, 30]
    assert split_candidates(64, "code") == [0, 6]
    assert split_candidates(64, "fixed") == [6]
    assert split_candidates(8, "paper") == [0]
    with pytest.raises(EdgediffError, match="search range"):
        split_candidates(64, "bogus")


def test_k0_is_uniform_per_channel_quantization():
    """(iii) k = 0 gives all-b bits and exactly the output of a uniform b-bit layer."""
    torch.manual_seed(1)
    mixed, uniform = _conv_layer(seed=3), _conv_layer(seed=3)
    x = torch.randn(4, 16, 8, 8)
    for layer in (mixed, uniform):
        layer.set_smooth(x.abs().amax(dim=(0, 2, 3)))
        layer.init_weight_range()
    apply_split(mixed, kurtosis(mixed.effective_weight()), 3, 4)
    assert mixed.weight_quant.bits.tolist() != [3] * 24
    apply_split(mixed, kurtosis(mixed.effective_weight()), 3, 0)
    assert mixed.weight_quant.bits.tolist() == [3] * 24
    torch.testing.assert_close(mixed.quantized_weight(), uniform.quantized_weight(), rtol=0, atol=0)


@pytest.mark.parametrize("selection", ["kurtosis", "random"])
def test_chosen_k_never_increases_output_mse(selection):
    """(iv) the chosen split's calibration output MSE is at most that of k = 0 (re-measured)."""
    layer = _conv_layer(seed=5)
    x = torch.randn(8, 16, 8, 8) * torch.linspace(0.2, 5, 16).reshape(1, -1, 1, 1)
    layer.set_smooth(x.abs().amax(dim=(0, 2, 3)))
    layer.init_weight_range()
    scores = channel_scores(layer, selection, torch.Generator().manual_seed(0))
    choice = search_layer(layer, x, 3, split_candidates(24, "paper"), scores)
    layer.set_quant_enabled(weights=False, acts=False)
    y_ref = layer(x)
    layer.set_quant_enabled(weights=True, acts=False)
    chosen = (layer(x) - y_ref).pow(2).mean().item()
    apply_split(layer, scores, 3, 0)
    uniform = (layer(x) - y_ref).pow(2).mean().item()
    assert chosen <= uniform + 1e-12
    assert choice.mse[choice.k] == min(choice.mse.values())
    assert set(choice.mse) == set(split_candidates(24, "paper"))


def _unmerged_conv_lora(x: torch.Tensor, layer: QuantConv2d) -> torch.Tensor:
    """LoRA as a separate branch: per kernel tap, conv with A's tap, then a 1x1 conv with B's tap."""
    a, b = layer.lora.A, layer.lora.B
    out = 0
    kh, kw = a.shape[2:]
    for u in range(kh):
        for v in range(kw):
            ka = torch.zeros_like(a)
            ka[:, :, u, v] = a[:, :, u, v]
            z = F.conv2d(x, ka, padding=layer.padding)
            out = out + F.conv2d(z, b[:, :, u, v, None, None])
    return out


def test_merged_lora_equals_unmerged_fp_forward():
    """(v) with quantization off, the merged LoRA forward equals FP conv/linear + separate LoRA branch."""
    conv = _conv_layer(lora=LoRASpec(rank=4, mode="merged"), smooth=False)
    torch.nn.init.normal_(conv.lora.B, std=0.1)
    conv.set_quant_enabled(weights=False, acts=False)
    x = torch.randn(2, 16, 8, 8)
    ref = F.conv2d(x, conv.weight, conv.bias, padding=1) + _unmerged_conv_lora(x, conv)
    torch.testing.assert_close(conv(x), ref, rtol=1e-4, atol=1e-5)

    torch.manual_seed(0)
    lin = QuantLinear.from_float(
        nn.Linear(12, 20), LayerQuant(w_bits=2, a_bits=4, lora=LoRASpec(3, "merged"))
    )
    torch.nn.init.normal_(lin.lora.B, std=0.1)
    lin.set_quant_enabled(weights=False, acts=False)
    xl = torch.randn(5, 12)
    ref = F.linear(xl, lin.weight, lin.bias) + (xl @ lin.lora.A.t()) @ lin.lora.B.t()
    torch.testing.assert_close(lin(xl), ref, rtol=1e-4, atol=1e-5)


def test_per_step_scales_follow_the_ddim_index_not_call_count(prepared):
    """(vi) the output at step i depends only on i, however many calls came before."""
    _, model, _, _, _ = prepared
    layer = next(m for m in quant_layers(model).values() if m.act_quant is not None and m.act_quant.num_steps)
    assert layer.act_quant.mode == "per_step" and layer.act_quant.num_steps == BASE.num_steps
    with torch.no_grad():
        layer.act_quant.scale[1] = layer.act_quant.scale[1] * 3
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([500, 500])
    with torch.no_grad():
        first = quant_forward(model, x, t, 1)
        for step in (0, 2, 0, 2, 1, 1):
            quant_forward(model, x, t, step)
        again = quant_forward(model, x, t, 1)
        other = quant_forward(model, x, t, 0)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.allclose(first, other)
    with torch.no_grad():
        layer.act_quant.scale[1] = layer.act_quant.scale[1] / 3


def _trd_grad(model, fp, detach: bool, mode: str = "target") -> tuple[torch.Tensor | None, float]:
    """Run two steps with the TRD term only; return (loss, gradient norm over the LoRA factors)."""
    model.zero_grad(set_to_none=True)
    for name, p in model.named_parameters():
        p.requires_grad_(".lora." in name)
    terms = DistillTerms(model, fp, TRDLoss(window=2, tau=1.0, weight=100.0, mode=mode), None, detach=detach)
    torch.manual_seed(0)
    loss = None
    try:
        for step in (0, 1):
            x, t = torch.randn(2, 1, 8, 8), torch.tensor([900 - 400 * step] * 2)
            with torch.no_grad():
                fp(x, t)
            quant_forward(model, x, t, step)
            loss = terms(step, x, t)
    finally:
        terms.close()
    assert loss is not None and float(loss.detach()) > 0
    if loss.requires_grad:
        loss.backward()
    grads = [p.grad.norm() for n, p in model.named_parameters() if ".lora." in n and p.grad is not None]
    return loss, float(sum(grads)) if grads else 0.0


def test_trd_gradient_nonzero_when_enabled_and_absent_when_detached(prepared):
    """(vii) TRD reaches the LoRA factors; with trd_detach (released code) it gives no gradient."""
    fp, model, _, _, _ = prepared
    for layer in quant_layers(model).values():  # B = 0 would hide A's gradient; give LoRA an output
        if layer.lora is not None:
            torch.nn.init.normal_(layer.lora.B, std=1e-3)
    _, g = _trd_grad(model, fp, detach=False)
    assert g > 0
    _, g_window = _trd_grad(model, fp, detach=False, mode="window")
    assert g_window > 0
    loss, g_detached = _trd_grad(model, fp, detach=True)
    assert not loss.requires_grad and g_detached == 0.0
    for layer in quant_layers(model).values():
        if layer.lora is not None:
            torch.nn.init.zeros_(layer.lora.B)


def test_trd_window_restarts_with_a_new_trajectory():
    trd = TRDLoss(window=2)
    f = torch.randn(1, 4, 3, 3)
    x, t = torch.zeros(1, 1, 3, 3), torch.zeros(1, dtype=torch.long)
    assert trd(0, x, t, f, f) is None
    assert trd(1, x, t, f, f) is not None
    assert trd(0, x, t, f, f) is None  # restart: the window holds one step only


def test_fp_islands_follow_methods_1_3(prepared):
    fp, model, recipe, _, _ = prepared
    islands = fp_island_names(fp)
    assert "down_blocks.0.downsamplers.0.conv" in islands
    assert any(n.endswith("conv_shortcut") for n in islands)
    layers = quant_layers(model)
    assert not set(islands) & set(layers)
    for edge in ("conv_in", "conv_out", "time_embedding.linear_1"):
        assert layers[edge].config.w_bits == 8 and layers[edge].config.a_bits == 8
        assert layers[edge].lora is None and layers[edge].smooth is None


def test_save_load_round_trip_is_bit_exact(tmp_path):
    """A fine-tuned MPQ-DM model (mixed bits, TRD) reloads from its recipe with identical outputs."""
    fp = tiny_unet()
    cfg = MPQDMConfig(base=BASE, omq_range="fixed")
    model, recipe, record = run_mpqdm(fp, SCHED, "W3A4", cfg=cfg, progress=False)
    assert record["updates"] == 3 and "trd_mean" in record
    assert record["method_config"]["omq_range"] == "fixed"
    assert_round_trip_bit_exact(model, recipe, fp, tmp_path / "q", "mpqdm", torch.tensor([100, 700]))


def test_config_rejects_unknown_choices():
    with pytest.raises(EdgediffError, match="OMQ search range"):
        MPQDMConfig(omq_range="wide")
    with pytest.raises(EdgediffError, match="TRD mode"):
        replace(MPQDMConfig(), trd_mode="both")
