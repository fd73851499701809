"""QuantLinear / QuantConv2d: FP equivalence, branches, spec round trip, fold."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from edgediff.errors import EdgediffError
from edgediff.quant import LayerQuant, LoRASpec, LowRankSpec, QuantConv2d, QuantLinear, ResidualSpec, dequant
from edgediff.quant.branches import BinaryResidual

LINEAR_IN = (3, 5, 12)  # (batch, tokens, features)
CONV_IN = (2, 8, 9, 9)


def _calibrate(layer, x):
    """Minimal stand-in for calibrate(): set ranges from one input."""
    if layer.smooth is not None:
        cd = layer.channel_dim
        layer.set_smooth(x.abs().movedim(cd, -1).reshape(-1, x.shape[cd]).amax(0))
    layer.init_weight_range()
    layer.init_residual()
    aq = layer.act_quant
    if aq is not None and aq.mode != "dynamic_per_token":
        xs = layer.smooth.scale_input(x, layer.channel_dim) if layer.smooth is not None else x
        aq.init_range(xs, xs.min(), xs.max(), "minmax")
        if aq.mode == "per_step":
            for i in range(aq.num_steps):
                aq.init_range(xs * (1 + i), xs.min() * (1 + i), xs.max() * (1 + i), "minmax", index=i)
    return layer


def _perturb(layer, seed=0):
    """Give every zero-initialised branch factor non-zero values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.endswith(".B") or name.endswith(".M"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05 + (1.0 if name.endswith(".M") else 0.0))
    return layer


def _linear(cfg, num_steps=3, seed=0):
    torch.manual_seed(seed)
    return QuantLinear.from_float(nn.Linear(12, 10), cfg, num_steps)


def _conv(cfg, num_steps=3, seed=0, **kw):
    torch.manual_seed(seed)
    conv = nn.Conv2d(8, 6, 3, **({"padding": 1} | kw))
    return QuantConv2d.from_float(conv, cfg, num_steps)


@pytest.mark.parametrize("make,shape", [(_linear, LINEAR_IN), (_conv, CONV_IN)])
def test_merged_lora_with_quantization_disabled_equals_fp(make, shape):
    layer = _perturb(make(LayerQuant(3, a_bits=4, lora=LoRASpec(rank=4), smooth=True)))
    x = torch.randn(shape)
    _calibrate(layer, x)
    layer.set_quant_enabled(False, False)
    w = layer.weight + layer.lora.delta()
    if layer.kind == "linear":
        ref = nn.functional.linear(x, w, layer.bias)
    else:
        ref = nn.functional.conv2d(x, w, layer.bias, 1, 1)
    assert torch.allclose(layer(x), ref, atol=1e-5)
    layer.set_quant_enabled(True, True)
    assert not torch.allclose(layer(x), ref, atol=1e-3)


def test_conv_lora_is_composed_per_kernel_tap():
    layer = _perturb(_conv(LayerQuant(4, a_bits=None, lora=LoRASpec(rank=2))))
    A, B = layer.lora.A, layer.lora.B
    d = layer.lora.delta()
    for u in range(3):
        for v in range(3):
            assert torch.allclose(d[:, :, u, v], B[:, :, u, v] @ A[:, :, u, v], atol=1e-6)


def test_conv_keeps_stride_padding_dilation_groups():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 6, 3, stride=2, padding=(1, 2), dilation=2, groups=2)
    layer = QuantConv2d.from_float(conv, LayerQuant(8, a_bits=8, smooth=True))
    x = torch.randn(CONV_IN)
    _calibrate(layer, x)
    layer.set_quant_enabled(False, False)
    assert torch.allclose(layer(x), conv(x), atol=1e-5)
    spec = layer.spec()
    assert (spec.stride, spec.padding, spec.dilation, spec.groups) == ((2, 2), (1, 2), (2, 2), 2)
    assert spec.in_channels == 8 and spec.out_channels == 6


@settings(max_examples=20, deadline=None, database=None, derandomize=True)
@given(bits=st.integers(1, 6), seed=st.integers(0, 10_000), frac=st.floats(0.1, 1.0))
def test_binary_residual_never_increases_channel_error(bits, seed, frac):
    layer = _conv(LayerQuant(bits, a_bits=None, residual=ResidualSpec(fraction=frac)), seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.mul_(torch.rand(6, 1, 1, 1, generator=g) * 4)
    layer.init_weight_range("lp")
    layer.init_residual()
    wt = layer.effective_weight().detach()
    before = (wt - layer.weight_quant(wt)).pow(2).flatten(1).sum(1)
    after = (wt - layer.quantized_weight()).detach().pow(2).flatten(1).sum(1)
    assert (after <= before + 1e-9).all()
    chosen = layer.residual.mask
    assert chosen.sum() == max(1, round(frac * 6))
    assert (after[~chosen] == before[~chosen]).all()


def test_binary_residual_alpha_is_mean_abs_residual_and_learnable():
    res = BinaryResidual(3)
    wt = torch.randn(3, 7)
    wq = torch.round(wt)
    res.init(wt, wq, torch.tensor([0, 2]))
    assert torch.allclose(res.alpha[[0, 2]], (wt - wq).abs().mean(1)[[0, 2]])
    assert res.alpha[1] == 0
    out = res(wt, wq)
    out.sum().backward()
    assert res.alpha.grad[0] != 0 and res.alpha.grad[1] == 0
    assert set(torch.unique(torch.sign(out - wq)[0]).tolist()) <= {-1.0, 1.0}


SPEC_CASES = {
    "static": LayerQuant(4, a_bits=8),
    "per_step_mixed": LayerQuant((2, 3, 4, 4, 5, 6), a_bits=6, a_mode="per_step", w_range="lp"),
    "dynamic": LayerQuant(3, a_bits=4, a_mode="dynamic_per_token", w_range="clip_grid"),
    "weight_only_per_tensor": LayerQuant(5, w_granularity="per_tensor", a_bits=None),
    "smooth_lora_residual": LayerQuant(
        2, a_bits=8, smooth=True, lora=LoRASpec(4), residual=ResidualSpec(0.5)
    ),
    "additive_lora_lowrank": LayerQuant(3, a_bits=8, lora=LoRASpec(2, "additive"), lowrank=LowRankSpec(1)),
}


@pytest.mark.parametrize("case", sorted(SPEC_CASES))
@pytest.mark.parametrize("make,shape", [(_linear, LINEAR_IN), (_conv, CONV_IN)])
def test_dequant_from_spec_equals_forward(case, make, shape):
    cfg = SPEC_CASES[case]
    if make is _linear and isinstance(cfg.w_bits, tuple):
        cfg = LayerQuant(tuple(cfg.w_bits) + (8, 7, 6, 5), a_bits=6, a_mode="per_step")
    layer = _perturb(make(cfg))
    x = torch.randn(shape)
    _calibrate(layer, x)
    step = 1 if cfg.a_mode == "per_step" else None
    if step is not None:
        layer.act_quant.set_step(step)
    with torch.no_grad():
        y = layer(x)
        spec = layer.spec()
        assert spec.weight_codes.dtype == torch.uint8
        assert (spec.weight_codes.flatten(1).amax(1) < 2**spec.weight_bits).all()
        assert torch.allclose(dequant(spec, x, step), y, atol=1e-6, rtol=0)
        before = layer.spec()
        folded = layer.fold()
        assert torch.equal(layer(x), y)  # folding changes nothing
        assert torch.equal(folded.weight_codes, before.weight_codes)
        assert torch.allclose(dequant(folded, x, step), y, atol=1e-6, rtol=0)
        assert torch.equal(layer.fold().weight_codes, before.weight_codes)  # idempotent


def test_lowrank_per_frame_scale_and_spec():
    layer = _perturb(_linear(LayerQuant(4, a_bits=8, lowrank=LowRankSpec(rank=1, frames=4))))
    x = torch.randn(2, 8, 12)  # 8 tokens = 4 frames x 2 tokens
    _calibrate(layer, x)
    with torch.no_grad():
        layer.lowrank.M.copy_(torch.tensor([0.0, 1.0, 2.0, 3.0]))
        xq = layer.quantize_input(x)
        branch = layer.lowrank(xq)
        base = nn.functional.linear(xq, layer.quantized_weight(), layer.bias)
        assert torch.allclose(layer(x), base + branch)
        assert torch.equal(branch[:, :2], torch.zeros_like(branch[:, :2]))  # frame 0 has M = 0
        plain = nn.functional.linear(nn.functional.linear(xq, layer.lowrank.A), layer.lowrank.B)
        assert torch.allclose(branch[:, 6:], 3 * plain[:, 6:], atol=1e-6)
        assert torch.allclose(dequant(layer.spec(), x), layer(x), atol=1e-6)
    with pytest.raises(EdgediffError, match="frames"):
        layer(torch.randn(2, 7, 12))
    with pytest.raises(EdgediffError, match="linear layer"):
        _conv(LayerQuant(4, lowrank=LowRankSpec(1, frames=2)))


def test_gradients_reach_quantizer_and_branch_parameters():
    layer = _perturb(
        _linear(
            LayerQuant(
                3,
                a_bits=6,
                a_mode="per_step",
                lora=LoRASpec(2),
                residual=ResidualSpec(0.3),
                lowrank=LowRankSpec(1),
            )
        )
    )
    x = torch.randn(LINEAR_IN)
    _calibrate(layer, x)
    layer.act_quant.set_step(2)
    layer(x).pow(2).sum().backward()
    for name in ("weight_quant.scale", "lora.A", "lora.B", "residual.alpha", "lowrank.A", "lowrank.B"):
        assert layer.get_parameter(name).grad.abs().sum() > 0, name
    g = layer.act_quant.scale.grad
    assert g[2] != 0 and g[0] == 0 and g[1] == 0
