"""`edgediff export customize` and the bundle on ONNX Runtime: parity with PyTorch MCA-Ctrl, the
runtime command, and parity failing when the control is not applied."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edgediff_export.cli import main as edgediff_main
from edgediff_runtime.bundle import read_manifest, write_manifest
from edgediff_runtime.cli import main as run_main
from edgediff_runtime.customize_spec import CUSTOMIZE_GOLDEN, CUSTOMIZE_JSON

from ..edgediff.customize.tiny_canvas import loaded_canvas

STEPS = 6


def test_export_customize_refuses_half_a_schedule(tmp_path, capsys):
    code = edgediff_main(
        [
            "export",
            "customize",
            "--model",
            "reference:canvas32",
            "--out",
            str(tmp_path / "b.edgediff"),
            "--sagi-steps",
            "3",
        ]
    )
    assert code == 2
    assert "give both --sagi-steps and --salq-steps" in capsys.readouterr().err
    assert not (tmp_path / "b.edgediff").exists()


def test_export_customize_refuses_guidance_without_a_null_condition(tmp_path):
    from edgediff_export.customize import CustomizeExportOptions, export_customize_bundle
    from edgediff_export.errors import ExportError

    loaded = loaded_canvas()
    loaded.label_table = None  # raw embeddings, no null embedding given
    with pytest.raises(ExportError, match="--null-embedding"):
        export_customize_bundle(loaded, tmp_path / "b.edgediff", CustomizeExportOptions(guidance=3.0))
    assert not (tmp_path / "b.edgediff").exists()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from edgediff_export.customize import CustomizeExportOptions, export_customize_bundle

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("customize") / "tiny.edgediff"
    return export_customize_bundle(loaded_canvas(), out, CustomizeExportOptions(steps=STEPS, guidance=3.0))


@pytest.mark.slow
def test_bundle_is_standard_ops_and_passes_parity(bundle, capsys):
    import onnx

    model = onnx.load(str(bundle / "model.onnx"))
    ops = {n.op_type for n in model.graph.node}
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}
    assert {"MatMul", "Softmax", "Where"} <= ops
    assert [i.name for i in model.graph.input][-2:] == ["mca_masks", "mca_mode"]
    manifest = read_manifest(bundle)
    assert manifest.parity.bounds["within"]
    assert manifest.parity.report["level2"]["latent_max_abs"] < 1e-4
    assert run_main(["parity", str(bundle)]) == 0
    assert capsys.readouterr().out.strip().endswith("PASS")


@pytest.mark.slow
def test_runtime_command_reproduces_the_golden_case(bundle, tmp_path, capsys):
    golden = np.load(bundle / CUSTOMIZE_GOLDEN)
    paths = {}
    for key in ("subject", "condition", "subject_mask", "condition_mask"):
        paths[key] = tmp_path / f"{key}.npy"
        np.save(paths[key], golden[key])
    out = tmp_path / "out.npy"
    args = ["customize", str(bundle), "--subject", str(paths["subject"])]
    args += [
        "--condition",
        str(paths["condition"]),
        "--subject-mask",
        str(paths["subject_mask"]),
        "--condition-mask",
        str(paths["condition_mask"]),
    ]
    assert run_main([*args, "--labels", "0,1", "--out", str(out)]) == 0
    image = np.load(out)
    tol = read_manifest(bundle).parity.tolerances["final_max_abs"]
    assert np.abs(image - golden["image"]).max() <= tol
    m_c = golden["condition_mask"]
    outside = np.clip(golden["condition_states"][-1][:, ~m_c], -1, 1)  # the condition, kept
    np.testing.assert_allclose(image[:, ~m_c], outside, rtol=0, atol=tol)
    assert run_main([*args, "--labels", "0,1", "--out", str(tmp_path / "out.png")]) == 0
    assert (tmp_path / "out.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()


@pytest.mark.slow
def test_parity_fails_when_the_control_is_switched_off(bundle, tmp_path, capsys):
    copy = tmp_path / "off.edgediff"
    shutil.copytree(bundle, copy)
    spec = json.loads((copy / CUSTOMIZE_JSON).read_text())
    spec["modes"] = [[0] * len(row) for row in spec["modes"]]
    (copy / CUSTOMIZE_JSON).write_text(json.dumps(spec))
    write_manifest(copy, read_manifest(copy))  # new checksums: a consistent bundle without control
    assert run_main(["parity", str(copy)]) == 1
    assert capsys.readouterr().out.strip().endswith("FAIL")


@pytest.mark.slow
def test_raw_embedding_model_bundle_passes_parity_and_runs(tmp_path, capsys):
    """An SD-class conditioning (raw embeddings, no null condition: the sources use the target's)."""
    torch = pytest.importorskip("torch")
    from edgediff_export.customize import CustomizeExportOptions, export_customize_bundle

    torch.set_num_threads(1)
    loaded = loaded_canvas()
    loaded.label_table = None
    out = export_customize_bundle(
        loaded, tmp_path / "emb.edgediff", CustomizeExportOptions(steps=4, cond_tokens=4)
    )
    spec = json.loads((out / CUSTOMIZE_JSON).read_text())
    assert spec["source_conditioning"] == "target"
    assert run_main(["parity", str(out)]) == 0
    golden = np.load(out / CUSTOMIZE_GOLDEN)
    for key in ("subject", "condition", "condition_mask"):
        np.save(tmp_path / f"{key}.npy", golden[key])
    np.save(tmp_path / "cond.npy", golden["cond__encoder_hidden_states"])
    args = ["customize", str(out), "--subject", str(tmp_path / "subject.npy")]
    args += [
        "--condition",
        str(tmp_path / "condition.npy"),
        "--condition-mask",
        str(tmp_path / "condition_mask.npy"),
    ]
    assert run_main([*args, "--cond", str(tmp_path / "cond.npy"), "--out", str(tmp_path / "o.npy")]) == 0
    # no --subject-mask: the whole subject image, which the golden case's centre box is not
    assert np.abs(np.load(tmp_path / "o.npy") - golden["image"]).max() > 1e-3
    np.save(tmp_path / "subject_mask.npy", golden["subject_mask"])
    args += ["--subject-mask", str(tmp_path / "subject_mask.npy")]
    assert run_main([*args, "--cond", str(tmp_path / "cond.npy"), "--out", str(tmp_path / "o.npy")]) == 0
    tol = read_manifest(out).parity.tolerances["final_max_abs"]
    assert np.abs(np.load(tmp_path / "o.npy") - golden["image"]).max() <= tol
    capsys.readouterr()
