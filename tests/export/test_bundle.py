"""`edgediff export onnx`: bundles that the runtime verifies and replays, and bad input."""

import json
import shutil

import numpy as np
import pytest

from edgediff.methods import quantize_model
from edgediff.reference.model import build_scheduler, save_pipeline
from edgediff_export.bundle import ExportOptions, export_bundle
from edgediff_export.cli import main as edgediff_main
from edgediff_export.errors import ExportError
from edgediff_runtime.backends import open_backend
from edgediff_runtime.bundle import load_bundle
from edgediff_runtime.devices import devices_dir
from edgediff_runtime.parity import run_parity
from tests.export.helpers import tiny_unet

STEPS = 4
OPTS = ExportOptions(steps=STEPS, golden_samples=4)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    save_pipeline(tiny_unet(), build_scheduler(), root / "fp")
    quantize_model(root / "fp", "ptq", "W8A8", root / "q", num_steps=STEPS, progress=False)
    return root


@pytest.fixture(scope="module")
def w8a8_bundle(folders):
    return export_bundle(folders / "q", folders / "w8a8.edgediff", OPTS, progress=False)


def test_quantized_bundle_verifies_and_passes_its_derived_parity(w8a8_bundle):
    bundle = load_bundle(w8a8_bundle, verify=True)
    manifest = bundle.manifest
    assert {"model.onnx", "reference/golden.npz"} <= set(manifest.files)
    assert manifest.sampler.steps == STEPS and manifest.sampler.prediction_type == "v_prediction"
    assert manifest.quant.method == "ptq" and manifest.quant.label == "W8A8" and manifest.quant.precision
    assert manifest.quant.step_table is None and manifest.quant.placement == "ort"  # ptq: static scales
    assert "derived at export" in manifest.parity.tolerance_source
    measured = manifest.parity.report["level2"]["latent_max_abs"]
    assert manifest.parity.tolerances["latent_max_abs"] == pytest.approx(max(1e-5, 4 * measured))
    report = run_parity(bundle, open_backend("ort", bundle.model_path))
    assert report["passed"] and report["level3"] is not None


def test_fp_bundle_latents_match_pytorch_within_1e4(folders):
    out = export_bundle(
        folders / "fp",
        folders / "fp.edgediff",
        ExportOptions(steps=STEPS, golden_samples=4, allow_fp=True),
        progress=False,
    )
    bundle = load_bundle(out)
    report = run_parity(bundle, open_backend("ort", bundle.model_path))
    assert report["level2"]["latent_max_abs"] < 1e-4
    assert all(step["max_abs"] < 1e-4 for step in report["level2"]["per_step"])


def test_non_quantized_folder_needs_fp_flag(folders):
    out = folders / "nope.edgediff"
    with pytest.raises(ExportError, match="not a quantized folder"):
        export_bundle(folders / "fp", out, OPTS)
    assert not out.exists()


def test_corrupt_safetensors_fails_cleanly(folders, tmp_path):
    bad = tmp_path / "q-corrupt"
    shutil.copytree(folders / "q", bad)
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(Exception, match="model.safetensors") as exc:
        export_bundle(bad, tmp_path / "b.edgediff", OPTS)
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "b.edgediff").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".b.edgediff")]


def test_unwritable_output_path(folders, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(Exception, match="is a file, not a folder"):
        export_bundle(folders / "q", blocker / "b.edgediff", OPTS)


def test_opset_and_device_checks(folders, tmp_path):
    with pytest.raises(ExportError, match="opset 99"):
        export_bundle(folders / "q", tmp_path / "a.edgediff", ExportOptions(steps=STEPS, opset=99))
    with pytest.raises(ExportError, match="needs a TensorRT device"):
        export_bundle(folders / "q", tmp_path / "b.edgediff", ExportOptions(steps=STEPS, placement="trt"))
    tiny = tmp_path / "tiny-device.toml"
    text = (devices_dir() / "x86-cpu.toml").read_text().replace('name = "x86-cpu"', 'name = "tiny-device"')
    text = "\n".join(
        "model_memory_gb = 0.0001" if line.startswith("model_memory_gb") else line
        for line in text.splitlines()
    )
    tiny.write_text(text + "\n")
    with pytest.raises(ExportError, match="tiny-device leaves"):
        export_bundle(folders / "q", tmp_path / "c.edgediff", ExportOptions(steps=STEPS, device=str(tiny)))
    assert not any(p.suffix == ".edgediff" for p in tmp_path.iterdir())


def test_cli_one_line_error_for_missing_model(tmp_path, capsys):
    code = edgediff_main(["export", "onnx", str(tmp_path / "missing"), "--out", str(tmp_path / "x.edgediff")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "missing" in err[0]


def test_golden_file_holds_every_step(w8a8_bundle):
    golden = np.load(w8a8_bundle / "reference" / "golden.npz")
    assert golden["latents"].shape[0] == STEPS and golden["noise"].shape == golden["final"].shape
    manifest = json.loads((w8a8_bundle / "manifest.json").read_text())
    assert manifest["device"]["name"] == "x86-cpu"


def test_validate_reports_every_quantized_layer(folders, w8a8_bundle):
    from edgediff.models.loading import load_model
    from edgediff.quant import quant_layers
    from edgediff_export.validate import validate_layers

    rows = validate_layers(folders / "q", w8a8_bundle, max_steps=2, ort_optimize=False)
    assert {r["layer"] for r in rows} == set(quant_layers(load_model(folders / "q").unet))
    assert rows == sorted(rows, key=lambda r: r["min_sqnr_db"])
    # Unfused Q/DQ emulation vs the same lowering in PyTorch: only rounding ties differ.
    assert rows[0]["min_sqnr_db"] > 30.0


def test_2bit_weights_ship_in_uint2_and_run_with_constant_folding_off(folders):
    """W2 on x86-cpu: uint2 containers (opset 25), the manifest turns ConstantFolding off, the
    runtime replays the bundle within its derived tolerances, and it is smaller than uint4 would be."""
    quantize_model(folders / "fp", "ptq", "W2A8", folders / "q2", num_steps=STEPS, progress=False)
    out = export_bundle(folders / "q2", folders / "w2.edgediff", OPTS, progress=False)
    bundle = load_bundle(out, verify=True)
    m = bundle.manifest
    assert m.onnx.opset == 25 and m.requirements.onnxruntime_min == "1.32"
    assert "ConstantFolding" in m.onnx.ort_disabled_optimizers
    assert m.quant.weight_containers.get("uint2", 0) > 0
    backend = open_backend("ort", bundle.model_path, disabled_optimizers=m.onnx.ort_disabled_optimizers)
    assert run_parity(bundle, backend)["passed"]
    w4 = export_bundle(
        folders / "q2",
        folders / "w2-opset21.edgediff",
        ExportOptions(steps=STEPS, golden_samples=4, opset=21, device="jetson-orin-nano-8gb"),
        progress=False,
    )
    assert "uint2" not in load_bundle(w4).manifest.quant.weight_containers
    assert (out / "model.onnx").stat().st_size < (w4 / "model.onnx").stat().st_size


def test_symmetric_weights_export_as_int8_and_keep_parity(folders):
    """`--symmetric-weights`: the ort bundle's 8-bit weights are int8 with zero point 0 (u8s8 path)."""
    import onnx

    q = folders / "q-sym"
    meta = quantize_model(
        folders / "fp", "ptq", "W8A8", q, num_steps=STEPS, progress=False, symmetric_weights=True
    )
    assert meta["bits"] == "W8A8" and '"w_symmetric": true' in (q / "recipe.json").read_text()
    out = export_bundle(q, folders / "w8a8-sym.edgediff", OPTS, progress=False)
    model = onnx.load(str(out / "model.onnx"))
    weights = {n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    types = {i.data_type for i in model.graph.initializer if i.name in weights}
    assert onnx.TensorProto.INT8 in types and onnx.TensorProto.UINT8 not in types
    bundle = load_bundle(out)
    assert run_parity(bundle, open_backend("ort", bundle.model_path))["passed"]


def test_mpqdmv2_w2a4_bundle_has_residual_nodes_and_passes_parity(folders):
    """An MPQ-DMv2 model (binary residual, OOLRI additive LoRA, per-step scales,
    pre-scaling) exports with the custom residual node and replays within its tolerances."""
    import onnx

    q = folders / "q-mpqdmv2"
    quantize_model(
        folders / "fp", "mpqdmv2", "W2A4", q, num_steps=STEPS, updates=STEPS, batch=2, progress=False
    )
    with pytest.raises(ExportError, match=f"per-step activation tables for {STEPS} steps but --steps is 3"):
        export_bundle(q, folders / "mismatch.edgediff", ExportOptions(steps=3), progress=False)
    # no --steps: the bundle follows the folder's per-step table
    out = export_bundle(q, folders / "mpqdmv2.edgediff", ExportOptions(golden_samples=4), progress=False)
    bundle = load_bundle(out, verify=True)
    quant = bundle.manifest.quant
    assert (quant.method, quant.label, quant.step_table) == ("mpqdmv2", "W2A4", STEPS)
    assert bundle.manifest.sampler.steps == STEPS
    # W8 edges, FP islands, sign bits and the additive LoRA all cost more than the 2-bit codes
    assert quant.mean_weight_bits > 2.0
    assert any(c.name.startswith("ResidualBinary") for c in bundle.manifest.onnx.custom_ops)
    model = onnx.load(str(out / "model.onnx"))
    residual = [n for n in model.graph.node if n.domain == "edgediff"]
    assert residual
    # the 2-bit codes reach each residual node through a Cast from a 2- or 4-bit container
    casts = {n.output[0]: n for n in model.graph.node if n.op_type == "Cast"}
    narrow = {t.name: t.data_type for t in model.graph.initializer}
    for node in residual:
        assert narrow[casts[node.input[1]].input[0]] in (onnx.TensorProto.UINT2, onnx.TensorProto.UINT4)
    backend = open_backend(
        "ort", bundle.model_path, disabled_optimizers=bundle.manifest.onnx.ort_disabled_optimizers
    )
    assert run_parity(bundle, backend)["passed"]


def test_runtime_info_shows_what_the_exporter_wrote(w8a8_bundle, capsys):
    """Exporter -> `edgediff-run info` on a real bundle: method, label and stored bits."""
    from edgediff_runtime.cli import main as run_main

    assert run_main(["info", str(w8a8_bundle)]) == 0
    out = capsys.readouterr().out
    quant = load_bundle(w8a8_bundle).manifest.quant
    # W8 codes everywhere, no FP layer in the default recipe: exactly 8 stored bits per weight
    assert quant.mean_weight_bits == 8.0
    assert "quant       ptq W8A8, 8.00 mean weight bits, static scales, placement ort" in out
    assert "weights     containers: " in out


def test_validate_cli_prints_a_verdict_line(folders, w8a8_bundle, capsys):
    argv = ["export", "validate", str(folders / "q"), str(w8a8_bundle), "--max-steps", "1", "--no-fusion"]
    assert edgediff_main(argv) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("PASS: worst layer ") and "dB >= 30 dB (0 of " in last
    assert edgediff_main([*argv, "--min-sqnr", "1000"]) == 1  # no layer reaches 1000 dB
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("FAIL: worst layer ") and "< 1000 dB" in last


def test_manifest_records_the_source_folder_digest(folders, w8a8_bundle):
    from edgediff.quant.io import folder_digest

    recipe = load_bundle(w8a8_bundle).manifest.quant.recipe
    assert recipe["source_digest"] == folder_digest(folders / "q")
