"""TRD formula pins (edgediff/methods/trd.py): window smoothing, cadence, weight and normalisation.

Hand case: teacher pixels (1,0), (0,1); student pixels (1,0), (1,0). With τ = 1 every teacher
relation row is softmax(1, 0), every student row uniform, so the within-sample relation KL is
`2·(log 2 − H(σ(1)))` (2 rows). The FP features of the window are built to average to the
teacher map while no single one of them equals it.
"""

import math

import pytest
import torch

from edgediff.methods.trd import TRDLoss

A = 1 / (1 + math.exp(-1))  # σ(1)
KL_HAND = 2 * (math.log(2) + A * math.log(A) + (1 - A) * math.log(1 - A))


def _map(pixels):
    return torch.tensor([pixels], dtype=torch.float64).permute(0, 2, 1).unsqueeze(2)


TEACHER = _map([[1.0, 0.0], [0.0, 1.0]])
STUDENT = _map([[1.0, 0.0], [1.0, 0.0]])
# window members: teacher + d_k with Σ d_k = 0 (so the mean is the teacher map)
OFFSETS = [_map([[0.0, 0.9], [0.8, 0.0]]), _map([[0.0, -0.3], [-1.1, 0.0]]), _map([[0.0, -0.6], [0.3, 0.0]])]
X = torch.zeros(1, 1, 2, 2)  # x.numel() = 4, the normalisation of the sum-reduced KL
T = torch.zeros(1, dtype=torch.long)


@pytest.mark.parametrize("window", [2, 3])
def test_trd_is_weight_times_kl_of_the_window_mean_over_output_elements(window):
    trd = TRDLoss(window=window, tau=1.0, weight=3.0)
    offs = OFFSETS[:window] if window == 3 else [OFFSETS[0], -OFFSETS[0]]
    values = [trd(k, X, T, TEACHER + d, STUDENT) for k, d in enumerate(offs)]
    assert values[:-1] == [None] * (window - 1)  # evaluated once per window
    assert float(values[-1]) == pytest.approx(3.0 * KL_HAND / X.numel(), rel=1e-9)
    last_only = TRDLoss(window=1, tau=1.0, weight=3.0)(0, X, T, TEACHER + offs[-1], STUDENT)
    assert abs(float(last_only) - float(values[-1])) > 1e-3  # the smoothing matters in this case


def test_trd_cadence_is_every_window_steps_of_a_trajectory():
    trd = TRDLoss(window=2)
    out = [trd(k, X, T, TEACHER, STUDENT) is not None for k in range(6)]
    assert out == [False, True, False, True, False, True]


def test_trd_window_mode_averages_the_recomputed_quantized_features():
    """Option (a): the student side is the mean of the window's quantized features too."""
    s0 = (STUDENT + OFFSETS[0]).requires_grad_(True)
    s1 = (STUDENT - OFFSETS[0]).requires_grad_(True)
    trd = TRDLoss(window=2, tau=1.0, weight=1.0, mode="window")
    assert trd(0, X, T, TEACHER, s0, recompute=lambda *_: s0) is None
    value = trd(1, X, T, TEACHER, s1, recompute=lambda *_: s0)
    assert float(value.detach()) == pytest.approx(KL_HAND / X.numel(), rel=1e-9)
    value.backward()
    assert s0.grad is not None  # the earlier step's quantized feature is in the graph
    target = TRDLoss(window=2, tau=1.0, weight=1.0, mode="target")
    target(0, X, T, TEACHER, s0)
    assert abs(float(target(1, X, T, TEACHER, s1).detach()) - float(value.detach())) > 1e-3
