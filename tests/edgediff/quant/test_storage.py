"""Stored weight bits: codes, binary residual, LoRA branches and FP layers at their stored width."""

import pytest
import torch
from torch import nn

from edgediff.quant import LayerQuant, LoRASpec, Recipe, ResidualSpec, quantize_
from edgediff.quant.storage import weight_storage


def _model(lora_mode: str, fp_dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("a", nn.Linear(8, 4))  # quantized: 4 rows of 8 weights
    model.add_module("b", nn.Conv2d(2, 3, 1))  # stays FP: 6 weights
    rule = LayerQuant(4, a_bits=8, residual=ResidualSpec(0.25), lora=LoRASpec(rank=2, mode=lora_mode))
    quantize_(model, Recipe(rules=(("a", rule), ("b", None))))
    model.a.residual.mask[1] = True  # one residual channel
    model.b.to(fp_dtype)
    return model


@pytest.mark.parametrize(
    ("lora_mode", "fp_dtype", "bits"),
    [
        # codes 32·4 + signs 8·1 + α 1·32 + LoRA (2·8 + 4·2)·32 + FP conv 6·32
        ("additive", torch.float32, 128 + 8 + 32 + 768 + 192),
        # merged LoRA lives inside the codes; the FP conv stored as fp16
        ("merged", torch.float16, 128 + 8 + 32 + 6 * 16),
    ],
)
def test_weight_storage_counts_every_layer_and_branch(lora_mode, fp_dtype, bits):
    storage = weight_storage(_model(lora_mode, fp_dtype))
    assert storage.weights == 32 + 6
    assert storage.bits == bits
    assert storage.mean_bits == pytest.approx(bits / 38)


def test_per_channel_bits_are_weighted_by_row_size():
    model = nn.Sequential()
    model.add_module("a", nn.Linear(5, 3))
    quantize_(model, Recipe(rules=(("a", LayerQuant((2, 3, 4), a_bits=None)),)))
    assert weight_storage(model).bits == 5 * (2 + 3 + 4)
    assert weight_storage(model).mean_bits == pytest.approx(3.0)
