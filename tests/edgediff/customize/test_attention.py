"""The SAGI / SALQ formulas on hand-computed cases and the processor on a real attention layer."""

import math

import pytest
import torch
from diffusers.models.attention_processor import Attention

from edgediff.customize.attention import (
    Controller,
    MCASelfAttnProcessor,
    masked_attention,
    mca_output,
    sagi,
    salq,
)
from edgediff.customize.schedule import ControlSchedule


def test_masked_attention_hand_case():
    # d = 1, scale 1: q = [1, 0], keys k = [0, 1, 2] with the middle key masked out, v = [10, 20, 30]
    q = torch.tensor([[1.0], [0.0]])
    k = torch.tensor([[0.0], [1.0], [2.0]])
    v = torch.tensor([[10.0], [20.0], [30.0]])
    out = masked_attention(q, k, v, torch.tensor([True, False, True]), scale=1.0)
    e2 = math.exp(2)
    assert out[0, 0].item() == pytest.approx((10 + 30 * e2) / (1 + e2), rel=1e-6)
    assert out[1, 0].item() == pytest.approx(20.0, rel=1e-6)  # logits 0, 0 over 10 and 30
    # the masked key must not count: without the mask the value changes
    assert masked_attention(q, k, v, torch.ones(3, dtype=torch.bool), 1.0)[1, 0].item() == pytest.approx(20.0)
    assert masked_attention(q, k, v, torch.ones(3, dtype=torch.bool), 1.0)[0, 0].item() != pytest.approx(
        out[0, 0].item()
    )


def test_masked_attention_no_keys_is_zero_not_nan():
    q, k, v = torch.ones(2, 1), torch.ones(3, 1), torch.ones(3, 1)
    out = masked_attention(q, k, v, torch.zeros(3, dtype=torch.bool))
    assert torch.equal(out, torch.zeros(2, 1))


def _streams():
    g = torch.Generator().manual_seed(0)
    return [tuple(torch.randn(4, 2, generator=g) for _ in range(3)) for _ in range(3)]  # S, C, T: (q, k, v)


def _ref(q, k, v, keys, scale):
    logits = (q @ k.T) * scale
    logits[:, ~keys] = float("-inf")
    return torch.softmax(logits, -1) @ v


def test_sagi_formula_uses_source_queries_and_mc_weighting():
    (qs, ks, vs), (qc, kc, vc), (qt, kt, vt) = _streams()
    m_s = torch.tensor([True, True, False, False])
    m_c = torch.tensor([False, True, True, False])
    out = sagi((qs, ks, vs), (qc, kc, vc), m_s, m_c, scale=0.5)
    fg, bg = _ref(qs, ks, vs, m_s, 0.5), _ref(qc, kc, vc, ~m_c, 0.5)
    w = m_c.float()[:, None]
    torch.testing.assert_close(out, w * fg + (1 - w) * bg, rtol=0, atol=1e-6)
    # tokens in M_C carry the subject's features, the others the condition's
    torch.testing.assert_close(out[m_c], fg[m_c], rtol=0, atol=1e-6)
    torch.testing.assert_close(out[~m_c], bg[~m_c], rtol=0, atol=1e-6)
    # the condition's queries matter only outside M_C, the subject's only inside
    out2 = sagi((qs, ks, vs), (qc + 1, kc, vc), m_s, m_c, scale=0.5)
    assert torch.equal(out2[m_c], out[m_c]) and not torch.allclose(out2[~m_c], out[~m_c])
    out3 = sagi((qs + 1, ks, vs), (qc, kc, vc), m_s, m_c, scale=0.5)
    assert torch.equal(out3[~m_c], out[~m_c]) and not torch.allclose(out3[m_c], out[m_c])
    # the subject's keys outside M_S are never attended: changing their values changes nothing
    vs2 = vs.clone()
    vs2[~m_s] += 100
    assert torch.equal(sagi((qs, ks, vs2), (qc, kc, vc), m_s, m_c, 0.5), out)
    # and the condition's keys inside M_C likewise
    vc2 = vc.clone()
    vc2[m_c] += 100
    assert torch.equal(sagi((qs, ks, vs), (qc, kc, vc2), m_s, m_c, 0.5), out)


def test_salq_uses_target_queries():
    (qs, ks, vs), (qc, kc, vc), (qt, kt, vt) = _streams()
    m_s = torch.tensor([True, False, True, False])
    m_c = torch.tensor([True, True, False, False])
    out = salq(qt, (ks, vs), (kc, vc), m_s, m_c, scale=0.7)
    w = m_c.float()[:, None]
    want = w * _ref(qt, ks, vs, m_s, 0.7) + (1 - w) * _ref(qt, kc, vc, ~m_c, 0.7)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-6)
    assert not torch.allclose(salq(qt + 1, (ks, vs), (kc, vc), m_s, m_c, 0.7), out)
    assert not torch.allclose(out, mca_output(qs, qc, (ks, vs), (kc, vc), m_s, m_c, 0.7))


def _attention_case(schedule, step):
    torch.manual_seed(0)
    attn = Attention(query_dim=8, heads=2, dim_head=4).eval()
    hidden = torch.randn(3, 4, 8)  # subject, condition, target; 4 tokens = a 2x2 grid
    ctrl = Controller(schedule=schedule, sample_hw=(2, 2), step=step)
    ctrl.set_masks(
        torch.tensor([[True, False], [True, False]]), torch.tensor([[False, True], [False, False]])
    )
    inner = attn.processor
    plain = inner(attn, hidden)
    proc = MCASelfAttnProcessor(ctrl, "up", inner)
    return attn, hidden, ctrl, plain, proc(attn, hidden)


def _manual(attn, hidden, ctrl, use_target_queries):
    def split(x):
        return x.view(3, 4, 2, 4).transpose(1, 2)

    q, k, v = split(attn.to_q(hidden)), split(attn.to_k(hidden)), split(attn.to_v(hidden))
    m_s, m_c = ctrl.token_masks(4, "cpu")
    w = m_c.float()[:, None]
    q_fg, q_bg = (q[2], q[2]) if use_target_queries else (q[0], q[1])
    heads = []
    for h in range(2):
        fg = _ref(q_fg[h], k[0, h], v[0, h], m_s, attn.scale)
        bg = _ref(q_bg[h], k[1, h], v[1, h], ~m_c, attn.scale)
        heads.append(w * fg + (1 - w) * bg)
    return attn.to_out[0](torch.cat(heads, -1))


@pytest.mark.parametrize("step, target_queries", [(0, False), (1, True)])
def test_processor_controls_target_only(step, target_queries):
    attn, hidden, ctrl, plain, out = _attention_case(ControlSchedule(1, 2, salq_parts=("up",)), step)
    with torch.no_grad():
        torch.testing.assert_close(out[:2], plain[:2], rtol=0, atol=1e-5)  # sources: ordinary attention
        torch.testing.assert_close(out[2], _manual(attn, hidden, ctrl, target_queries), rtol=0, atol=1e-5)
        other = _manual(attn, hidden, ctrl, not target_queries)
        assert not torch.allclose(out[2], other, atol=1e-4)


def test_processor_plain_step_is_the_wrapped_processor():
    attn, hidden, ctrl, plain, out = _attention_case(ControlSchedule(1, 2), 2)
    assert torch.equal(out, plain)
