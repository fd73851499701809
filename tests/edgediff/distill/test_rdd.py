"""RDD losses on the PD target (docs/methods.md 4.2, 4.6): zero at student == teacher, frozen networks."""

import dataclasses

import pytest
import torch
from torch import nn

from edgediff.distill.pd import PDBatch, pd_batch, stage_grid
from edgediff.distill.rdd import FrozenFeatures, RDDConfig, RDDLoss
from edgediff.distill.run import freeze
from edgediff.errors import EdgediffError
from edgediff.reference.classifier import TinyCNN, load_classifier
from edgediff.reference.model import BUNDLED_CLASSIFIER, SCHEDULER_CONFIG
from tests.edgediff.distill.test_run import tiny_unet16


def _classifier(seed: int = 0) -> TinyCNN:
    torch.manual_seed(seed)
    return TinyCNN().eval()


def _images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _batch(x_tilde: torch.Tensor, x_hat: torch.Tensor) -> PDBatch:
    zeros = torch.zeros_like(x_hat)
    t = torch.zeros(x_hat.shape[0], dtype=torch.long)
    return PDBatch(zeros, t, t.float(), x_hat, zeros, x_tilde, zeros)


def test_feature_maps_have_the_documented_shapes_and_classifier_is_unchanged():
    clf = _classifier()
    feats = FrozenFeatures(clf)
    x = _images()
    fmap, vec = feats(x)
    assert fmap.shape == (4, 64, 4, 4) and vec.shape == (4, 128)
    torch.testing.assert_close(vec, clf.features(x))
    assert not any(p.requires_grad for p in clf.parameters())
    feats.train()
    assert not clf.training


def test_all_rdd_terms_are_zero_when_student_equals_teacher():
    """With τ_T = 1 and an identity projection head every term vanishes at x̂ = x̃."""
    loss = RDDLoss(load_classifier(BUNDLED_CLASSIFIER), RDDConfig(teacher_temperature=1.0, weight_pd=1.0))
    loss.head = nn.Identity()
    x = _images()
    total, parts = loss(_batch(x, x.clone()))
    assert set(parts) == {"cfd", "is_p2p", "m_p2p", "pd"}
    assert abs(float(total)) < 1e-6
    assert all(abs(v) < 1e-6 for v in parts.values())
    # and they are positive when the student differs
    total2, parts2 = loss(_batch(x, _images(seed=1)))
    assert parts2["cfd"] > 1e-3 and parts2["is_p2p"] > 1e-3 and parts2["m_p2p"] > 1e-3


def test_queue_is_filled_with_teacher_pixels_after_each_step():
    cfg = RDDConfig(queue_size=32, anchors=8, enqueue=12)
    loss = RDDLoss(_classifier(), cfg)
    before = loss.queue.bank.clone()
    loss(_batch(_images(), _images(seed=1)), torch.Generator().manual_seed(0))
    assert int(loss.queue.ptr) == 12 and int(loss.queue.filled) == 12
    assert not torch.equal(loss.queue.bank[:12], before[:12])
    torch.testing.assert_close(loss.queue.bank[12:], before[12:])


@pytest.mark.parametrize("released", [False, True])
def test_released_enqueue_reshape_flag_changes_what_is_enqueued(released):
    x_t, x_s = _images(), _images(seed=1)
    banks = []
    for flag in (False, released):
        loss = RDDLoss(_classifier(), RDDConfig(queue_size=16, enqueue=16, released_enqueue_reshape=flag))
        loss(_batch(x_t, x_s), torch.Generator().manual_seed(0))
        banks.append(loss.queue.bank.clone())
    assert torch.equal(banks[0], banks[1]) == (not released)


def test_no_gradient_reaches_teacher_or_classifier_but_student_and_head_learn():
    teacher = freeze(tiny_unet16(0))
    student = tiny_unet16(0).train()
    clf = _classifier()
    loss = RDDLoss(clf, RDDConfig(queue_size=64, anchors=16, enqueue=8, weight_pd=0.5)).train()
    grid = stage_grid(SCHEDULER_CONFIG, 2)
    x0 = _images()
    batch = pd_batch(teacher, student, x0, torch.randn_like(x0), torch.tensor([0, 1, 0, 1]), grid)
    total, _ = loss(batch)
    total.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for p in clf.parameters())
    assert not teacher.training and not clf.training
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is not None for p in loss.head.parameters())


def test_config_round_trips_to_a_dict():
    cfg = RDDConfig(weight_pd=0.3)
    assert RDDConfig(**cfg.to_dict()) == cfg
    assert dataclasses.asdict(cfg)["queue_size"] == 4096


def test_total_is_the_weighted_sum_of_the_terms_and_zero_weights_are_not_computed():
    x, y = _images(), _images(seed=1)
    full = RDDLoss(_classifier(), RDDConfig(weight_pd=1.0), seed=0)
    _, parts = full(_batch(x, y))
    cfg = RDDConfig(weight_cfd=0.5, weight_is=2.0, weight_queue=0.25, weight_pd=3.0)
    total, same = RDDLoss(_classifier(), cfg, seed=0)(_batch(x, y))
    assert same == pytest.approx(parts)
    expected = 0.5 * parts["cfd"] + 2.0 * parts["is_p2p"] + 0.25 * parts["m_p2p"] + 3.0 * parts["pd"]
    assert float(total.detach()) == pytest.approx(expected, rel=1e-6)
    rcfd_total, rcfd = RDDLoss(_classifier(), RDDConfig(weight_is=0.0, weight_queue=0.0))(_batch(x, y))
    assert set(rcfd) == {"cfd"} and float(rcfd_total.detach()) == pytest.approx(parts["cfd"], rel=1e-6)


def test_weights_must_be_non_negative_and_not_all_zero():
    with pytest.raises(EdgediffError, match=">= 0"):
        RDDConfig(weight_is=-1.0)
    with pytest.raises(EdgediffError, match="at least one"):
        RDDConfig(weight_cfd=0.0, weight_is=0.0, weight_queue=0.0)
