"""`edgediff quantize` and `eval` on conditioned, transformer and video models built from configs."""

import json

import pytest
import torch

from edgediff.models.conditioning import ConditioningRequest, build_conditioning
from edgediff.models.label_table import LabelTable
from edgediff.models.loading import load_model
from edgediff.quant import quant_layers
from edgediff.sampling import ddim_sample, seeded_noise
from edgediff_export.cli import main

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


def _cases(root):
    table = save_pipeline_folder(cond_unet(), root / "table", SD_SCHEDULER)
    LabelTable(torch.randn(2, 12, 16, generator=torch.Generator().manual_seed(0))).save(table)
    ehs = {
        "encoder_hidden_states": torch.randn(2, 4, 12),
        "null.encoder_hidden_states": torch.zeros(2, 4, 12),
    }
    vid = {
        "encoder_hidden_states": torch.randn(1, 1, 16),
        "null.encoder_hidden_states": torch.zeros(1, 1, 16),
    }
    pix, video = cond_file(root / "pix.safetensors", ehs), cond_file(root / "v.safetensors", vid)
    return {
        # kind: (folder, CLI conditioning args, the conditioning its samples are checked with)
        "class_unet": (save_pipeline_folder(class_unet(), root / "cu"), [], {"labels": "2"}),  # random labels
        "table": (table, ["--labels", "3,-,7,1", "--guidance", "2"], {"labels": "2,3"}),
        "dit": (
            save_pipeline_folder(dit(), root / "dit"),
            ["--labels", "5", "--guidance", "4"],
            {"labels": "2"},
        ),
        "pixart": (
            save_pipeline_folder(pixart(), root / "pix"),
            ["--cond", str(pix), "--guidance", "3"],
            {"cond_file": pix},
        ),
        "latte": (
            save_pipeline_folder(latte(), root / "latte"),
            ["--cond", str(video)],
            {"cond_file": video},
        ),
    }


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    return _cases(tmp_path_factory.mktemp("q"))


@pytest.mark.parametrize("kind", ["class_unet", "table", "dit", "pixart", "latte"])
def test_ptq_w8a8_through_the_cli(cases, tmp_path, kind, capsys):
    folder, cond_args, sample_request = cases[kind]
    out = tmp_path / "q"
    args = ["quantize", "--model", str(folder), "--method", "ptq", "--bits", "W8A8", "--out", str(out)]
    rc = main([*args, "--calib-samples", "2", "--steps", "2", "--device", "cpu", *cond_args])
    assert rc == 0, capsys.readouterr().err
    meta = json.loads((out / "edgediff_meta.json").read_text())
    assert meta["calib_samples"] == 2
    expected = {"class_unet": "random labels", "pixart": "file", "latte": "file"}.get(kind, "labels")
    assert meta["conditioning"]["kind"] == expected
    fp, q = load_model(folder), load_model(out)
    assert q.quantized and type(q.unet) is type(fp.unet) and q.conditions == fp.conditions
    assert q.scheduler_config["timestep_spacing"] == fp.scheduler_config["timestep_spacing"]
    assert q.scheduler_config.get("set_alpha_to_one") == fp.scheduler_config.get("set_alpha_to_one")
    assert (q.label_table is None) == (fp.label_table is None)
    modes = {layer.act_quant.mode for layer in quant_layers(q.unet).values() if layer.act_quant is not None}
    assert ("dynamic_per_token" in modes) == (fp.signature.family == "transformer")
    cond = build_conditioning(q, ConditioningRequest(**sample_request), 2)
    noise = seeded_noise(2, q.sample_shape, 0)
    qs = ddim_sample(q.unet, q.scheduler_config, noise, 2, conditioning=cond, set_step=q.set_step).images
    fs = ddim_sample(fp.unet, fp.scheduler_config, noise, 2, conditioning=cond).images
    assert torch.isfinite(qs).all()
    # W8A8 stays close to its FP model on the same noise and conditions
    err = (qs - fs).pow(2).mean() / fs.pow(2).mean().clamp_min(1e-12)
    assert float(err) < 0.05, float(err)


def test_guided_calibration_sees_both_halves(cases):
    from edgediff.quant import collect_calibration

    loaded = load_model(cases["dit"][0])
    cond = build_conditioning(loaded, ConditioningRequest(labels="5,6", guidance=4.0), 3)
    data = collect_calibration(
        loaded.unet,
        loaded.scheduler_config,
        num_samples=3,
        num_steps=2,
        conditioning=cond,
        guidance_scale=4.0,
    )
    assert len(data) == 2 * 2 * 3  # steps x [cond; null] x samples
    assert data.cond["class_labels"].tolist() == [5, 6, 5, 10, 10, 10] * 2
    assert torch.equal(data.x[:3], data.x[3:6])
    plain = collect_calibration(
        loaded.unet, loaded.scheduler_config, num_samples=3, num_steps=2, conditioning=cond
    )
    assert plain.cond["class_labels"].tolist() == [5, 6, 5] * 2


def _one_line_rc2(capsys, argv):
    capsys.readouterr()  # drop the output of earlier commands
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    return err[0]


def test_cli_conditioning_errors(cases, tmp_path, capsys):
    base = ["quantize", "--method", "ptq", "--bits", "W8A8", "--out", str(tmp_path / "x"), "--steps", "2"]
    base += ["--calib-samples", "2", "--device", "cpu"]
    msg = _one_line_rc2(capsys, [*base, "--model", str(cases["pixart"][0])])
    assert "needs encoder_hidden_states" in msg and "--cond" in msg
    msg = _one_line_rc2(
        capsys, [*base, "--model", str(cases["class_unet"][0]), "--labels", "1", "--guidance", "3"]
    )
    assert "null condition" in msg
    msg = _one_line_rc2(capsys, [*base, "--model", str(cases["dit"][0]), "--labels", "12"])
    assert "out of range" in msg
    msg = _one_line_rc2(capsys, ["quantize", "--method", "mpqdm", *base[3:], "--model", str(cases["dit"][0])])
    assert "ptq or efficientdm" in msg
    assert not (tmp_path / "x").exists()
    msg = _one_line_rc2(capsys, ["eval", "--model", str(cases["dit"][0]), "--samples", "2", "--steps", "1"])
    assert "digit" in msg


def test_sample_command_writes_samples_and_conditions(cases, tmp_path, capsys):
    from safetensors.torch import load_file

    folder = cases["table"][0]
    out = tmp_path / "s.safetensors"
    argv = ["sample", "--model", str(folder), "--out", str(out), "--num", "3", "--steps", "2"]
    assert main([*argv, "--labels", "4,-", "--guidance", "2"]) == 0, capsys.readouterr().err
    got = load_file(str(out))
    assert got["samples"].shape == (3, 4, 8, 8)
    table = load_model(folder).label_table
    assert torch.equal(got["cond.encoder_hidden_states"][0], table.encode(torch.tensor([[4, 10]]))[0])
    grid = tmp_path / "g.png"
    argv = ["sample", "--model", str(cases["class_unet"][0]), "--out", str(out), "--num", "2", "--steps", "1"]
    assert main([*argv, "--grid", str(grid)]) == 0 and grid.is_file()
    msg = _one_line_rc2(
        capsys, ["sample", "--model", str(cases["latte"][0]), "--out", str(out), "--grid", str(grid)]
    )
    assert "--grid" in msg
