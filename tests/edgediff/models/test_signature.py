import pytest

from edgediff.errors import EdgediffError
from edgediff.models.signature import (
    ConditionInput,
    signature_for_class,
    signature_of,
    supported_classes,
)

from .tiny import class_unet, cond_unet, dit, latte, pixart


def test_every_brief_class_is_registered():
    assert set(supported_classes()) == {
        "UNet2DModel",
        "UNet2DConditionModel",
        "DiTTransformer2DModel",
        "PixArtTransformer2DModel",
        "LatteTransformer3DModel",
    }


def test_unsupported_class_is_one_line_listing_the_supported():
    with pytest.raises(EdgediffError) as err:
        signature_for_class("FluxTransformer2DModel")
    msg = str(err.value)
    assert "\n" not in msg and "FluxTransformer2DModel" in msg
    for name in supported_classes():
        assert name in msg


def _names(class_name, cfg):
    return [c.name for c in signature_for_class(class_name).conditions_for(cfg)]


def test_class_labels_only_when_the_config_embeds_classes():
    assert _names("UNet2DModel", {"num_class_embeds": None, "class_embed_type": None}) == []
    assert _names("UNet2DModel", {"num_class_embeds": 10}) == ["class_labels"]
    assert _names("UNet2DModel", {"class_embed_type": "timestep"}) == ["class_labels"]
    assert _names("DiTTransformer2DModel", {"num_embeds_ada_norm": 1000}) == ["class_labels"]


def test_encoder_hidden_states_width_comes_from_the_config():
    sd = signature_for_class("UNet2DConditionModel").conditions_for({"cross_attention_dim": 768})
    assert sd == (
        ConditionInput("encoder_hidden_states", "encoder_hidden_states", "float32", ("batch", "tokens", 768)),
    )
    pix = signature_for_class("PixArtTransformer2DModel").conditions_for(
        {"caption_channels": 4096, "cross_attention_dim": 1152, "sample_size": 64}
    )
    assert [c.shape for c in pix] == [("batch", "tokens", 4096)]
    sd2 = signature_for_class("UNet2DConditionModel").conditions_for({"cross_attention_dim": [1024, 1024]})
    assert sd2[0].shape[-1] == 1024


def test_sdxl_added_conditions_and_pixart_1024_resolution():
    sdxl = {
        "cross_attention_dim": 2048,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816,
    }
    conds = {c.name: c for c in signature_for_class("UNet2DConditionModel").conditions_for(sdxl)}
    assert conds["text_embeds"].shape == ("batch", 2816 - 6 * 256)
    assert conds["text_embeds"].kwarg == "added_cond_kwargs.text_embeds"
    assert conds["time_ids"].shape == ("batch", 6)
    # PixArt-alpha: 256/512 configs (sample_size 32/64) take no resolution; 1024 (128) does
    assert _names("PixArtTransformer2DModel", {"caption_channels": 8, "sample_size": 64}) == [
        "encoder_hidden_states"
    ]
    assert _names("PixArtTransformer2DModel", {"caption_channels": 8, "sample_size": 128}) == [
        "encoder_hidden_states",
        "resolution",
        "aspect_ratio",
    ]


@pytest.mark.parametrize(
    "build,shape,out,names",
    [
        (cond_unet, (4, 8, 8), 4, ["encoder_hidden_states"]),
        (class_unet, (1, 8, 8), 1, ["class_labels"]),
        (dit, (4, 8, 8), 4, ["class_labels"]),
        (pixart, (4, 8, 8), 4, ["encoder_hidden_states"]),
        (latte, (1, 8, 16, 16), 1, ["encoder_hidden_states"]),
    ],
)
def test_instances(build, shape, out, names):
    model = build()
    sig = signature_of(model)
    assert sig.sample_shape(model.config) == shape
    assert sig.output_channels(model.config) == out  # DiT/PixArt: 8 channels out, the first 4 used
    assert [c.name for c in sig.conditions_for(model.config)] == names
    assert sig.family == ("unet" if "UNet" in sig.class_name else "transformer")
