"""Recipes: bit strings, JSON round trip, rule matching, default recipes on diffusers models."""

import pytest
from torch import nn

from edgediff.errors import EdgediffError
from edgediff.quant import BitSetting, LayerQuant, LoRASpec, LowRankSpec, Recipe, ResidualSpec, default_recipe
from edgediff.reference.model import build_unet

from .models import cond_unet, dit, latte


@pytest.mark.parametrize(
    "s,expected",
    [
        ("W8A8", (8, 8)),
        ("W4A8", (4, 8)),
        ("W4A4", (4, 4)),
        ("W3A6", (3, 6)),
        ("W2A8", (2, 8)),
        ("W2A4", (2, 4)),
        ("w1a1", (1, 1)),
        ("W4A16", (4, None)),
        ("W2A32", (2, None)),
    ],
)
def test_parse_bits(s, expected):
    bits = BitSetting.parse(s)
    assert (bits.w, bits.a) == expected
    assert BitSetting.parse(bits.label) == bits  # the label parses back to the same setting


@pytest.mark.parametrize("bad", ["W9A8", "W0A8", "W4A9", "W4A12", "4A8", "W4", "", "W4A8x"])
def test_parse_bits_rejects_unknown(bad):
    with pytest.raises(EdgediffError) as e:
        BitSetting.parse(bad)
    assert str(e.value) == f"unknown bit setting {bad!r}: use W<1-8>A<1-8|16>, e.g. W4A8"


def test_bit_setting_label_and_validation():
    assert BitSetting(4, 8).label == "W4A8" and BitSetting(2, None).label == "W2A16"
    assert BitSetting.of("w3a6") == BitSetting(3, 6)
    for w, a in ((0, 8), (9, 8), (4, 0), (4, 16)):
        with pytest.raises(EdgediffError, match="outside 1..8"):
            BitSetting(w, a)


def test_recipe_label_is_derived_from_the_recipe(tmp_path):
    unet = build_unet()
    preset = default_recipe("w4a8", unet, a_mode="per_step")
    assert preset.bits == BitSetting(4, 8) and preset.label == "W4A8" and preset.name == "default-W4A8"
    back = Recipe.from_json(preset.to_json())
    assert back == preset and back.label == "W4A8"
    assert preset.with_name("x").label == "W4A8" and preset.with_symmetric_weights().bits == preset.bits
    # a hand-written recipe (no preset): the most common rule setting, ties to the later rule
    hand = Recipe(
        rules=(
            ("conv_in", LayerQuant(8, a_bits=8)),
            ("conv_out", LayerQuant(8, a_bits=8)),
            ("down_blocks.*", LayerQuant(3, a_bits=6)),
            ("*", LayerQuant(3, a_bits=6)),
        )
    )
    assert hand.label == "W3A6"
    tie = Recipe(rules=(("conv_in", LayerQuant(8, a_bits=8)), ("*", LayerQuant(2, a_bits=None))))
    assert tie.label == "W2A16"
    assert Recipe(rules=(("*", None),)).label == "FP"


def test_layerquant_rejects_bad_bits_and_options():
    with pytest.raises(EdgediffError, match="outside 1..8"):
        LayerQuant(9)
    with pytest.raises(EdgediffError, match="outside 1..8"):
        LayerQuant((4, 0, 4))
    with pytest.raises(EdgediffError, match="outside 1..8"):
        LayerQuant(4, a_bits=16)
    with pytest.raises(EdgediffError, match="unknown activation mode"):
        LayerQuant(4, a_mode="token")
    with pytest.raises(EdgediffError, match="unknown weight range"):
        LayerQuant(4, w_range="mse")
    with pytest.raises(EdgediffError, match="per_channel"):
        LayerQuant((4, 4), w_granularity="per_tensor")


def test_recipe_json_round_trip():
    r = Recipe(
        rules=(
            ("conv_in", LayerQuant(8, a_bits=8)),
            ("*.attentions.*", None),
            (
                "down_blocks.*",
                LayerQuant(
                    (3, 2, 4),
                    a_bits=6,
                    a_mode="per_step",
                    w_range="minmax",
                    smooth=True,
                    residual=ResidualSpec(0.2, "error"),
                    lora=LoRASpec(8, "additive"),
                ),
            ),
            ("*", LayerQuant.parse("W4A8", a_mode="dynamic_per_token", lowrank=LowRankSpec(1, frames=8))),
        ),
        name="mine",
    )
    back = Recipe.from_json(r.to_json())
    assert back == r
    assert isinstance(back.rules[2][1].w_bits, tuple)
    with pytest.raises(EdgediffError, match="not valid JSON"):
        Recipe.from_json("{")
    with pytest.raises(EdgediffError, match="malformed recipe"):
        Recipe.from_json('{"rules": [{"pattern": "x"}]}')


def test_first_match_wins_and_ancestors_match():
    r = Recipe(rules=(("down_blocks.1", None), ("down_blocks.*.conv1", LayerQuant(2)), ("*", LayerQuant(4))))
    assert r.match("down_blocks.1.resnets.0.conv1") == (True, None)
    assert r.match("down_blocks.0.resnets.0.conv1")[1].w_bits == 2  # fnmatch: '*' also spans dots
    assert r.match("down_blocks.0.resnets.0.conv2")[1].w_bits == 4
    assert Recipe(rules=(("*conv1", LayerQuant(2)),)).match("down_blocks.0.resnets.0.conv1")[1].w_bits == 2
    assert Recipe(rules=(("conv_in", LayerQuant(2)),)).match("conv_out") == (False, None)


def test_rule_matching_no_module_is_an_error():
    with pytest.raises(EdgediffError) as e:
        Recipe(rules=(("foo.*", LayerQuant(4)),)).validate(build_unet())
    assert str(e.value) == (
        "recipe rule 'foo.*' matches no module of UNet2DModel; "
        "check the pattern against model.named_modules()"
    )


def _layer_bits(recipe, model):
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            _, q = recipe.match(name)
            out[name] = None if q is None else (q.w_bits, q.a_bits)
    return out


@pytest.mark.parametrize(
    "build,eight",
    [
        (build_unet, {"conv_in", "conv_out", "time_embedding.linear_1", "time_embedding.linear_2"}),
        (cond_unet, {"conv_in", "conv_out", "time_embedding.linear_1", "time_embedding.linear_2"}),
        (
            dit,
            {"pos_embed.proj", "proj_out_1", "proj_out_2"}
            | {
                f"transformer_blocks.{i}.norm1.emb.timestep_embedder.linear_{j}"
                for i in (0, 1)
                for j in (1, 2)
            },
        ),
        (
            latte,
            {
                "pos_embed.proj",
                "proj_out",
                "adaln_single.emb.timestep_embedder.linear_1",
                "adaln_single.emb.timestep_embedder.linear_2",
            },
        ),
    ],
)
def test_default_recipe_reaches_every_layer(build, eight):
    model = build()
    recipe = default_recipe("W3A6", model)
    recipe.validate(model)
    bits = _layer_bits(recipe, model)
    assert {n for n, b in bits.items() if b == (8, 8)} == eight
    assert all(b == (3, 6) for n, b in bits.items() if n not in eight)
    assert any(n.endswith("to_q") for n in bits) and all(
        bits[n] == (3, 6) for n in bits if n.endswith("to_k")
    )
    assert Recipe.from_json(recipe.to_json()) == recipe


def test_with_symmetric_weights_sets_every_quantized_rule():
    recipe = Recipe(rules=(("conv_in", None), ("*", LayerQuant.parse("W4A8"))), name="r")
    sym = recipe.with_symmetric_weights()
    assert sym.rules[0][1] is None and sym.rules[1][1].w_symmetric and sym.name == "r-symw"
    assert Recipe.from_json(sym.to_json()) == sym
