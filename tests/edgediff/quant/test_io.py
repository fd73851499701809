"""save_quantized / load_quantized: bit-exact round trip, corrupt folders, atomic writes."""

import dataclasses
import json

import pytest
import torch

from edgediff.errors import EdgediffError
from edgediff.quant import (
    CalibrationData,
    LayerQuant,
    LoRASpec,
    Recipe,
    ResidualSpec,
    calibrate,
    default_recipe,
    load_quantized,
    quant_layers,
    quantize_,
    save_quantized,
    set_step,
)
from edgediff.reference.model import SCHEDULER_CONFIG, UNET_CONFIG, build_unet

from .models import calib_for, dit

STEPS = 2
META = {"method": "ptq", "bits": "W3A6", "source": "reference", "seed": 3}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = build_unet().eval()
    fancy = LayerQuant(
        3,
        a_bits=6,
        a_mode="per_step",
        w_range="minmax",
        a_range="minmax",
        smooth=True,
        residual=ResidualSpec(0.25),
        lora=LoRASpec(2),
    )
    mixed_bits = dataclasses.replace(fancy, w_bits=(2, 4) * 32)  # a searched per-channel bit vector
    rules = (
        ("down_blocks.1.resnets.0.conv1", mixed_bits),
        ("down_blocks.1", fancy),
        *default_recipe("W4A8", model, w_range="minmax", a_range="minmax").rules,
    )
    recipe = Recipe(rules=rules, name="mixed")
    quantize_(model, recipe, num_steps=STEPS)
    g = torch.Generator().manual_seed(0)
    data = CalibrationData(
        x=torch.randn(4, 1, 16, 16, generator=g),
        t=torch.tensor([900, 900, 400, 400]),
        step=torch.tensor([0, 0, 1, 1]),
        num_steps=STEPS,
    )
    calibrate(model, data)
    layer = quant_layers(model)["down_blocks.1.resnets.0.conv1"]
    assert layer.weight_quant.bits.tolist() == [2, 4] * 32
    with torch.no_grad():  # trained-looking state: LoRA B, per-step tables
        layer.lora.B.normal_(0, 0.01, generator=g)
        layer.act_quant.scale[1] *= 1.5
    out = tmp_path_factory.mktemp("q") / "model.edgediff-q"
    save_quantized(model, recipe, out, dict(UNET_CONFIG), SCHEDULER_CONFIG, META)
    return model, recipe, out


def _outputs(model):
    x, t = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([700, 100])
    outs = []
    with torch.no_grad():
        for i in range(STEPS):
            set_step(model, i)
            outs.append(model(x, t).sample)
    return outs


def test_save_load_is_bit_exact(saved):
    model, recipe, out = saved
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            "recipe.json",
            "model.safetensors",
            "unet_config.json",
            "scheduler_config.json",
            "edgediff_meta.json",
        ]
    )
    loaded, recipe2, sched, meta = load_quantized(out)
    assert recipe2 == recipe and meta == META and sched["prediction_type"] == "v_prediction"
    assert json.loads((out / "edgediff_meta.json").read_text())["_edgediff"]["num_steps"] == STEPS
    for a, b in zip(_outputs(model), _outputs(loaded)):
        assert torch.equal(a, b)
    sd1, sd2 = model.state_dict(), loaded.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert quant_layers(loaded)["down_blocks.1.resnets.0.conv1"].weight_quant.bits[:2].tolist() == [2, 4]


def test_save_load_transformer_with_conditioning(tmp_path):
    model = dit()
    recipe = default_recipe("W4A8", model, a_mode="dynamic_per_token", w_range="minmax")
    quantize_(model, recipe)
    data = calib_for("dit", n=2)
    calibrate(model, data)
    save_quantized(model, recipe, tmp_path / "dit", dict(model.config), SCHEDULER_CONFIG, {})
    loaded, _, _, meta = load_quantized(tmp_path / "dit")
    assert meta == {}
    with torch.no_grad():
        a = model(data.x, data.t, **data.cond).sample
        b = loaded(data.x, data.t, **data.cond).sample
    assert torch.equal(a, b)


def _copy(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.mark.parametrize(
    "name,damage,message",
    [
        ("recipe.json", None, "missing recipe.json"),
        ("unet_config.json", "{not json", "corrupt unet_config.json"),
        ("edgediff_meta.json", "[1, 2]", "corrupt edgediff_meta.json"),
        ("model.safetensors", None, "missing model.safetensors"),
        ("model.safetensors", "garbage", "corrupt model.safetensors"),
        ("recipe.json", '{"rules": [{"pattern": "nope", "quant": null}]}', "recipe.json .* does not fit"),
        ("recipe.json", '{"rules": [{"pattern": "*", "quant": {"w_bits": 9}}]}', "invalid recipe.json"),
        (
            "recipe.json",
            '{"rules": [{"pattern": "*", "quant": {"w_bits": 4, "a_bits": null}}]}',
            "model.safetensors .* does not match recipe.json",
        ),
    ],
)
def test_corrupt_or_missing_files_are_named(saved, tmp_path, name, damage, message):
    folder = _copy(saved[2], tmp_path / "copy")
    if damage is None:
        (folder / name).unlink()
    else:
        (folder / name).write_text(damage)
    with pytest.raises(EdgediffError, match=message):
        load_quantized(folder)


def _edit_json(path, edit):
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d, indent=1))


def test_contradicting_parts_are_refused(saved, tmp_path):
    """recipe vs stored bit vectors, meta label vs recipe, edited files (digests), zero-point range."""
    src = saved[2]
    folder = _copy(src, tmp_path / "a")  # a recipe from another bit width: weights keep their bits
    _edit_json(folder / "recipe.json", lambda d: d["rules"][0]["quant"].update(w_bits=4))
    with pytest.raises(EdgediffError, match=r"stores \[2, 4\]-bit weights in down_blocks.1.resnets.0.conv1"):
        load_quantized(folder)
    folder = _copy(src, tmp_path / "b")  # the meta claims a bit width no layer has
    _edit_json(folder / "edgediff_meta.json", lambda d: d.update(bits="W2A4"))
    with pytest.raises(EdgediffError, match="says W2A4 but recipe.json quantizes its layers as"):
        load_quantized(folder)
    folder = _copy(src, tmp_path / "c")  # a label that exists in the recipe, edited all the same
    _edit_json(folder / "edgediff_meta.json", lambda d: d.update(bits="W4A8", method="mpqdmv2"))
    with pytest.raises(EdgediffError, match="edgediff_meta.json .* was edited"):
        load_quantized(folder)
    folder = _copy(src, tmp_path / "d")  # same recipe, reformatted: still the folder's own recipe
    _edit_json(folder / "recipe.json", lambda d: None)
    load_quantized(folder)
    folder = _copy(src, tmp_path / "e")  # a rule that changes nothing the weights can show
    _edit_json(folder / "recipe.json", lambda d: d["rules"][1]["quant"].update(w_range="lp"))
    with pytest.raises(EdgediffError, match="recipe.json .* was changed after the folder was written"):
        load_quantized(folder)


def test_zero_points_outside_the_code_range_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    model = build_unet().eval()
    recipe = default_recipe("W4A8", model)
    quantize_(model, recipe)
    out = save_quantized(model, recipe, tmp_path / "q", dict(UNET_CONFIG), SCHEDULER_CONFIG, {})
    state = load_file(out / "model.safetensors")
    key = next(k for k in state if k.endswith("weight_quant.zero_point") and "down_blocks" in k)
    state[key] = torch.full_like(state[key], 16)  # 4-bit codes are 0..15
    save_file(state, out / "model.safetensors")
    with pytest.raises(EdgediffError, match="zero points of .* outside the 4-bit code range"):
        load_quantized(out)


def test_load_missing_folder(tmp_path):
    with pytest.raises(EdgediffError, match="folder not found"):
        load_quantized(tmp_path / "absent")


def test_nothing_is_written_on_failure(tmp_path, monkeypatch):
    import edgediff.quant.io as qio

    model = build_unet()
    recipe = default_recipe("W4A16", model)
    quantize_(model, recipe)
    out = tmp_path / "out"
    with pytest.raises(EdgediffError, match="meta is not JSON-serializable"):
        save_quantized(model, recipe, out, dict(UNET_CONFIG), SCHEDULER_CONFIG, {"bad": torch.zeros(1)})
    with pytest.raises(EdgediffError, match="needs a diffusers model"):
        save_quantized(torch.nn.Sequential(), recipe, out, {}, SCHEDULER_CONFIG, {})

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(qio, "save_model", disk_full)  # fails after the JSON files were written
    with pytest.raises(OSError):
        save_quantized(model, recipe, out, dict(UNET_CONFIG), SCHEDULER_CONFIG, {})
    assert list(tmp_path.iterdir()) == []  # no folder, no temporary leftovers
