"""Relational losses and the memory pixel queue (docs/methods.md 6.10, 4.6, 1.6(vii))."""

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
