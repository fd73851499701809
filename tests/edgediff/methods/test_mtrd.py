"""MTRD time weighting pinned on a hand case (edgediff/methods/mtrd.py, docs/methods.md 2.1).

Queue rows (unit vectors) with timesteps; the current step is t = 400. Option (b) weights an
anchor by `exp(−|t_anchor − t| / scale)` (rows never written, timestep −1, weigh 1) by adding
`log w` to the teacher and the student logits; option (a) keeps only anchors within the window.
"""

import math

import pytest
import torch

from edgediff.methods.mtrd import MTRDLoss

TEACHER = [[1.0, 0.0], [0.6, -0.8]]  # two pixels of a [1, 2, 1, 2] map
STUDENT = [[0.6, 0.8], [0.0, 1.0]]
TAU, WEIGHT = 0.5, 0.3


def _map(pixels):
    return torch.tensor([pixels], dtype=torch.float64).permute(0, 2, 1).unsqueeze(2)


def _kl(p_logits, q_logits):
    def soft(v):
        e = [math.exp(x) for x in v]
        return [x / sum(e) for x in e]

    p, q = soft(p_logits), soft(q_logits)
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q))


def _expected(anchors, log_w):
    total = 0.0
    for ft, fs in zip(TEACHER, STUDENT):
        lt = [(ft[0] * a[0] + ft[1] * a[1]) / TAU + lw for a, lw in zip(anchors, log_w)]
        ls = [(fs[0] * a[0] + fs[1] * a[1]) / TAU + lw for a, lw in zip(anchors, log_w)]
        total += _kl(lt, ls)
    return WEIGHT * total / len(TEACHER)


def _loss(time_mode, rows, steps, anchors, **kw):
    loss = MTRDLoss(
        2, queue_size=len(rows), enqueue=1, anchors=anchors, query=2, tau=TAU, weight=WEIGHT,
        time_mode=time_mode, **kw,
    )  # fmt: skip
    loss.queue.bank = torch.tensor(rows, dtype=torch.float64)
    loss.queue.timesteps = torch.tensor(steps)
    return float(loss(_map(TEACHER), _map(STUDENT), 400))


ROWS = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]


def test_time_weight_decays_with_the_timestep_distance():
    value = _loss("weight", ROWS, [450, 300, -1], anchors=3, time_scale=100.0)
    assert value == pytest.approx(_expected(ROWS, [-0.5, -1.0, 0.0]), rel=1e-9)
    for wrong in ([0.0, 0.0, 0.0], [0.5, 1.0, 0.0], [-1.0, -0.5, 0.0]):  # none, growing, swapped
        assert abs(_expected(ROWS, wrong) - value) > 1e-4
    plain = _loss("none", ROWS, [450, 300, -1], anchors=3)
    assert plain == pytest.approx(_expected(ROWS, [0, 0, 0]), rel=1e-9)


def test_time_window_keeps_only_the_anchors_near_the_current_step():
    value = _loss("window", ROWS, [100, 420, 450], anchors=2, time_window=60)
    assert value == pytest.approx(_expected(ROWS[1:], [0.0, 0.0]), rel=1e-9)
    unrestricted = _expected([ROWS[0], ROWS[2]], [0.0, 0.0])  # evenly spaced rows 0 and 2
    assert abs(unrestricted - value) > 1e-4
