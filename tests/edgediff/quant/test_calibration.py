"""Calibration data from FP DDIM trajectories and range initialisation."""

import pytest
import torch

from edgediff.errors import EdgediffError
from edgediff.quant import (
    CalibrationData,
    LayerQuant,
    Recipe,
    calibrate,
    collect_calibration,
    default_recipe,
    quant_layers,
    quantize_,
    set_step,
)
from edgediff.reference.model import SCHEDULER_CONFIG, build_unet
from edgediff.sampling import ddim_sample, seeded_noise

STEPS = 3


@pytest.fixture(scope="module")
def calib():
    return collect_calibration(build_unet().eval(), SCHEDULER_CONFIG, num_samples=4, num_steps=STEPS, seed=7)


def test_collect_keeps_the_input_of_every_step(calib):
    assert calib.x.shape == (4 * STEPS, 1, 16, 16) and calib.num_steps == STEPS
    noise = seeded_noise(4, (1, 16, 16), 7)
    ref = ddim_sample(build_unet().eval(), SCHEDULER_CONFIG, noise, STEPS, keep_trajectory=True)
    assert torch.equal(calib.x[calib.step == 0], noise)
    for i in range(1, STEPS):
        assert torch.equal(calib.x[calib.step == i], ref.trajectory[i - 1])  # latent before step i
    for i, t in enumerate(ref.timesteps):
        assert (calib.t[calib.step == i] == t).all()
    again = collect_calibration(build_unet().eval(), SCHEDULER_CONFIG, num_samples=4, num_steps=STEPS, seed=7)
    assert torch.equal(again.x, calib.x)


def test_nan_calibration_data_is_an_error():
    x = torch.randn(2, 1, 16, 16)
    x[1, 0, 3, 3] = float("nan")
    with pytest.raises(EdgediffError, match="NaN/Inf"):
        CalibrationData(x=x, t=torch.tensor([1, 2]), step=torch.tensor([0, 0]), num_steps=1)
    broken = build_unet().eval()
    with torch.no_grad():
        broken.conv_out.bias.fill_(float("inf"))
    with pytest.raises(EdgediffError, match="NaN/Inf"):
        collect_calibration(broken, SCHEDULER_CONFIG, num_samples=1, num_steps=2)


def test_non_finite_activations_during_calibration_are_an_error(calib):
    model = build_unet()
    quantize_(model, default_recipe("W8A8", model, w_range="minmax"))
    with torch.no_grad():
        quant_layers(model)["conv_in"].bias.fill_(float("nan"))
    with pytest.raises(EdgediffError, match="non-finite activations"):
        calibrate(model, calib)


def _inputs_of(model, name, data):
    seen = []
    h = model.get_submodule(name).register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
    with torch.no_grad():
        for s in range(data.num_steps):
            k = data.step == s
            model(data.x[k], data.t[k])
    h.remove()
    return seen


def test_static_uses_all_steps_and_per_step_one_range_per_step(calib):
    layer_name = "down_blocks.1.resnets.0.conv1"
    fp = build_unet().eval()
    per_step_inputs = _inputs_of(fp, layer_name, calib)
    recipe = Recipe(
        rules=(
            (layer_name, LayerQuant(4, a_bits=8, a_mode="per_step", w_range="minmax", a_range="minmax")),
            ("down_blocks.1.resnets.0.conv2", LayerQuant(4, a_bits=8, w_range="minmax", a_range="minmax")),
        )
    )
    model = build_unet().eval()
    quantize_(model, recipe, num_steps=STEPS)
    calibrate(model, calib, batch_size=3)
    aq = quant_layers(model)[layer_name].act_quant
    scales = aq.scale.detach()
    for i, x in enumerate(per_step_inputs):
        span = float(x.max().clamp(min=0) - x.min().clamp(max=0))
        assert float(scales[i]) == pytest.approx(span / 255, rel=1e-5)
    assert len(set(scales.tolist())) == STEPS  # one range per step
    static = quant_layers(model)["down_blocks.1.resnets.0.conv2"].act_quant
    all_x = torch.cat(_inputs_of(fp, "down_blocks.1.resnets.0.conv2", calib))
    assert float(static.scale.detach()[0]) == pytest.approx(
        float(all_x.max() - all_x.min().clamp(max=0)) / 255, rel=1e-5
    )
    set_step(model, 2)
    with torch.no_grad():
        y2 = model(calib.x[:2], calib.t[:2]).sample
        set_step(model, 0)
        y0 = model(calib.x[:2], calib.t[:2]).sample
    assert not torch.equal(y0, y2)  # different steps -> different outputs


def test_smoothing_balances_activation_and_weight_ranges(calib):
    name = "down_blocks.1.attentions.0.to_q"
    fp = build_unet().eval()
    x = torch.cat(_inputs_of(fp, name, calib)).reshape(-1, 64)
    model = build_unet().eval()
    quantize_(
        model,
        Recipe(rules=((name, LayerQuant(4, a_bits=8, smooth=True, w_range="minmax", a_range="minmax")),)),
    )
    calibrate(model, calib)
    layer = quant_layers(model)[name]
    delta = layer.smooth.delta
    x_max = (x / delta).abs().amax(0)
    w_max = (layer.weight * delta).abs().amax(0)
    assert torch.allclose(x_max, w_max, rtol=1e-4)


def test_calibrate_errors(calib):
    with pytest.raises(EdgediffError, match="run quantize_"):
        calibrate(build_unet(), calib)
    model = build_unet()
    quantize_(model, default_recipe("W4A8", model, a_mode="per_step"), num_steps=STEPS + 1)
    with pytest.raises(EdgediffError, match=f"collect it with num_steps={STEPS + 1}"):
        calibrate(model, calib)
