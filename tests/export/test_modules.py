"""`ExportQuantLayer`: the additive LoRA is exported as factors and computes what ΔW computes."""

import pytest
import torch
from torch import nn

from edgediff.quant import LayerQuant, LoRASpec, QuantConv2d, QuantLinear
from edgediff_export.modules import ExportQuantLayer, StepInput


def _additive(w_bits: int, rank: int) -> LayerQuant:
    return LayerQuant(w_bits, a_bits=None, lora=LoRASpec(rank, "additive"))


def _with_lora(layer, seed=0):
    """Initialise the weight range and give the zero-initialised LoRA `B` non-zero values."""
    layer.init_weight_range()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.lora.B.copy_(torch.randn(layer.lora.B.shape, generator=g) * 0.05)
    return layer


def _export(layer):
    return ExportQuantLayer(layer.fold(), "ort", StepInput()).eval()


def _assert_exports_as(layer, x, form: str) -> None:
    """The export stores the LoRA in `form` and computes the quantized layer's output (dense ΔW)."""
    exported = _export(layer)
    assert exported.lora_form == form
    assert (exported.lora_delta is None) == (form == "factored")
    with torch.no_grad():
        assert torch.allclose(exported(x), layer(x), atol=1e-5)


CONV_CASES = {
    "3x3-pad1": dict(kernel_size=3, padding=1),
    "3x3-stride2": dict(kernel_size=3, stride=2, padding=1),
    "3x3-dilation2": dict(kernel_size=3, padding=2, dilation=2),
    "3x3-valid": dict(kernel_size=3, padding=0),
    "1x1": dict(kernel_size=1),
    "1x1-stride2": dict(kernel_size=1, stride=2),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_factored_conv_lora_equals_dense_delta(case):
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 24, **CONV_CASES[case])
    layer = _with_lora(QuantConv2d.from_float(conv, _additive(2, 2)))
    _assert_exports_as(layer, torch.randn(2, 16, 9, 9), "factored")


def test_factored_linear_lora_equals_dense_delta():
    torch.manual_seed(0)
    layer = _with_lora(QuantLinear.from_float(nn.Linear(32, 20), _additive(2, 3)))
    _assert_exports_as(layer, torch.randn(3, 5, 32), "factored")


def test_factors_are_stored_instead_of_delta_when_smaller():
    """A 3x3 conv 64->64 at rank 4: 9·4·128 factor floats + 4·81 shift floats, not 64·64·9."""
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 64, 3, padding=1)
    layer = _with_lora(QuantConv2d.from_float(conv, _additive(2, 4)))
    exported = _export(layer)
    stored = sum(b.numel() for n, b in exported.named_buffers() if n.startswith("lora_"))
    assert stored == 9 * 4 * 128 + 4 * 9 * 9
    assert stored * 7 < 64 * 64 * 9


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.Conv2d(4, 4, 3, padding=1, groups=2),  # grouped: factors not supported
        lambda: nn.Conv2d(4, 3, 3, padding=1),  # rank 2 factors are larger than ΔW here
    ],
)
def test_dense_delta_is_kept_when_factors_do_not_apply(make):
    torch.manual_seed(0)
    layer = _with_lora(QuantConv2d.from_float(make(), _additive(4, 2)))
    _assert_exports_as(layer, torch.randn(2, 4, 6, 6), "dense")


def test_layer_without_lora_has_no_lora_buffers():
    torch.manual_seed(0)
    layer = QuantLinear.from_float(nn.Linear(8, 8), LayerQuant(4, a_bits=None))
    layer.init_weight_range()
    exported = _export(layer)
    assert exported.lora_form is None
    assert not any(n.startswith("lora_") for n, _ in exported.named_buffers())  # None buffers are skipped
