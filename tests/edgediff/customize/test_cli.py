"""`edgediff customize` on a tiny label-conditioned model folder: outputs and one-line errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from edgediff_export.cli import main

from .tiny_canvas import save_canvas


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("customize")
    rng = np.random.default_rng(0)
    paths = {"model": save_canvas(root)}
    for name in ("subject", "condition"):
        paths[name] = root / f"{name}.png"
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(paths[name])
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 8:16] = 255
    paths["mask"] = root / "mask.png"
    Image.fromarray(mask).save(paths["mask"])
    paths["empty"] = root / "empty.png"
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(paths["empty"])
    paths["small"] = root / "small.png"
    Image.fromarray(mask[:8, :8]).save(paths["small"])
    return paths


def _args(files, out, *extra):
    return [
        "customize",
        "--model",
        str(files["model"]),
        "--subject",
        str(files["subject"]),
        "--labels",
        "3,5",
        "--steps",
        "4",
        "--out",
        str(out),
        *extra,
    ]


def test_generate_and_edit_write_png(files, tmp_path, capsys):
    out = tmp_path / "gen.png"
    assert main(_args(files, out, "--seed", "2")) == 0
    assert np.asarray(Image.open(out)).shape == (16, 16)
    assert "generate" in capsys.readouterr().out
    out = tmp_path / "edit.png"
    edit = ["--condition", str(files["condition"]), "--condition-mask", str(files["mask"])]
    assert main(_args(files, out, *edit, "--subject-mask", str(files["mask"]))) == 0
    got, cond = np.asarray(Image.open(out)), np.asarray(Image.open(files["condition"]))
    outside = np.asarray(Image.open(files["mask"])) < 128
    assert np.array_equal(got[outside], cond[outside])  # blending keeps the condition exactly


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--condition-mask", "MASK"], "--condition-mask needs --condition"),
        (["--condition", "COND"], "subject editing needs --condition-mask"),
        (["--subject-mask", "EMPTY"], "--subject-mask is empty"),
        (["--subject-mask", "SMALL"], "--subject-mask is 8x8 but its image is 16x16"),
        (["--sagi-steps", "2"], "give both --sagi-steps and --salq-steps"),
    ],
)
def test_bad_inputs_one_line_exit_2(files, tmp_path, capsys, extra, message):
    names = {"MASK": "mask", "COND": "condition", "EMPTY": "empty", "SMALL": "small"}
    extra = [str(files[names[e]]) if e in names else e for e in extra]
    out = tmp_path / "x.png"
    assert main(_args(files, out, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
    assert not out.exists()


def test_no_conditioning_is_an_error(files, tmp_path, capsys):
    args = _args(files, tmp_path / "x.png")
    i = args.index("--labels")
    assert main(args[:i] + args[i + 2 :]) == 2
    assert "--labels" in capsys.readouterr().err
