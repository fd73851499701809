"""Relational losses and the memory pixel queue (docs/methods.md 6.10, 4.6, 1.6(vii))."""

import math

import pytest
import torch

from edgediff.distill.relation import (
    MemoryQueue,
    ProjectionHead,
    batch_relation_kl,
    feature_kl,
    pixel_embeddings,
    queue_relation_kl,
    relation_kl,
    sample_pixels,
)
from edgediff.errors import EdgediffError


def _feats(seed=0, shape=(3, 8, 4, 4)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g)


def test_pixel_embeddings_are_unit_rows():
    e = pixel_embeddings(_feats())
    assert e.shape == (3, 16, 8)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(3, 16))


@pytest.mark.parametrize("loss", [relation_kl, batch_relation_kl])
def test_relation_losses_zero_when_equal_and_gradient_otherwise(loss):
    t = _feats(0)
    assert loss(t, t.clone()).abs().item() < 1e-6
    s = _feats(1).requires_grad_(True)
    value = loss(t, s)
    value.backward()
    assert value.item() > 0
    assert s.grad.abs().sum().item() > 0


def test_teacher_side_gets_no_gradient():
    t = _feats(0).requires_grad_(True)
    s = _feats(1).requires_grad_(True)
    relation_kl(t, s).backward()
    assert t.grad is None


def test_relation_kl_sum_is_rows_times_mean():
    t, s = _feats(0), _feats(1)
    torch.testing.assert_close(
        relation_kl(t, s, reduction="sum"), relation_kl(t, s, reduction="mean") * 3 * 16
    )


def test_batch_relation_includes_within_sample_rows():
    """With a batch of one, IS_P2P's only pair is (b, b): it equals the mean within-sample KL."""
    t, s = _feats(0, (1, 8, 4, 4)), _feats(1, (1, 8, 4, 4))
    torch.testing.assert_close(batch_relation_kl(t, s), relation_kl(t, s, reduction="mean"))


def test_feature_kl_zero_only_at_temperature_one():
    v = torch.randn(4, 10)
    assert feature_kl(v, v, teacher_temperature=1.0).abs().item() < 1e-6
    assert feature_kl(v, v, teacher_temperature=0.9).item() > 0


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(EdgediffError, match="differ in shape"):
        relation_kl(_feats(0), _feats(0, (3, 8, 2, 2)))


def test_queue_fifo_and_wraparound():
    q = MemoryQueue(size=5, dim=2)
    rows = torch.eye(2).repeat(4, 1)  # 8 rows
    q.push(rows[:3] * torch.tensor([[1.0], [2.0], [3.0]]), timestep=10)
    assert int(q.ptr) == 3 and int(q.filled) == 3
    assert q.timesteps.tolist() == [10, 10, 10, -1, -1]
    fresh = torch.tensor([[0.6, 0.8], [0.8, 0.6], [-1.0, 0.0], [0.0, -1.0]])
    q.push(fresh, timestep=20)  # 4 rows: slots 3, 4, then wrap to 0, 1
    assert int(q.ptr) == 2 and int(q.filled) == 5
    assert q.timesteps.tolist() == [20, 20, 10, 20, 20]
    torch.testing.assert_close(q.bank[3], fresh[0])
    torch.testing.assert_close(q.bank[0], fresh[2])
    torch.testing.assert_close(q.bank[2], torch.tensor([1.0, 0.0]))  # oldest survivor, normalised


def test_queue_push_more_than_size_keeps_newest():
    q = MemoryQueue(size=3, dim=2)
    rows = torch.tensor([[1.0, 0], [0, 1.0], [-1.0, 0], [0, -1.0]])
    q.push(rows)
    assert {tuple(r) for r in q.bank.tolist()} == {tuple(r) for r in rows[1:].tolist()}


def test_queue_anchors_evenly_spaced_and_time_window():
    q = MemoryQueue(size=10, dim=3)
    assert q.anchor_index(5).tolist() == [0, 2, 4, 7, 9]
    q.push(torch.randn(4, 3), timestep=100)
    q.push(torch.randn(4, 3), timestep=900)
    idx = q.anchor_index(3, timestep=110, time_window=50)
    assert set(idx.tolist()) <= {0, 1, 2, 3}
    # too few entries in the window: fall back to the whole queue
    assert q.anchor_index(8, timestep=110, time_window=50).numel() == 8


def test_queue_relation_kl_zero_when_equal_gradient_otherwise():
    q = MemoryQueue(size=64, dim=8)
    t = torch.nn.functional.normalize(torch.randn(20, 8), dim=-1)
    a = q.anchors(16)
    assert queue_relation_kl(t, t.clone(), a).abs().item() < 1e-6
    s = torch.nn.functional.normalize(torch.randn(20, 8), dim=-1).requires_grad_(True)
    w = q.time_weights(q.anchor_index(16), timestep=5, scale=100.0)
    value = queue_relation_kl(t, s, a, anchor_weights=w)
    value.backward()
    assert value.item() > 0 and s.grad.abs().sum().item() > 0


def test_sample_pixels_correct_vs_released_reshape():
    feat = torch.zeros(2, 3, 2, 2)
    feat[:, 0] = 1.0  # every pixel's channel vector is (1, 0, 0)
    good = sample_pixels(feat, 8, torch.Generator().manual_seed(0))
    torch.testing.assert_close(good, torch.tensor([[1.0, 0.0, 0.0]]).expand(8, 3))
    bad = sample_pixels(feat, 8, torch.Generator().manual_seed(0), released_reshape=True)
    assert not torch.allclose(bad, good)


def test_projection_head_keeps_shape():
    head = ProjectionHead(8)
    assert head(_feats()).shape == (3, 8, 4, 4)


# ---------------------------------------------------------------- hand-computed formula pins


def _softmax(logits: list[float]) -> list[float]:
    m = max(logits)
    e = [math.exp(v - m) for v in logits]
    return [v / sum(e) for v in e]


def _kl(p_logits: list[float], q_logits: list[float]) -> float:
    """KL(softmax(p) ‖ softmax(q)) = Σ p (log p − log q), in plain Python."""
    p, q = _softmax(p_logits), _softmax(q_logits)
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q))


def _unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def _map(pixels: list[list[list[float]]]) -> torch.Tensor:
    """[B][HW][C] nested lists -> a [B, C, 1, HW] feature map."""
    return torch.tensor(pixels, dtype=torch.float64).permute(0, 2, 1).unsqueeze(2)


# teacher pixels (1,0), (0,1); student pixels (1,0), (1,0): student relation rows are uniform
T1 = [[[1.0, 0.0], [0.0, 1.0]]]
S1 = [[[1.0, 0.0], [1.0, 0.0]]]


def _entropy_sigmoid(z: float) -> float:
    a = 1 / (1 + math.exp(-z))
    return -(a * math.log(a) + (1 - a) * math.log(1 - a))


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_relation_kl_is_teacher_first_on_a_hand_case(tau):
    """Rows: teacher softmax(1/τ, 0) vs uniform student -> KL = log 2 − H(σ(1/τ)) per row, 2 rows."""
    expected = 2 * (math.log(2) - _entropy_sigmoid(1 / tau))
    value = relation_kl(_map(T1), _map(S1), tau=tau, reduction="sum")
    assert float(value) == pytest.approx(expected, rel=1e-9)
    reverse = 2 * _kl([0.0, 0.0], [1 / tau, 0.0])  # KL(student ‖ teacher): what a swap would give
    assert abs(expected - reverse) > 1e-3


def test_batch_relation_kl_pairs_every_sample_with_every_sample_teacher_first():
    """IS_P2P on B = 2: rows (b, d, i) over the pixels of d, mean of KL(P_T ‖ P_S) over B·B·HW rows."""
    t = [[[1.0, 0.0], [0.0, 1.0]], [[0.6, 0.8], [1.0, 1.0]]]
    s = [[[1.0, 0.0], [1.0, 0.2]], [[0.0, 1.0], [0.3, -1.0]]]
    tu = [[_unit(p) for p in b] for b in t]
    su = [[_unit(p) for p in b] for b in s]
    rows = []
    for b in range(2):
        for d in range(2):
            for i in range(2):
                lt = [_dot(tu[b][i], tu[d][j]) / 0.7 for j in range(2)]
                ls = [_dot(su[b][i], su[d][j]) / 0.7 for j in range(2)]
                rows.append(_kl(lt, ls))
    value = batch_relation_kl(_map(t), _map(s), tau=0.7)
    assert float(value) == pytest.approx(sum(rows) / len(rows), rel=1e-9)


@pytest.mark.parametrize("kd_temperature", [1.0, 2.0])
def test_queue_relation_kl_is_teacher_first_with_the_temperature_on_both_sides(kd_temperature):
    """M_P2P / MTRD: logits f·Aᵀ/τ, KL(softmax(ℓ_T/T) ‖ softmax(ℓ_S/T)), mean over pixels."""
    anchors = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]
    teacher = [[1.0, 0.0], [0.6, -0.8]]
    student = [[0.6, 0.8], [0.0, 1.0]]
    tau = 0.5
    expected = 0.0
    for ft, fs in zip(teacher, student):
        lt = [_dot(ft, a) / tau / kd_temperature for a in anchors]
        ls = [_dot(fs, a) / tau / kd_temperature for a in anchors]
        expected += _kl(lt, ls) / len(teacher)
    f64 = dict(dtype=torch.float64)
    value = queue_relation_kl(
        torch.tensor(teacher, **f64), torch.tensor(student, **f64), torch.tensor(anchors, **f64),
        tau=tau, kd_temperature=kd_temperature,
    )  # fmt: skip
    assert float(value) == pytest.approx(expected, rel=1e-9)


def test_queue_relation_anchor_weights_add_log_w_to_both_logits():
    """MTRD option (b): anchor weight w multiplies both softmaxes' numerators (adds log w)."""
    anchors, w = [[1.0, 0.0], [0.0, 1.0]], [1.0, 0.25]
    ft, fs = [1.0, 0.0], [0.6, 0.8]
    lt = [_dot(ft, a) + math.log(wi) for a, wi in zip(anchors, w)]
    ls = [_dot(fs, a) + math.log(wi) for a, wi in zip(anchors, w)]
    f64 = dict(dtype=torch.float64)
    value = queue_relation_kl(
        torch.tensor([ft], **f64), torch.tensor([fs], **f64), torch.tensor(anchors, **f64),
        tau=1.0, anchor_weights=torch.tensor(w, **f64),
    )  # fmt: skip
    assert float(value) == pytest.approx(_kl(lt, ls), rel=1e-9)


def test_cfd_temperature_divides_the_teacher_logits_only():
    """RCFD: KL(softmax(φ_T/τ_T) ‖ softmax(φ_S)); τ_T = 0.5, φ_T = (1, 0), φ_S = (0.5, 0)."""
    phi_t, phi_s = [1.0, 0.0], [0.5, 0.0]
    expected = _kl([2.0, 0.0], [0.5, 0.0])
    f64 = dict(dtype=torch.float64)
    value = feature_kl(torch.tensor([phi_t], **f64), torch.tensor([phi_s], **f64), teacher_temperature=0.5)
    assert float(value) == pytest.approx(expected, rel=1e-9)
    for wrong in (_kl([1.0, 0.0], [1.0, 0.0]), _kl([2.0, 0.0], [1.0, 0.0]), _kl([0.5, 0.0], [2.0, 0.0])):
        assert abs(wrong - expected) > 1e-3  # student side, both sides, swapped: all distinguishable
