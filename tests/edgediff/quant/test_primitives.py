"""Fake-quant custom ops: value sets, STE / LSQ gradients, fake kernels, export."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from edgediff.quant import CalibrationData, LayerQuant, Recipe, calibrate, quantize_, set_step
from edgediff.quant.primitives import (
    fake_quant_dynamic_per_token,
    fake_quant_per_channel,
    fake_quant_per_tensor,
    qrange,
)

SETTINGS = settings(max_examples=25, deadline=None, database=None, derandomize=True)


@SETTINGS
@given(bits=st.integers(1, 8), seed=st.integers(0, 2**16), zp=st.integers(0, 255), scale=st.floats(1e-3, 1.0))
def test_per_tensor_at_most_2_pow_b_values(bits, seed, zp, scale):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4096, generator=g) * 3
    lo, hi = qrange(bits)
    z = torch.tensor(min(zp, hi), dtype=torch.int32)
    y = fake_quant_per_tensor(x, torch.tensor(scale), z, lo, hi)
    assert y.unique().numel() <= 2**bits
    q = torch.round(y / scale) + z  # values sit on the integer grid inside [qmin, qmax]
    assert q.min() >= lo - 1e-3 and q.max() <= hi + 1e-3


@SETTINGS
@given(seed=st.integers(0, 2**16), bits=st.lists(st.integers(1, 8), min_size=1, max_size=6))
def test_per_channel_bits_bound_distinct_values_per_channel(seed, bits):
    g = torch.Generator().manual_seed(seed)
    c = len(bits)
    x = torch.randn(c, 5, 7, generator=g) * 2
    b = torch.tensor(bits, dtype=torch.int32)
    lo, hi = qrange(b)
    z = (hi // 2).to(torch.int32)
    y = fake_quant_per_channel(x, torch.rand(c, generator=g) * 0.2 + 0.01, z, lo, hi, 0)
    for i in range(c):
        assert y[i].unique().numel() <= 2 ** bits[i]


def _surrogate(x, s, z, qmin, qmax, x0, s0):
    """The function the STE differentiates, frozen at (x0, s0): round(u) -> u + (round(u0) - u0)
    for codes inside [qmin, qmax]; codes clipped at (x0, s0) stay at qmin/qmax."""
    r0 = torch.round(x0 / s0) + z
    inside = (r0 >= qmin) & (r0 <= qmax)
    code = torch.where(inside, x / s + (torch.round(x0 / s0) - x0 / s0) + z, torch.clamp(r0, qmin, qmax))
    return s * (code - z)


def test_ste_and_step_gradient_match_finite_differences():
    torch.manual_seed(0)
    x = (torch.randn(400, dtype=torch.float64) * 2).requires_grad_(True)
    s = torch.tensor(0.13, dtype=torch.float64, requires_grad=True)
    z = torch.tensor(5, dtype=torch.int32)
    qmin, qmax = 0, 15
    y = fake_quant_per_tensor(x, s, z, qmin, qmax)
    gy = torch.randn_like(y)
    gx, gs = torch.autograd.grad(y, (x, s), gy)
    with torch.no_grad():
        eps = 1e-6
        f = lambda xx, ss: _surrogate(xx, ss, 5, qmin, qmax, x, s)  # noqa: E731
        fd_s = ((f(x, s + eps) - f(x, s - eps)) * gy).sum()
        fd_x = (f(x + eps, s) - f(x - eps, s)) / (2 * eps)
        r = torch.round(x / s) + 5
        inside = (r >= qmin) & (r <= qmax)
    assert torch.allclose(gs, fd_s / (2 * eps), rtol=1e-6, atol=1e-6)
    assert torch.allclose(gx, fd_x * gy, atol=1e-6)
    assert 0 < inside.sum() < x.numel()  # both regimes exercised
    # outside the range the true function is s*(qmax - z) (or qmin): its real derivative matches
    assert torch.allclose(gx[~inside], torch.zeros(1, dtype=x.dtype))
    # the LSQ formula itself
    with torch.no_grad():
        elem = torch.where(inside, torch.round(x / s) - x / s, torch.clamp(r, qmin, qmax) - 5)
    assert torch.allclose(gs, (elem * gy).sum())


def test_per_channel_step_gradient_matches_finite_differences():
    torch.manual_seed(1)
    x = torch.randn(3, 50, dtype=torch.float64) * 2
    s = torch.tensor([0.1, 0.3, 0.05], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([2, 4, 8], dtype=torch.int32)
    lo, hi = qrange(b)
    z = torch.tensor([1, 7, 128], dtype=torch.int32)
    y = fake_quant_per_channel(x, s, z, lo, hi, 0)
    gy = torch.randn_like(y)
    (gs,) = torch.autograd.grad(y, (s,), gy)
    eps = 1e-6
    with torch.no_grad():
        sc, zc, loc, hic = s[:, None], z[:, None].double(), lo[:, None].double(), hi[:, None].double()
        for c in range(3):
            d = torch.zeros(3, 1, dtype=x.dtype)
            d[c] = eps
            fd = (
                (_surrogate(x, sc + d, zc, loc, hic, x, sc) - _surrogate(x, sc - d, zc, loc, hic, x, sc)) * gy
            ).sum()
            assert abs(gs[c].item() - fd.item() / (2 * eps)) < 1e-6


def test_opcheck_fake_kernels_and_autograd_registration():
    x = torch.randn(2, 3, 4, 4)
    s = torch.full((3,), 0.1, requires_grad=True)
    z = torch.tensor([3, 4, 5], dtype=torch.int32)
    lo, hi = qrange(torch.tensor([3, 4, 8], dtype=torch.int32))
    torch.library.opcheck(fake_quant_per_channel, (x, s, z, lo, hi, 1))
    torch.library.opcheck(fake_quant_per_tensor, (x, torch.tensor(0.05, requires_grad=True), z[0], 0, 255))
    torch.library.opcheck(fake_quant_dynamic_per_token, (x.requires_grad_(True), 0, 15, 1))


def test_dynamic_per_token_range_error_and_gradient():
    torch.manual_seed(2)
    x = (torch.randn(6, 10, 16) * torch.linspace(0.1, 10, 10)[None, :, None]).requires_grad_(True)
    y = fake_quant_dynamic_per_token(x, 0, 15, -1)
    span = x.detach().amax(-1).clamp(min=0) - x.detach().amin(-1).clamp(max=0)
    assert ((y - x).abs().amax(-1) <= span / 15 / 2 + 1e-5).all()
    for row in y.detach().reshape(-1, 16):
        assert row.unique().numel() <= 16
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(g, torch.ones_like(g))


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.lin = nn.Linear(8, 5)
        self.out = nn.Linear(5, 6)

    def forward(self, x, t=None):
        return self.out(self.lin(self.conv(x).flatten(2).transpose(1, 2)))


def test_torch_export_with_dynamic_batch():
    torch.manual_seed(0)
    m = _Tiny().eval()
    recipe = Recipe(
        rules=(
            ("conv", LayerQuant(4, a_bits=8)),
            ("lin", LayerQuant((2, 3, 4, 5, 8), a_bits=8, a_mode="dynamic_per_token")),
            ("out", LayerQuant(3, a_bits=6, a_mode="per_step")),
        )
    )
    quantize_(m, recipe, num_steps=3)
    x = torch.randn(2, 3, 4, 4)
    calibrate(m, CalibrationData(x=x, t=torch.zeros(2), step=torch.tensor([0, 1]), num_steps=3))
    set_step(m, 1)
    ep = torch.export.export(m, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert {f"edgediff.{op}.default" for op in ("fake_quant_per_tensor", "fake_quant_per_channel")} <= targets
    assert "edgediff.fake_quant_dynamic_per_token.default" in targets
    x5 = torch.randn(5, 3, 4, 4)
    assert torch.equal(ep.module()(x5), m(x5))
