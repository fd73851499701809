"""The two tasks end to end on a tiny random model: the properties MCA-Ctrl must keep."""

import pytest
import torch

from edgediff.customize.errors import CustomizeError
from edgediff.customize.inversion import ddim_invert
from edgediff.customize.pipeline import CustomizeInputs, customize
from edgediff.customize.schedule import ControlSchedule, Task
from edgediff.models.conditioning import Conditioning, label_conditioning
from edgediff.models.sample import sample_model

from .tiny_canvas import loaded_canvas

STEPS = 8


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return loaded_canvas()


def _image(seed):
    return torch.randn(1, 16, 16, generator=torch.Generator().manual_seed(seed)).clamp(-1, 1)


def _cond(model, labels=(3, 5)):
    return label_conditioning(model, torch.tensor([labels]))


def _box(r0, r1, c0, c1):
    m = torch.zeros(16, 16, dtype=torch.bool)
    m[r0:r1, c0:c1] = True
    return m


def psnr(a, b):
    return float(10 * torch.log10(4 / ((a - b) ** 2).mean()))  # range [-1, 1]: peak-to-peak 2


@pytest.mark.parametrize("guidance", [None, 3.0])
def test_control_off_is_plain_sampling_bit_for_bit(model, guidance):
    inputs = CustomizeInputs(subject=_image(0), conditioning=_cond(model), guidance=guidance)
    off = customize(model, inputs, STEPS, seed=4, schedule=ControlSchedule.off())
    plain = sample_model(model, 1, STEPS, 4, conditioning=_cond(model), guidance_scale=guidance)[0]
    assert torch.equal(off.image, plain)
    on = customize(model, inputs, STEPS, seed=4)
    assert on.task is Task.GENERATE
    assert (on.image - plain).abs().max() > 1e-3  # the control does act


def test_inversion_is_deterministic_and_ends_at_the_image(model):
    x0 = _image(1)[None]
    a = ddim_invert(model.unet, model.scheduler_config, x0, STEPS, _cond(model))
    b = ddim_invert(model.unet, model.scheduler_config, x0, STEPS, _cond(model))
    assert len(a) == STEPS + 1 and torch.equal(a[-1], x0)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_subject_equal_condition_full_mask_reconstructs(model):
    subject, full = _image(2), torch.ones(16, 16, dtype=torch.bool)
    cond = Conditioning(_cond(model).values)  # no null rows: all three streams share the conditioning

    def run(refine):
        inputs = CustomizeInputs(subject, cond, full, subject, full)
        return customize(model, inputs, STEPS, schedule=ControlSchedule(STEPS, STEPS), invert_refine=refine)

    first, again = run(10), run(10)
    assert torch.equal(first.image, again.image)  # inversion + regeneration are deterministic
    value = psnr(first.image, subject)
    plain = psnr(run(0).image, subject)
    print(f"reconstruction PSNR {value:.1f} dB (refine 10), {plain:.1f} dB (plain inversion), {STEPS} steps")
    assert value > 30.0
    assert value > psnr(_image(3), subject) + 20  # far closer than an unrelated image


def test_editing_keeps_the_condition_outside_the_mask(model):
    subject, condition = _image(4), _image(5)
    m_c = _box(4, 12, 8, 16)
    inputs = CustomizeInputs(subject, _cond(model), _box(2, 10, 2, 10), condition, m_c, guidance=2.0)
    out = customize(model, inputs, STEPS).image
    assert torch.equal(out[:, ~m_c], condition[:, ~m_c])
    assert (out[:, m_c] - condition[:, m_c]).abs().max() > 1e-3


def test_generation_localizes_from_cross_attention(model):
    res = customize(model, CustomizeInputs(_image(6), _cond(model)), STEPS, seed=1)
    share = float(res.condition_mask.float().mean())
    assert 0.3 <= share < 1.0  # top 30 %, then dilated
    assert bool(res.subject_mask.all())  # no subject mask given: the whole subject image


def test_bad_inputs_one_line(model):
    subject, cond = _image(0), _cond(model)
    with pytest.raises(CustomizeError, match="--condition-mask needs --condition"):
        customize(model, CustomizeInputs(subject, cond, condition_mask=_box(0, 4, 0, 4)), STEPS)
    with pytest.raises(CustomizeError, match="subject editing needs --condition-mask"):
        customize(model, CustomizeInputs(subject, cond, condition=_image(1)), STEPS)
    with pytest.raises(CustomizeError, match="is 8x8 but its image is 16x16"):
        customize(
            model, CustomizeInputs(subject, cond, subject_mask=torch.ones(8, 8, dtype=torch.bool)), STEPS
        )
    with pytest.raises(CustomizeError, match="condition mask is empty"):
        empty = torch.zeros(16, 16, dtype=torch.bool)
        customize(model, CustomizeInputs(subject, cond, condition=_image(1), condition_mask=empty), STEPS)
    with pytest.raises(CustomizeError, match=r"subject image has shape \(3, 16, 16\)"):
        customize(model, CustomizeInputs(torch.zeros(3, 16, 16), cond), STEPS)


@pytest.mark.parametrize(
    "kind, spacing, alpha_one", [("epsilon", "leading", False), ("v_prediction", "trailing", True)]
)  # Stable Diffusion's DDIM choices; canvas32's
def test_refined_inversion_round_trips_through_the_sampler(model, kind, spacing, alpha_one):
    from edgediff.sampling import ddim_sample

    from ..models.tiny import SD_SCHEDULER

    config = dict(SD_SCHEDULER, prediction_type=kind, timestep_spacing=spacing, set_alpha_to_one=alpha_one)
    x0 = _image(7)[None]
    states = ddim_invert(model.unet, config, x0, STEPS, _cond(model), refine=10)
    back = ddim_sample(model.unet, config, states[0], STEPS, conditioning=_cond(model)).images
    assert psnr(back, x0) > 30.0
    states0 = ddim_invert(model.unet, config, x0, STEPS, _cond(model))
    assert not torch.equal(states0[0], states[0])  # the refinement does act


def test_a_localizer_plugs_in_and_sees_the_condition_image(model):
    seen = {}

    def box_localizer(maps, image):
        seen["maps"], seen["image"] = maps, image
        return _box(0, 8, 0, 8)

    res = customize(model, CustomizeInputs(_image(6), _cond(model)), STEPS, seed=1, localizer=box_localizer)
    assert torch.equal(res.condition_mask, _box(0, 8, 0, 8))
    assert seen["maps"].shape == (2, 16, 16)  # one map per label slot token
    plain = sample_model(model, 1, STEPS, 1, conditioning=_cond(model))[0]
    assert torch.equal(seen["image"], plain)  # the condition process is plain sampling
