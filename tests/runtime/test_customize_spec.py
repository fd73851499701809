"""Torch-free pieces of on-device customization: the inversion step, `customize.json`, masks, CLI refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgediff_runtime.cli import main
from edgediff_runtime.customize_images import read_mask, resize_mask
from edgediff_runtime.customize_spec import CustomizeSpec
from edgediff_runtime.errors import RuntimeStageError
from edgediff_runtime.manifest import SamplerSpec
from edgediff_runtime.samplers import make_sampler


def _sampler(prediction: str = "epsilon", steps: int = 4):
    spec = SamplerSpec(
        kind="ddim", prediction_type=prediction, clip_sample=False, timestep_spacing="trailing"
    )
    return make_sampler(spec, steps)


def test_invert_step_hand_computed_last_step():
    """Last step: it lands on alpha-bar 1, so x0 = sample and z_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps."""
    s = _sampler()
    i = s.num_steps - 1
    a_t = float(s.alphas_cumprod[int(s.timesteps[i])])
    z = np.array([[[[0.4, -0.2]]]], dtype=np.float32)
    eps = np.array([[[[1.0, 0.5]]]], dtype=np.float32)
    want = np.sqrt(a_t) * np.array([0.4, -0.2]) + np.sqrt(1 - a_t) * np.array([1.0, 0.5])
    got = s.invert_step(eps, i, z, z)
    np.testing.assert_allclose(got.reshape(-1), want, rtol=1e-6)


def test_invert_step_is_undone_by_the_sampler_step():
    """With the same noise prediction, step(invert(z)) = z at every step (epsilon, no clipping)."""
    s = _sampler()
    rng = np.random.default_rng(0)
    z_prev = rng.standard_normal((1, 1, 3, 3)).astype(np.float32)
    out = rng.standard_normal((1, 1, 3, 3)).astype(np.float32)
    for i in range(s.num_steps):
        z_t = s.invert_step(out, i, z_prev, z_prev)
        assert np.abs(z_t - z_prev).max() > 1e-3
        np.testing.assert_allclose(s.step(out, i, z_t), z_prev, rtol=0, atol=2e-5)


def test_invert_step_turns_v_into_eps_at_the_model_input():
    """v-prediction: eps = sqrt(a_t) v + sqrt(1 - a_t) x with x the model's input, not the sample."""
    s_v, s_eps = _sampler("v_prediction"), _sampler()
    rng = np.random.default_rng(1)
    v, x_in, z = (rng.standard_normal((1, 1, 2, 2)).astype(np.float32) for _ in range(3))
    i = 1
    a_t = s_v.alphas_cumprod[int(s_v.timesteps[i])]
    eps = np.sqrt(a_t) * v + np.sqrt(1 - a_t) * x_in
    np.testing.assert_allclose(s_v.invert_step(v, i, x_in, z), s_eps.invert_step(eps, i, x_in, z), atol=1e-6)


def _spec(**kw) -> CustomizeSpec:
    base = dict(
        task="edit",
        steps=2,
        layers=["a", "b"],
        parts=["down", "up"],
        modes=[[1, 1], [0, 2]],
        sagi_end=1,
        salq_end=2,
        sagi_parts=["down", "mid", "up"],
        salq_parts=["up"],
    )
    return CustomizeSpec(**{**base, **kw})


def test_spec_round_trip_and_description():
    spec = _spec()
    back = CustomizeSpec.from_dict(json.loads(spec.to_json()))
    assert back == spec
    assert "SAGI steps 0-0 in down/mid/up; SALQ steps 1-1 in up" in spec.describe()


@pytest.mark.parametrize(
    "change, words",
    [
        (dict(modes=[[1, 1]]), "1 rows for 2 steps"),
        (dict(modes=[[1, 3], [0, 0]]), "mode row 0"),
        (dict(modes=[[1], [0]]), "mode row 0"),
        (dict(task="generate"), "only 'edit'"),
        (dict(blend="mix"), "blend"),
        (dict(parts=["down"]), "2 layers but 1 parts"),
    ],
)
def test_spec_refuses_bad_fields(change, words):
    with pytest.raises(RuntimeStageError, match=words):
        CustomizeSpec.from_dict(json.loads(_spec(**change).to_json()))


def test_spec_refuses_unknown_fields():
    data = json.loads(_spec().to_json()) | {"extra": 1}
    with pytest.raises(RuntimeStageError, match="unknown field 'extra'"):
        CustomizeSpec.from_dict(data)


def test_resize_mask_hand_cases():
    m = np.zeros((4, 4), dtype=bool)
    m[3, 0] = True  # one pixel survives shrinking (any pixel under the cell)
    np.testing.assert_array_equal(resize_mask(m, (2, 2)), [[False, False], [True, False]])
    small = np.array([[True, False], [False, False]])
    np.testing.assert_array_equal(resize_mask(small, (4, 4))[:2, :2], np.ones((2, 2), bool))
    assert resize_mask(small, (4, 4)).sum() == 4
    m3 = np.zeros((3, 3), dtype=bool)
    m3[1, 1] = True  # overlapping windows of 3 -> 2: the centre is under all four cells
    np.testing.assert_array_equal(resize_mask(m3, (2, 2)), np.ones((2, 2), bool))


def test_read_mask_refuses_wrong_size_and_empty(tmp_path):
    np.save(tmp_path / "small.npy", np.ones((3, 3)))
    np.save(tmp_path / "empty.npy", np.zeros((4, 4)))
    with pytest.raises(RuntimeStageError, match="is 3x3 but its image is 4x4"):
        read_mask(tmp_path / "small.npy", (4, 4), (4, 4), "--condition-mask")
    with pytest.raises(RuntimeStageError, match="empty"):
        read_mask(tmp_path / "empty.npy", (4, 4), (4, 4), "--condition-mask")


def test_customize_refuses_a_plain_bundle(tiny_bundle, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((1, 8, 8), np.float32))
    code = main(
        [
            "customize",
            str(tiny_bundle),
            "--subject",
            str(tmp_path / "x.npy"),
            "--condition",
            str(tmp_path / "x.npy"),
            "--condition-mask",
            str(tmp_path / "x.npy"),
            "--out",
            str(tmp_path / "out.png"),
        ]
    )
    assert code == 2
    assert "no customization section" in capsys.readouterr().err
    assert not (tmp_path / "out.png").exists()
