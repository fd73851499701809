"""The DDIM sampler on conditioned, learned-sigma and video models, with and without guidance."""

import pytest
import torch
from diffusers import DDIMScheduler

from edgediff.models.conditioning import Conditioning, ConditioningRequest, build_conditioning
from edgediff.models.label_table import LabelTable
from edgediff.models.loading import load_model
from edgediff.sampling import ddim_sample, ddim_settings, make_ddim, seeded_noise

from .models.tiny import (
    SD_SCHEDULER,
    class_unet,
    cond_file,
    cond_unet,
    dit,
    latte,
    pixart,
    save_pipeline_folder,
)


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    return load_model(save_pipeline_folder(cond_unet(), tmp_path_factory.mktemp("sd") / "p", SD_SCHEDULER))


def _diffusers_loop(model, cfg, noise, steps, ehs, null=None, w=None):
    sched = DDIMScheduler.from_config(cfg)
    sched.set_timesteps(steps)
    x = noise
    with torch.no_grad():
        for t in sched.timesteps:
            eps = model(x, t, encoder_hidden_states=ehs).sample
            if w is not None:
                eps_null = model(x, t, encoder_hidden_states=null).sample
                eps = eps_null + w * (eps - eps_null)
            x = sched.step(eps, t, x).prev_sample
    return x


def test_sd_scheduler_settings_survive(sd):
    settings = ddim_settings(sd.scheduler_config)
    assert (settings.timestep_spacing, settings.set_alpha_to_one) == ("leading", False)
    ddim = make_ddim(sd.scheduler_config)
    ddim.set_timesteps(10)
    assert ddim.timesteps.tolist() == list(range(901, 0, -100))  # leading, steps_offset 1
    assert float(ddim.final_alpha_cumprod) == pytest.approx(float(ddim.alphas_cumprod[0]))
    # a config that records neither gets the documented defaults
    assert ddim_settings({"num_train_timesteps": 1000}) == type(settings)("trailing", True)


def test_sampler_equals_the_diffusers_ddim_loop(sd):
    noise = seeded_noise(2, sd.sample_shape, 0)
    ehs = torch.randn(2, 3, 16, generator=torch.Generator().manual_seed(1))
    cond = Conditioning({"encoder_hidden_states": ehs})
    ours = ddim_sample(sd.unet, sd.scheduler_config, noise, 10, conditioning=cond).images
    ref = _diffusers_loop(sd.unet, SD_SCHEDULER, noise, 10, ehs)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    # the old behaviour (trailing, final alpha 1) is a different sampler on this model
    old = ddim_sample(
        sd.unet, {**sd.scheduler_config, "set_alpha_to_one": True}, noise, 10, conditioning=cond
    )
    assert not torch.allclose(old.images, ref, atol=1e-3)


def test_guidance_is_eps_null_plus_w_times_the_difference(sd):
    g = torch.Generator().manual_seed(2)
    noise = seeded_noise(2, sd.sample_shape, 3)
    ehs, null = torch.randn(2, 3, 16, generator=g), torch.randn(2, 3, 16, generator=g)
    cond = Conditioning({"encoder_hidden_states": ehs}, {"encoder_hidden_states": null})
    ours = ddim_sample(sd.unet, sd.scheduler_config, noise, 4, conditioning=cond, guidance_scale=3.0).images
    ref = _diffusers_loop(sd.unet, SD_SCHEDULER, noise, 4, ehs, null, 3.0)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    plain = ddim_sample(sd.unet, sd.scheduler_config, noise, 4, conditioning=cond).images
    assert not torch.allclose(plain, ours, atol=1e-3)
    one = ddim_sample(sd.unet, sd.scheduler_config, noise, 4, conditioning=cond, guidance_scale=1.0).images
    torch.testing.assert_close(one, plain, rtol=0, atol=1e-6)


def _cases(root):
    table = save_pipeline_folder(cond_unet(), root / "table")
    LabelTable(torch.randn(2, 12, 16, generator=torch.Generator().manual_seed(0))).save(table)
    pix = cond_file(
        root / "pix.safetensors",
        {"encoder_hidden_states": torch.randn(1, 4, 12), "null.encoder_hidden_states": torch.zeros(1, 4, 12)},
    )
    vid = cond_file(
        root / "vid.safetensors",
        {"encoder_hidden_states": torch.randn(2, 1, 16), "null.encoder_hidden_states": torch.zeros(2, 1, 16)},
    )
    return {
        "class_unet": (save_pipeline_folder(class_unet(), root / "cu"), dict(labels="1,4"), False),
        "table": (table, dict(labels="3,-"), True),
        "dit": (save_pipeline_folder(dit(), root / "dit"), dict(labels="5"), True),
        "pixart": (save_pipeline_folder(pixart(), root / "pix"), dict(cond_file=pix), True),
        "latte": (save_pipeline_folder(latte(), root / "latte"), dict(cond_file=vid), True),
    }


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    return _cases(tmp_path_factory.mktemp("cases"))


@pytest.mark.parametrize("kind", ["class_unet", "table", "dit", "pixart", "latte"])
def test_two_steps_with_and_without_guidance(cases, kind):
    folder, request, guidable = cases[kind]
    loaded = load_model(folder)
    noise = seeded_noise(3, loaded.sample_shape, 0)
    cond = build_conditioning(loaded, ConditioningRequest(**request, guidance=2.5 if guidable else None), 3)
    plain = ddim_sample(loaded.unet, loaded.scheduler_config, noise, 2, conditioning=cond)
    assert plain.images.shape == noise.shape  # learned sigma: first in_channels; video: (B, C, F, H, W)
    assert torch.isfinite(plain.images).all()
    if guidable:
        guided = ddim_sample(
            loaded.unet, loaded.scheduler_config, noise, 2, conditioning=cond, guidance_scale=2.5
        )
        assert guided.images.shape == noise.shape and torch.isfinite(guided.images).all()
        assert not torch.allclose(guided.images, plain.images)


def test_conditioning_changes_the_samples(cases):
    loaded = load_model(cases["dit"][0])
    noise = seeded_noise(2, loaded.sample_shape, 0)
    a, b = (
        ddim_sample(
            loaded.unet,
            loaded.scheduler_config,
            noise,
            2,
            conditioning=build_conditioning(loaded, ConditioningRequest(labels=lab), 2),
        ).images
        for lab in ("1", "7")
    )
    assert not torch.allclose(a, b)


def test_added_cond_kwargs_models_sample(tmp_path):
    """SDXL-shaped UNet (text_embeds from --cond, time_ids derived) and PixArt with resolution inputs."""
    from diffusers import PixArtTransformer2DModel

    sdxl = cond_unet(
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=12 + 6 * 8,
    )
    loaded = load_model(save_pipeline_folder(sdxl, tmp_path / "xl", SD_SCHEDULER))
    assert loaded.condition_names == ("encoder_hidden_states", "text_embeds", "time_ids")
    f = cond_file(
        tmp_path / "xl.safetensors",
        {
            "encoder_hidden_states": torch.randn(1, 3, 16),
            "text_embeds": torch.randn(1, 12),
            "null.encoder_hidden_states": torch.zeros(1, 3, 16),
            "null.text_embeds": torch.zeros(1, 12),
        },
    )
    cond = build_conditioning(loaded, ConditioningRequest(cond_file=f, guidance=5.0), 2)
    assert cond.values["time_ids"].tolist() == [[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]] * 2
    noise = seeded_noise(2, loaded.sample_shape, 0)
    out = ddim_sample(loaded.unet, loaded.scheduler_config, noise, 2, conditioning=cond, guidance_scale=5.0)
    assert torch.isfinite(out.images).all()
    with torch.no_grad():
        direct = loaded.unet(
            noise,
            torch.tensor([1, 1]),
            encoder_hidden_states=cond.values["encoder_hidden_states"],
            added_cond_kwargs={
                "text_embeds": cond.values["text_embeds"],
                "time_ids": cond.values["time_ids"],
            },
        ).sample
    from edgediff.models.call import denoise

    torch.testing.assert_close(denoise(loaded.unet, noise, torch.tensor([1, 1]), cond.values), direct)

    torch.manual_seed(0)
    pix = PixArtTransformer2DModel(  # width 24: the size embedders split it in 3
        num_attention_heads=3,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=1,
        sample_size=8,
        patch_size=2,
        cross_attention_dim=24,
        caption_channels=12,
        norm_num_groups=8,
        use_additional_conditions=True,
    ).eval()
    loaded = load_model(save_pipeline_folder(pix, tmp_path / "pix"))
    assert loaded.condition_names == ("encoder_hidden_states", "resolution", "aspect_ratio")
    f = cond_file(tmp_path / "p.safetensors", {"encoder_hidden_states": torch.randn(1, 2, 12)})
    cond = build_conditioning(loaded, ConditioningRequest(cond_file=f), 2)
    out = ddim_sample(
        loaded.unet, loaded.scheduler_config, seeded_noise(2, (4, 8, 8), 0), 2, conditioning=cond
    )
    assert out.images.shape == (2, 4, 8, 8) and torch.isfinite(out.images).all()
