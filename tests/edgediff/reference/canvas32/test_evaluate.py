import json

import pytest
import torch

from edgediff.models.loading import load_model
from edgediff.reference.canvas32.evaluate import evaluate, is_canvas32
from edgediff.reference.canvas32.model import build_denoiser, save_pipeline
from edgediff_export.cli import main

from .tiny import TINY_UNET


@pytest.fixture
def tiny_model(tmp_path):
    save_pipeline(build_denoiser(0, TINY_UNET), tmp_path / "m")
    return tmp_path / "m"


def test_eval_json_keys(tiny_model, tmp_path):
    out = tmp_path / "r.json"
    result = evaluate(
        tiny_model,
        samples=8,
        steps=2,
        seed=1,
        json_out=out,
        grid_out=tmp_path / "g.png",
        progress=False,
    )
    assert json.loads(out.read_text()) == result
    for key in (
        "slot_accuracy",
        "slot_accuracy_left",
        "slot_accuracy_right",
        "fd",
        "fd_real_floor",
        "samples",
    ):
        assert key in result
    assert 0.0 <= result["slot_accuracy"] <= 1.0 and result["fd"] >= 0.0
    # Samples of an untrained model are far from real canvases; held-out real ones are close.
    assert result["fd_real_floor"] < result["fd"]
    assert result["samples"] == 8 and (tmp_path / "g.png").is_file()


def test_bundled_model_loads_with_its_table_and_schedule():
    model = load_model("reference:canvas32")
    table = model.label_table
    assert table.embeddings.shape == (2, 12, 32) and table.embeddings.dtype == torch.float32
    assert model.unet.config.cross_attention_dim == 32 and model.unet.config.sample_size == 32
    assert model.scheduler_config["timestep_spacing"] == "trailing"


def test_reference_name_and_detection(tiny_model, tmp_path):
    assert is_canvas32("reference:canvas32") and is_canvas32(tiny_model)
    assert not is_canvas32("reference") and not is_canvas32(tmp_path)


def test_cli_train_then_eval(tmp_path, capsys):
    assert (
        main(["reference", "train", "--arch", "canvas32", "--steps", "1", "--out", str(tmp_path / "m")]) == 0
    )
    summary = json.loads((tmp_path / "m" / "training.json").read_text())
    assert summary["steps"] == 1 and "hardware" in summary and summary["ms_per_step"] > 0
    code = main(
        [
            "eval",
            "--model",
            str(tmp_path / "m"),
            "--samples",
            "3",
            "--steps",
            "1",
            "--json",
            str(tmp_path / "r.json"),
        ]
    )
    assert code == 0
    assert {"slot_accuracy", "fd"} <= set(json.loads((tmp_path / "r.json").read_text()))


def test_eval_of_a_folder_without_unet_is_one_line(tmp_path, capsys):
    (tmp_path / "x" / "conditioning").mkdir(parents=True)
    (tmp_path / "x" / "conditioning" / "labels.json").write_text("{}")
    assert main(["eval", "--model", str(tmp_path / "x"), "--samples", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path / "x") in err


def test_eval_scores_a_quantized_canvas32_folder(tiny_model, tmp_path):
    quantized = tmp_path / "q"
    args = ["--method", "ptq", "--bits", "W8A8", "--calib-samples", "2", "--steps", "2"]
    assert main(["quantize", "--model", str(tiny_model), *args, "--out", str(quantized)]) == 0
    fp = evaluate(tiny_model, samples=4, steps=2, seed=0, progress=False)
    q = evaluate(quantized, samples=4, steps=2, seed=0, progress=False)
    assert q["quantized"] and not fp["quantized"]
    assert q["sampler"] == fp["sampler"]  # the quantized folder keeps the model's trailing grid
    assert q["fd"] != fp["fd"]  # its own weights were sampled, not the FP model's
