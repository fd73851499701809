import math

import numpy as np
import torch

from edgediff.reference.metrics import class_entropy, frechet_distance, psnr


def test_frechet_distance_zero_for_same_set_and_grows_with_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 8))
    assert abs(frechet_distance(a, a)) < 1e-6
    near = frechet_distance(a, a + 0.1)
    far = frechet_distance(a, a + 1.0)
    assert 0.0 < near < far
    assert math.isclose(far, 8.0, rel_tol=1e-6)  # ||mu shift||^2 = 8 * 1.0^2, same covariance


def test_psnr_and_class_entropy():
    x = torch.zeros(4, 1, 2, 2)
    assert psnr(x, x) == math.inf
    assert math.isclose(psnr(x, x + 0.2), 10 * math.log10(4 / 0.04), rel_tol=1e-6)
    uniform = np.eye(10)[np.arange(100) % 10]
    collapsed = np.eye(10)[np.zeros(100, dtype=int)]
    assert math.isclose(class_entropy(uniform), math.log(10), rel_tol=1e-9)
    assert class_entropy(collapsed) == 0.0
