"""storage_bits on hand-computed models: integer weights (per-channel widths), residual signs and
α, float layers at their stored width, additive-LoRA branches, metadata, and the weight-only view
that the bundle manifest records."""

import pytest
import torch
from torch import nn

from edgediff.quant import LayerQuant, LoRASpec, Recipe, ResidualSpec, quantize_, storage_bits


class Three(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 3)  # W(2,3,4) per channel, δ, 1 residual channel, additive rank-1 LoRA
        self.b = nn.Conv2d(2, 2, 1)  # kept in floating point (an "FP island")
        self.c = nn.Linear(3, 2)  # W8, nothing else


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = Three()
    a = LayerQuant(
        w_bits=(2, 3, 4),
        a_bits=None,
        smooth=True,
        residual=ResidualSpec(fraction=1 / 3),
        lora=LoRASpec(rank=1, mode="additive"),
    )
    quantize_(model, Recipe(rules=(("a", a), ("b", None), ("c", LayerQuant(w_bits=8, a_bits=None)))))
    model.a.init_residual()  # calibration does this: picks round(3 / 3) = 1 channel
    assert int(model.a.residual.mask.sum()) == 1
    return model


def test_storage_counts_every_part_at_its_stored_width():
    r = storage_bits(_model())
    # a: 4 weights per channel at 2+3+4 bits = 36; c: 6 weights x 8 = 48
    assert (r.quantized_weights, r.integer_bits) == (12 + 6, 36 + 48)
    assert r.residual_sign_bits == 4  # one residual channel of 4 weights
    assert (r.float_layer_weights, r.float_layer_bits, r.float_layers) == (4, 4 * 32, ("b",))
    # LoRA A (1x4) + B (3x1) + one α, float32
    assert (r.float_branch_params, r.float_branch_bits) == (8, 8 * 32)
    # a: 3 scales + 3 int32 zero points + 4 δ; c: 2 scales + 2 zero points
    assert r.metadata_bits == (3 + 3 + 4) * 32 + (2 + 2) * 32
    assert r.total_bits == 36 + 48 + 4 + 128 + 256 + 448 == 920
    assert r.bits_per_weight == pytest.approx(920 / 22)
    assert r.integer_bits_per_weight == pytest.approx((84 + 4) / 18)
    # the weight-only view leaves the 448 metadata bits out
    assert r.weight_bits == 920 - 448
    assert r.weight_bits_per_weight == pytest.approx(472 / 22)


def test_a_deployment_float_width_recounts_the_floats_only():
    r = storage_bits(_model(), float_bits=16)
    # floats at 16: b 4x16, branch 8x16, scales (3+2)x16, δ 4x16; zero points stay int32
    assert r.total_bits == 84 + 4 + 64 + 128 + (5 + 4) * 16 + 5 * 32 == 584
    assert r.to_dict()["bits_per_weight"] == pytest.approx(584 / 22)


def test_a_merged_lora_costs_nothing_and_a_float_model_is_all_float():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    quantize_(model, Recipe(rules=(("0", LayerQuant(w_bits=4, a_bits=None, lora=LoRASpec(2, "merged"))),)))
    r = storage_bits(model)
    assert r.float_branch_params == 0 and r.integer_bits == 12 * 4 and r.float_layer_weights == 6
    plain = storage_bits(nn.Sequential(nn.Linear(4, 3)))
    assert plain.bits_per_weight == 32 and plain.quantized_weights == 0


def _lora_model(lora_mode: str, fp_dtype: torch.dtype) -> nn.Module:
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
def test_weight_bits_count_every_layer_and_branch(lora_mode, fp_dtype, bits):
    storage = storage_bits(_lora_model(lora_mode, fp_dtype))
    assert storage.total_weights == 32 + 6
    assert storage.weight_bits == bits
    assert storage.weight_bits_per_weight == pytest.approx(bits / 38)


def test_per_channel_bits_are_weighted_by_row_size():
    model = nn.Sequential()
    model.add_module("a", nn.Linear(5, 3))
    quantize_(model, Recipe(rules=(("a", LayerQuant((2, 3, 4), a_bits=None)),)))
    r = storage_bits(model)
    assert r.weight_bits == 5 * (2 + 3 + 4)
    assert r.weight_bits_per_weight == pytest.approx(3.0)
    # one scale and one zero point per channel, 32 bits each
    assert r.metadata_bits == 3 * 32 + 3 * 32
