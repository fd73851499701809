"""Q-VDiT's TQE branch (docs/methods.md 3.2): per-frame M, frame layouts, zero init, gradients, spec."""

import math

import pytest
import torch

from edgediff.errors import EdgediffError
from edgediff.quant import LayerQuant, QuantLinear, dequant
from edgediff.quant.branches import frame_blocks, tqe_apply, tqe_frame_scale
from edgediff.quant.recipe import Recipe, TQESpec


def _m_by_hand() -> list[float]:
    """Two frames: X_0 = (1, 0), Q_0 = (1, 0); X_1 = (0, 2), Q_1 = (2, 2)."""
    c0, c1 = 1.0, 4.0 / (2.0 * math.sqrt(8.0))  # cos(X_i, Q(X)_i)
    e0, e1 = math.exp(1 - c0), math.exp(1 - c1)
    eta = [e0 / (e0 + e1), e1 / (e0 + e1)]  # softmax over frames of 1 - cos
    omega = [1.0 / 3.0, 2.0 / 3.0]  # |X_0| = 1, |X_1| = 2
    return [eta[0] / omega[0], eta[1] / omega[1]]


def test_frame_scale_two_frames_hand_computed():
    expected = torch.tensor([_m_by_hand()])
    # spatial layout (B·F, N, C): one sample, 2 frames, 1 token each
    x = torch.tensor([[[1.0, 0.0]], [[0.0, 2.0]]])
    xq = torch.tensor([[[1.0, 0.0]], [[2.0, 2.0]]])
    m = tqe_frame_scale(x, xq, 2, "spatial")
    torch.testing.assert_close(m, expected, rtol=1e-6, atol=1e-6)
    # the same video in the temporal layout (B·N, F, C)
    mt = tqe_frame_scale(x.transpose(0, 1), xq.transpose(0, 1), 2, "temporal", tokens=1)
    torch.testing.assert_close(mt, expected, rtol=1e-6, atol=1e-6)
    # equal frames give M = 1 (η and ω both uniform)
    same = torch.ones(4, 3, 5)
    torch.testing.assert_close(tqe_frame_scale(same, same, 4, "spatial"), torch.ones(1, 4))


def _labelled(b: int, f: int, n: int, c: int, layout: str) -> torch.Tensor:
    """An input whose every element holds 100·sample + frame."""
    lab = (100 * torch.arange(b).reshape(b, 1) + torch.arange(f).reshape(1, f)).float()  # (B, F)
    if layout == "spatial":
        return lab.reshape(b * f, 1, 1).expand(b * f, n, c).clone()
    return lab.reshape(b, 1, f, 1).expand(b, n, f, c).reshape(b * n, f, c).clone()


@pytest.mark.parametrize("layout", ["spatial", "temporal"])
def test_frame_blocks_hold_one_frame_of_one_sample(layout):
    b, f, n, c = 2, 3, 4, 5
    blocks = frame_blocks(_labelled(b, f, n, c, layout), f, layout, tokens=n)
    assert blocks.shape == (b, f, n * c)
    expected = 100 * torch.arange(b).reshape(b, 1, 1) + torch.arange(f).reshape(1, f, 1)
    assert torch.equal(blocks, expected.float().expand(b, f, n * c))


def test_frame_blocks_refuse_a_wrong_frame_count():
    with pytest.raises(EdgediffError, match="frames"):
        frame_blocks(torch.zeros(6, 4, 2), 4, "spatial")
    with pytest.raises(EdgediffError, match="temporal TQE input"):
        frame_blocks(torch.zeros(6, 4, 2), 3, "temporal", tokens=3)


@pytest.mark.parametrize("layout", ["spatial", "temporal"])
def test_tqe_apply_matches_a_per_frame_loop(layout):
    torch.manual_seed(0)
    b, f, n, cin, cout, r = 2, 3, 4, 6, 5, 2
    x = torch.randn(b * f, n, cin) if layout == "spatial" else torch.randn(b * n, f, cin)
    xq = x + 0.3 * torch.randn_like(x)
    alpha, beta = torch.randn(cin, r), torch.randn(cout, r)
    y = tqe_apply(x, xq, alpha, beta, f, layout, n)
    m = tqe_frame_scale(x, xq, f, layout, n)
    ref = torch.empty(*x.shape[:-1], cout)
    for s in range(b):
        for i in range(f):
            if layout == "spatial":
                rows = xq[s * f + i]  # (N, Cin)
                ref[s * f + i] = ((m[s, i] * rows) @ alpha) @ beta.t()
            else:
                rows = xq[s * n : (s + 1) * n, i]  # (N, Cin)
                ref[s * n : (s + 1) * n, i] = ((m[s, i] * rows) @ alpha) @ beta.t()
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    plain = tqe_apply(x, xq, alpha, beta, f, layout, n, use_m=False)
    torch.testing.assert_close(plain, (xq @ alpha) @ beta.t())
    assert not torch.allclose(plain, y)


def _layers(spec: TQESpec | None):
    torch.manual_seed(0)
    w, bias = torch.randn(7, 6), torch.randn(7)
    base = LayerQuant(w_bits=4, a_bits=6, a_mode="dynamic_per_token", w_range="clip_grid")
    plain = QuantLinear(w, bias, base)
    with_tqe = QuantLinear(w, bias, LayerQuant(**{**base.__dict__, "tqe": spec}))
    for layer in (plain, with_tqe):
        layer.init_weight_range()
    return plain, with_tqe


def test_zero_beta_keeps_the_plain_quantized_output():
    plain, layer = _layers(TQESpec(frames=3))
    assert layer.tqe is not None and torch.count_nonzero(layer.tqe.beta) == 0
    assert layer.tqe.alpha.shape == (6, 1) and layer.tqe.beta.shape == (7, 1)
    assert layer.tqe.alpha.abs().sum() > 0  # Kaiming-initialised, not zero
    x = torch.randn(2 * 3, 4, 6)
    assert torch.equal(layer(x), plain(x))


def test_alpha_and_beta_receive_gradients():
    _, layer = _layers(TQESpec(frames=3))
    x = torch.randn(2 * 3, 4, 6)
    layer(x).square().sum().backward()
    assert layer.tqe.beta.grad is not None and layer.tqe.beta.grad.abs().sum() > 0
    with torch.no_grad():  # one step on β; then α's gradient (∝ β) is nonzero as well
        layer.tqe.beta -= 0.1 * layer.tqe.beta.grad
    layer.zero_grad()
    layer(x).square().sum().backward()
    assert layer.tqe.alpha.grad is not None and layer.tqe.alpha.grad.abs().sum() > 0


@pytest.mark.parametrize("m", [True, False])
def test_spec_dequant_reproduces_the_branch(m):
    _, layer = _layers(TQESpec(frames=2, layout="temporal", tokens=3, m=m))
    with torch.no_grad():
        layer.tqe.beta.normal_()
    x = torch.randn(2 * 3, 2, 6)
    spec = layer.spec()
    assert spec.tqe is not None and spec.tqe.use_m is m and spec.tqe.layout == "temporal"
    torch.testing.assert_close(dequant(spec, x), layer(x), rtol=1e-5, atol=1e-5)


def test_tqe_spec_round_trips_and_validates():
    q = LayerQuant(w_bits=4, a_bits=6, tqe=TQESpec(frames=8, layout="temporal", tokens=64, m=False))
    r = Recipe(rules=(("blocks", q),))
    assert Recipe.from_json(r.to_json()) == r
    with pytest.raises(EdgediffError, match="tokens"):
        TQESpec(frames=8, layout="temporal")
    with pytest.raises(EdgediffError, match="TQE layout"):
        TQESpec(frames=8, layout="diagonal")
