"""`edgediff quantize --method mpqdm|mpqdmv2`: switches parse, misuse is one line and exit 2."""

import json

import pytest
import torch

from edgediff.cli import quantize_options
from edgediff_export.cli import build_parser, main

BASE_ARGS = ["quantize", "--model", "reference", "--bits", "W2A4", "--out"]


def test_switches_map_to_config_fields(tmp_path):
    args = build_parser().parse_args(
        [
            *BASE_ARGS,
            str(tmp_path / "q"),
            "--method",
            "mpqdmv2",
            "--no-trd",
            "--trd-detach",
            "--trd-mode",
            "window",
            "--residual",
            "off",
            "--lora-init",
            "zero",
            "--lora-mode",
            "merged",
            "--omq",
            "on",
            "--omq-range",
            "code",
            "--selection",
            "random",
            "--no-mtrd",
            "--mtrd-time",
            "window",
            "--lora-rank",
            "8",
            "--no-smooth",
            "--batch",
            "16",
        ]
    )
    assert quantize_options(args) == {
        "trd": False,
        "trd_detach": True,
        "trd_mode": "window",
        "residual": False,
        "lora_init": "zero",
        "lora_mode": "merged",
        "omq": True,
        "omq_range": "code",
        "selection": "random",
        "mtrd": False,
        "mtrd_time": "window",
        "additive_rank": 8,
        "smooth": False,
    }
    assert args.batch == 16
    plain = build_parser().parse_args([*BASE_ARGS, "x", "--method", "mpqdm", "--no-omq"])
    assert quantize_options(plain) == {"omq": False}


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--method", "mpqdm", "--residual", "on"], "mpqdmv2 only"),
        (["--method", "ptq", "--no-trd"], "mpqdm/mpqdmv2 only"),
        (["--method", "mpqdmv2", "--lora-init", "svd", "--lora-mode", "merged"], "additive"),
        (["--method", "mpqdm", "--bits", "W9A4"], "unknown bit setting"),
        (["--method", "ptq", "--device", "tpu"], "unknown device 'tpu'"),
        (["--method", "ptq", "--device", "gpu0"], "unknown device 'gpu0'"),
        (["--method", "ptq", "--resume"], "fine-tuned methods"),
    ],
)
def test_misuse_is_one_line_exit_2(tmp_path, capsys, extra, needle):
    assert main([*BASE_ARGS, str(tmp_path / "q"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
    assert not (tmp_path / "q").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_a_gpu_is_one_line_exit_2(tmp_path, capsys):
    assert main([*BASE_ARGS, str(tmp_path / "q"), "--method", "ptq", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device cpu" in err[0]
    assert not (tmp_path / "q").exists()


def test_bad_choice_exits_2_naming_the_option(tmp_path, capsys):
    assert main([*BASE_ARGS, str(tmp_path / "q"), "--method", "mpqdm", "--omq-range", "wide"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--omq-range" in err[0]


@pytest.mark.slow  # ~1.5 min on 2 cores; tests/export/test_bundle.py runs mpqdmv2 end to end by default
def test_quantize_mpqdmv2_end_to_end_records_the_config(tmp_path):
    out = tmp_path / "q"
    args = ["--method", "mpqdmv2", "--steps", "2", "--updates", "2", "--batch", "2", "--mtrd-time", "none"]
    assert main([*BASE_ARGS, str(out), *args]) == 0
    meta = json.loads((out / "edgediff_meta.json").read_text())
    assert meta["method"] == "mpqdmv2"
    cfg = meta["training"]["method_config"]
    assert cfg["mtrd_time"] == "none" and cfg["lora_init"] == "svd" and cfg["base"]["batch_size"] == 2
    recipe = json.loads((out / "recipe.json").read_text())
    assert any(r["quant"] and r["quant"]["residual"] for r in recipe["rules"])
