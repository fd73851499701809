import json

import pytest
import torch

from edgediff.reference.canvas32 import MODEL_DIR
from edgediff.reference.canvas32.evaluate import evaluate, is_canvas32
from edgediff.reference.canvas32.model import build_denoiser, load, resolve, save_pipeline
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
    model = load("reference:canvas32")
    assert model.table.embeddings.shape == (2, 12, 32) and model.table.embeddings.dtype == torch.float32
    assert model.unet.config.cross_attention_dim == 32 and model.unet.config.sample_size == 32
    assert model.scheduler_config["timestep_spacing"] == "trailing"


def test_reference_name_and_detection(tiny_model, tmp_path):
    assert resolve("reference:canvas32") == MODEL_DIR
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
    assert "not a canvas32 model folder" in capsys.readouterr().err
