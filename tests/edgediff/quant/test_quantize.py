"""quantize_ on real diffusers architectures, plus its errors and helpers."""

import pytest
import torch
from diffusers import UNet2DModel
from diffusers.models.lora import LoRACompatibleConv, LoRACompatibleLinear
from torch import nn

from edgediff.errors import EdgediffError
from edgediff.quant import (
    CalibrationData,
    LayerQuant,
    QuantConv2d,
    QuantLinear,
    Recipe,
    calibrate,
    default_recipe,
    quant_disabled,
    quant_layers,
    quantize_,
    set_step,
)
from edgediff.reference.model import build_unet

from .models import CIFAR10_CONFIG, calib_for, cond_unet, dit, latte


def _rel_err(a, b):
    return float((a - b).norm() / b.norm())


def test_quantize_ddpm_cifar10_architecture():
    torch.manual_seed(0)
    model = UNet2DModel(**CIFAR10_CONFIG).eval()
    assert 35.6e6 < sum(p.numel() for p in model.parameters()) < 35.8e6
    recipe = default_recipe("W4A8", model, w_range="minmax", a_range="minmax")
    report = quantize_(model, recipe)
    n_layers = sum(isinstance(m, (QuantLinear, QuantConv2d)) for m in model.modules())
    assert n_layers == len(report.quantized) == 113 and not report.kept_fp
    assert report.quantized["down_blocks.1.attentions.0.to_q"] == "W4A8 static"
    assert report.quantized["conv_in"] == "W8A8 static"
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([500])
    calibrate(
        model, CalibrationData(x=x, t=t, step=torch.zeros(1, dtype=torch.long), num_steps=1), batch_size=1
    )
    with torch.no_grad():
        y = model(x, t).sample
    assert y.shape == (1, 3, 32, 32) and torch.isfinite(y).all()


@pytest.mark.parametrize("kind,build", [("cond", cond_unet), ("dit", dit), ("latte", latte)])
def test_quantize_conditional_transformer_and_video_models(kind, build):
    model = build()
    data = calib_for(kind, n=2, num_steps=2)
    kwargs = {k: v for k, v in data.cond.items()}
    with torch.no_grad():
        ref = model(data.x, data.t, **kwargs).sample
    recipe = default_recipe("W8A8", model, a_mode="per_step", w_range="minmax", a_range="minmax")
    report = quantize_(model, recipe, num_steps=2)
    assert len(report.quantized) == len(quant_layers(model)) > 10
    calibrate(model, data)
    set_step(model, 1)
    with torch.no_grad():
        y = model(data.x, data.t, **kwargs).sample
        with quant_disabled(model):
            y_fp = model(data.x, data.t, **kwargs).sample
    assert torch.allclose(y_fp, ref, atol=1e-5)
    assert 0 < _rel_err(y, ref) < 0.2


def test_quantize_errors():
    model = build_unet()
    with pytest.raises(EdgediffError, match="pass num_steps="):
        quantize_(model, default_recipe("W4A8", model, a_mode="per_step"))
    assert not quant_layers(model)  # nothing swapped before the error
    with pytest.raises(EdgediffError, match="matches no module of UNet2DModel"):
        quantize_(model, Recipe(rules=(("nope", LayerQuant(4)),)))
    quantize_(model, default_recipe("W4A16", model))
    with pytest.raises(EdgediffError, match="already quantized"):
        quantize_(model, default_recipe("W4A16", model))


def test_fp_rules_and_report():
    model = build_unet()
    recipe = Recipe(rules=(("*attentions*", None), ("*", LayerQuant(4, a_bits=None))))
    report = quantize_(model, recipe)
    assert report.kept_fp and all("attentions" in n for n in report.kept_fp)
    assert isinstance(model.get_submodule(report.kept_fp[0]), nn.Linear)
    assert report.mean_weight_bits == 4.0
    assert "layers quantized" in report.summary()


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_lora_compatible_variants_are_swapped():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = LoRACompatibleConv(2, 3, 3, padding=1)
            self.lin = LoRACompatibleLinear(4, 4)

        def forward(self, x, t=None):
            return self.lin(self.conv(x).mean((1, 2)))

    net = Net()
    quantize_(net, Recipe(rules=(("*", LayerQuant(4, a_bits=None)),)))
    assert isinstance(net.conv, QuantConv2d) and isinstance(net.lin, QuantLinear)
    assert net(torch.randn(1, 2, 4, 4)).shape == (1, 4)


def test_quant_disabled_restores_flags():
    model = build_unet()
    quantize_(model, default_recipe("W4A8", model))
    layer = quant_layers(model)["conv_in"]
    layer.act_quant.enabled = False
    with quant_disabled(model):
        assert not layer.weight_quant.enabled
    assert layer.weight_quant.enabled and not layer.act_quant.enabled
