"""`edgediff quantize` then `edgediff export onnx` with their default flags, for every method.

Only the training budget is shrunk (`--updates 1 --batch 1`: one trajectory); the step count, the
recipe and every export option stay at their defaults, so the export's `--steps` must follow the
quantized folder's per-step table and the runtime must run the bundle at that step count.
"""

import json

import pytest

from edgediff.methods.registry import methods
from edgediff.reference.model import build_scheduler, save_pipeline
from edgediff_export.cli import main as edgediff_main
from edgediff_runtime.bundle import load_bundle
from edgediff_runtime.cli import main as run_main
from tests.export.helpers import tiny_unet


@pytest.fixture(scope="module")
def fp_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("defaults")
    save_pipeline(tiny_unet(), build_scheduler(), root / "fp")
    return root / "fp"


@pytest.mark.slow  # 160-440 s per method measured on a busy 2-core machine (50-step tables)
@pytest.mark.parametrize("method", sorted(methods()))
def test_quantize_and_export_with_default_flags(fp_folder, tmp_path, capsys, method):
    q, bundle = tmp_path / "q", tmp_path / "b.edgediff"
    quantize = ["quantize", "--model", str(fp_folder), "--method", method, "--bits", "W4A8", "--out", str(q)]
    assert edgediff_main([*quantize, "--updates", "1", "--batch", "1"]) == 0
    assert edgediff_main(["export", "onnx", str(q), "--out", str(bundle)]) == 0
    meta = json.loads((q / "edgediff_meta.json").read_text())
    quant = load_bundle(bundle).manifest.quant
    per_step = method != "ptq"  # ptq calibrates static activation scales
    assert quant.step_table == (meta["num_steps"] if per_step else None)
    assert (quant.method, quant.label) == (method, "W4A8")
    capsys.readouterr()
    assert run_main(["info", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert f"quant       {method} W4A8, {quant.mean_weight_bits:.2f} mean weight bits" in out
    assert run_main(["sample", str(bundle), "--num", "1", "--out", str(tmp_path / "g.png")]) == 0
    if per_step:  # any other step count is refused in one line
        assert run_main(["sample", str(bundle), "--steps", "20", "--out", str(tmp_path / "h.png")]) == 2
        assert f"pass --steps {meta['num_steps']}" in capsys.readouterr().err
