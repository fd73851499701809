"""`quantize_model`: the bit setting and a --recipe file must agree; the meta's bits is the recipe's label."""

import json

import pytest

from edgediff.errors import EdgediffError
from edgediff.methods import quantize_model
from edgediff.quant import LayerQuant, Recipe, default_recipe
from edgediff.reference.model import build_scheduler, save_pipeline
from edgediff_export.cli import main

from .tiny import tiny_unet


@pytest.fixture(scope="module")
def fp_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("qm")
    save_pipeline(tiny_unet(), build_scheduler(), root / "fp")
    return root / "fp"


def test_recipe_and_bits_that_disagree_are_refused(fp_folder, tmp_path, capsys):
    recipe = tmp_path / "w8.recipe.json"
    recipe.write_text(default_recipe("W8A8", tiny_unet()).to_json())
    out = tmp_path / "q"
    argv = ["quantize", "--model", str(fp_folder), "--method", "ptq", "--out", str(out)]
    assert main([*argv, "--bits", "W4A8", "--recipe", str(recipe)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    want = f"error: recipe {recipe.name} is W8A8 but --bits is W4A8; pass --bits W8A8 or leave --bits out"
    assert err == [want]
    assert not out.exists()
    assert main(argv) == 2
    assert "no bit setting: pass --bits" in capsys.readouterr().err


def test_recipe_file_alone_sets_the_label(fp_folder, tmp_path):
    """A hand-written recipe without a preset: --bits may be left out, the label comes from its rules."""
    recipe = Recipe(rules=(("conv_in", LayerQuant(8, a_bits=8)), ("*", LayerQuant(6, a_bits=8))))
    path = tmp_path / "w6.recipe.json"
    path.write_text(recipe.to_json())
    meta = quantize_model(fp_folder, "ptq", None, tmp_path / "q", path, num_steps=2, progress=False)
    assert meta["bits"] == "W6A8"
    saved = json.loads((tmp_path / "q" / "edgediff_meta.json").read_text())
    assert saved["bits"] == "W6A8"
    assert Recipe.from_json((tmp_path / "q" / "recipe.json").read_text()) == recipe


def test_mixed_recipe_without_bits_needs_bits(fp_folder, tmp_path):
    recipe = Recipe(rules=(("conv_in", LayerQuant((8, 4, 4, 2) * 4, a_bits=8)), ("*", None)))
    path = tmp_path / "mixed.recipe.json"
    path.write_text(recipe.to_json())
    with pytest.raises(EdgediffError, match="mixes bit widths"):
        quantize_model(fp_folder, "ptq", None, tmp_path / "q", path, num_steps=2, progress=False)
