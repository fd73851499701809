import json

import pytest
import torch

from edgediff.errors import EdgediffError
from edgediff.models.label_table import LabelTable
from edgediff.models.loading import load_model, resolve_model_path
from edgediff.reference import REFERENCES

from .tiny import BUILDERS, SD_SCHEDULER, cond_unet, save_model_folder, save_pipeline_folder


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_model_and_pipeline_folders_load_the_same_weights(tmp_path, kind):
    model = BUILDERS[kind]()
    pipe = save_pipeline_folder(model, tmp_path / "pipe")
    loaded = load_model(pipe)
    assert type(loaded.unet) is type(model) and loaded.model is loaded.unet
    assert loaded.signature.class_name == type(model).__name__
    assert loaded.scheduler_config["timestep_spacing"] == "trailing"
    assert loaded.path == pipe and not loaded.quantized
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.unet.state_dict().items()):
        assert torch.equal(a, b), name
    # the denoiser subfolder alone: same class, and the pipeline's scheduler is found
    sub = pipe / ("unet" if "UNet" in type(model).__name__ else "transformer")
    alone = load_model(sub)
    assert type(alone.unet) is type(model)
    assert alone.scheduler_config == loaded.scheduler_config
    bare = load_model(save_model_folder(model, tmp_path / "bare"))
    assert type(bare.unet) is type(model)


def test_conditions_follow_the_config(tmp_path):
    loaded = load_model(save_pipeline_folder(cond_unet(), tmp_path / "sd", SD_SCHEDULER))
    (ehs,) = loaded.conditions
    assert ehs.name == "encoder_hidden_states" and ehs.shape == ("batch", "tokens", 16)
    assert loaded.scheduler_config["set_alpha_to_one"] is False  # as recorded, not normalised
    assert loaded.scheduler_config["timestep_spacing"] == "leading"
    assert loaded.label_table is None
    unconditional = load_model("reference")
    assert unconditional.conditions == () and unconditional.sample_shape == (1, 16, 16)


def test_label_table_is_loaded_and_its_width_checked(tmp_path):
    pipe = save_pipeline_folder(cond_unet(), tmp_path / "c")
    LabelTable(torch.randn(2, 12, 16)).save(pipe)
    assert load_model(pipe).label_table.slots == 2
    LabelTable(torch.randn(2, 12, 8)).save(pipe)
    with pytest.raises(EdgediffError, match="8 wide"):
        load_model(pipe)


def test_references_by_name():
    assert resolve_model_path("reference") == REFERENCES["digits16"]
    assert resolve_model_path("reference:digits16") == REFERENCES["digits16"]
    with pytest.raises(EdgediffError) as err:
        load_model("reference:nope")
    assert "digits16" in str(err.value) and "\n" not in str(err.value)


def test_reference_records_its_ddim_choices():
    cfg = load_model("reference").scheduler_config
    assert cfg["timestep_spacing"] == "trailing" and cfg["set_alpha_to_one"] is True


def _one_line(fn):
    with pytest.raises(EdgediffError) as err:
        fn()
    assert "\n" not in str(err.value)
    return str(err.value)


def test_bad_folders_are_one_line_errors(tmp_path):
    assert "not found" in _one_line(lambda: load_model(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    assert "not a diffusers model folder" in _one_line(lambda: load_model(tmp_path / "empty"))
    other = tmp_path / "flux"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"_class_name": "FluxTransformer2DModel"}))
    msg = _one_line(lambda: load_model(other))
    assert "FluxTransformer2DModel" in msg and "UNet2DConditionModel" in msg
    broken = save_pipeline_folder(cond_unet(), tmp_path / "broken")
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    assert "cannot load model" in _one_line(lambda: load_model(broken))
    nodenoiser = tmp_path / "vae_only"
    nodenoiser.mkdir()
    (nodenoiser / "model_index.json").write_text(json.dumps({"vae": ["diffusers", "AutoencoderKL"]}))
    assert "no unet/ or transformer/" in _one_line(lambda: load_model(nodenoiser))


def test_old_reference_quantized_folders_keep_their_ddim_choices(tmp_path):
    from edgediff.methods import quantize_model

    out = tmp_path / "q"
    quantize_model("reference", "ptq", "W8A8", out, num_steps=2, progress=False, calib_samples=2)
    assert load_model(out).scheduler_config["timestep_spacing"] == "trailing"
    # as written before the reference recorded them: DDPM's default spacing, no final-alpha key
    cfg_file = out / "scheduler_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["timestep_spacing"] = "leading"
    del cfg["set_alpha_to_one"]
    cfg_file.write_text(json.dumps(cfg))
    cfg = load_model(out).scheduler_config
    assert cfg["timestep_spacing"] == "trailing" and cfg["set_alpha_to_one"] is True


def test_fp16_variant_only_folders_load(tmp_path):
    model = cond_unet()
    model.half().save_pretrained(tmp_path / "v" / "unet", variant="fp16")
    (tmp_path / "v" / "model_index.json").write_text(
        json.dumps({"unet": ["diffusers", "UNet2DConditionModel"]})
    )
    loaded = load_model(tmp_path / "v")
    ref = cond_unet().half().float()
    name, weight = next(iter(ref.state_dict().items()))
    assert torch.equal(loaded.unet.state_dict()[name].float(), weight), name
