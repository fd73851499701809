"""Weight/activation quantizers, range initialisation, mixed-precision helpers."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgediff.errors import EdgediffError
from edgediff.quant.layers import QuantLinear
from edgediff.quant.mixed import allocate_bits, kurtosis, top_channels
from edgediff.quant.quantizers import ActQuantizer, WeightQuantizer
from edgediff.quant.ranges import CLIP_RATIOS, LP_RATIOS, init_params, minmax_params
from edgediff.quant.recipe import LayerQuant


@settings(max_examples=20, deadline=None, database=None, derandomize=True)
@given(
    c=st.integers(2, 40),
    base=st.integers(2, 7),
    frac=st.floats(0.0, 0.5),
    seed=st.integers(0, 1000),
)
def test_mixed_bits_keep_exact_mean_and_level_count(c, base, frac, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(c, 24, generator=g) * torch.rand(c, 1, generator=g) * 3
    k = min(int(frac * c), c // 2)
    bits = allocate_bits(kurtosis(w), base, k)
    assert bits.sum().item() == base * c  # mean is exactly `base`
    assert int((bits == base + 1).sum()) == k == int((bits == base - 1).sum())
    q = WeightQuantizer(c, bits.tolist())
    q.init_range(w, "minmax")
    y = q(w)
    for i in range(c):
        assert y[i].unique().numel() <= 2 ** int(bits[i])
    assert torch.equal(q.bits, bits)


def test_allocate_bits_gives_extra_bit_to_most_kurtotic_channels():
    w = torch.randn(10, 64)
    w[3, 0] = 40.0  # a heavy outlier -> highest kurtosis
    bits = allocate_bits(kurtosis(w), 3, 2)
    assert bits[3] == 4
    assert top_channels(kurtosis(w), 0.1).tolist() == [3]
    with pytest.raises(EdgediffError):
        allocate_bits(kurtosis(w), 8, 1)


def test_weight_quantizer_validates_bits():
    with pytest.raises(EdgediffError, match="outside 1..8"):
        WeightQuantizer(4, 9)
    with pytest.raises(EdgediffError, match="one bit width per output channel"):
        WeightQuantizer(4, [4, 4])
    with pytest.raises(EdgediffError, match="outside 1..8"):
        WeightQuantizer(2, [0, 4])


def test_per_tensor_weight_granularity_shares_one_scale():
    w = torch.randn(6, 10)
    q = WeightQuantizer(6, 4, "per_tensor")
    q.init_range(w, "minmax")
    assert q.scale.numel() == 1
    assert torch.allclose(q(w), w, atol=float(q.scale.detach()) / 2 + 1e-6)


def test_minmax_includes_zero_and_covers_range():
    s, z = minmax_params(torch.tensor([0.5]), torch.tensor([2.0]), 0, 255)
    assert int(z) == 0 and abs(float(s) - 2.0 / 255) < 1e-7
    s, z = minmax_params(torch.tensor([-1.0]), torch.tensor([3.0]), 0, 15)
    assert abs(float(s) - 4 / 15) < 1e-6 and int(z) == 4


@pytest.mark.parametrize("method,ratios", [("lp", LP_RATIOS), ("clip_grid", CLIP_RATIOS)])
def test_grid_searches_do_not_lose_to_their_own_grid(method, ratios):
    torch.manual_seed(0)
    rows = torch.randn(5, 512) * torch.tensor([0.1, 1, 5, 20, 3])[:, None]
    rows[2, 0] = 80.0  # outlier: clipping should pay off
    s, z = init_params(rows, 0, 15, method)
    p = 2.4 if method == "lp" else 2.0

    def err(scale, zero):
        q = torch.clamp(torch.round(rows / scale[:, None]) + zero[:, None], 0, 15)
        return ((rows - (q - zero[:, None]) * scale[:, None]).abs() ** p).mean(1)

    best = err(s, z.float())
    for r in (ratios[0], ratios[len(ratios) // 2], ratios[-1]):
        s_r, z_r = minmax_params(rows.amin(1) * r, rows.amax(1) * r, 0, 15)
        assert (best <= err(s_r, z_r.float()) + 1e-7).all()
    assert len(LP_RATIOS) == 80 and LP_RATIOS[-1] == pytest.approx(0.21)
    assert CLIP_RATIOS[0] == 0.02 and CLIP_RATIOS[-1] == 0.98 and len(CLIP_RATIOS) == 49


def test_per_step_table_is_indexed_by_step():
    q = ActQuantizer(4, "per_step", num_steps=3)
    x = torch.linspace(-1, 1, 101)
    q.init_range(x, x.min(), x.max(), "minmax")
    with torch.no_grad():
        q.scale[2] = 0.5
    with pytest.raises(EdgediffError, match="set_step"):
        q(x)
    q.set_step(0)
    y0 = q(x)
    q.set_step(2)
    y2 = q(x)
    assert not torch.equal(y0, y2)
    q.set_step(0)
    assert torch.equal(q(x), y0)  # indexed by step, not by call count
    with pytest.raises(EdgediffError, match="outside the per-step activation table"):
        q.set_step(3)


def test_act_quantizer_needs_calibration_and_can_be_bypassed():
    q = ActQuantizer(8, "static")
    x = torch.randn(10)
    with pytest.raises(EdgediffError, match="not calibrated"):
        q(x)
    q.enabled = False
    assert torch.equal(q(x), x)
    with pytest.raises(EdgediffError, match="num_steps"):
        ActQuantizer(8, "per_step")
    with pytest.raises(EdgediffError, match="unknown activation mode"):
        ActQuantizer(8, "per_token")


@pytest.mark.parametrize("method", ["minmax", "lp"])
@pytest.mark.parametrize("bits", [8, 4, 2, (8, 4, 3, 2)])
def test_symmetric_weights_have_mid_zero_point_and_signed_codes(method, bits):
    """`w_symmetric`: z = 2^(b-1) exactly, so q - z is a signed b-bit code (docs/methods.md 1.7)."""
    w = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    wq = WeightQuantizer(4, bits, symmetric=True)
    wq.init_range(w, method)
    b = wq.bits.long()
    assert torch.equal(wq.zero_point.long(), 2 ** (b - 1))
    d = wq.codes(w).long() - wq.zero_point.long()[:, None]
    assert (d >= -(2 ** (b - 1))[:, None]).all() and (d <= (2 ** (b - 1) - 1)[:, None]).all()
    if method == "minmax":  # the full symmetric range: every weight within one step of a level
        err = (wq(w) - w).abs().amax(dim=1)
        assert (err <= wq.scale.detach() * 1.01).all()


def test_symmetric_flag_comes_from_the_recipe():
    layer = QuantLinear(torch.randn(6, 5), None, LayerQuant(w_bits=8, a_bits=None, w_symmetric=True))
    assert layer.weight_quant.symmetric and int(layer.weight_quant.zero_point[0]) == 128
    assert LayerQuant.from_dict(LayerQuant(w_bits=4, w_symmetric=True).to_dict()).w_symmetric
