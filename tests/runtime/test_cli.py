"""``edgediff-run`` end to end on the tiny bundle: outputs, exit codes, one-line errors, no partial files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgediff_runtime.bundle import load_bundle, write_manifest
from edgediff_runtime.cli import main
from edgediff_runtime.devices import load_profile
from tests.runtime.conftest import STEPS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, needle: str) -> None:
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert needle in err, err
    assert "Traceback" not in err


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def retarget(bundle: Path, profile: str) -> None:
    """Embed another device profile and re-sign the manifest (a valid bundle for another device)."""
    b = load_bundle(bundle)
    b.manifest.device = load_profile(profile).to_dict()
    write_manifest(bundle, b.manifest)


@pytest.mark.parametrize("sub", [[], ["info"], ["sample"], ["parity"], ["bench"]])
def test_help_everywhere(sub, capsys):
    code, out, _ = run([*sub, "--help"], capsys)
    assert code == 0
    assert "usage: edgediff-run" in out


def test_usage_errors_are_one_line(tiny_bundle, capsys):
    code, _, err = run(["sample", tiny_bundle], capsys)
    assert_one_line_error(code, err, "arguments are required: --out; see `edgediff-run sample --help`")
    code, _, err = run(["sample", tiny_bundle, "--out", "x.png", "--steps", "many"], capsys)
    assert_one_line_error(code, err, "argument --steps: invalid int value: 'many'")
    code, _, err = run(["frobnicate"], capsys)
    assert_one_line_error(code, err, "invalid choice: 'frobnicate'")


def test_bad_output_paths_fail_before_work(tiny_bundle, tmp_path, capsys):
    code, _, err = run(["sample", tiny_bundle, "--out", tmp_path / "grid.jpg"], capsys)
    assert_one_line_error(code, err, "--out must end in .png, got grid.jpg")
    code, _, err = run(["parity", tiny_bundle, "--json", tmp_path / "missing" / "r.json"], capsys)
    assert_one_line_error(code, err, "does not exist; create it first")
    assert leftovers(tmp_path) == []


def test_info(tiny_bundle, capsys):
    code, out, _ = run(["info", tiny_bundle], capsys)
    assert code == 0
    assert "sampler     ddim, 5 steps, v_prediction, squaredcos_cap_v2" in out
    assert "step input  step" in out and "device      x86-cpu" in out
    assert "edgediff::ResidualBinaryLinear" in out
    code, out, _ = run(["info", tiny_bundle, "--json"], capsys)
    assert code == 0 and json.loads(out)["name"] == "tiny"


def test_sample_writes_a_deterministic_png_grid(tiny_bundle, tmp_path, capsys):
    from PIL import Image

    code, out, err = run(
        [
            "sample",
            tiny_bundle,
            "--seed",
            3,
            "--num",
            4,
            "--out",
            tmp_path / "a.png",
            "--threads",
            1,
            "--save-npy",
            tmp_path / "a.npy",
            "--scale",
            1,
        ],
        capsys,
    )
    assert code == 0, err
    assert f"4 images, {STEPS} steps" in out
    data = (tmp_path / "a.png").read_bytes()
    assert data.startswith(PNG_MAGIC)
    img = np.asarray(Image.open(tmp_path / "a.png"))
    assert img.shape == (19, 19)  # 2 x 2 tiles of 8 x 8 with 1 px borders
    raw = np.load(tmp_path / "a.npy")
    expect = np.clip((raw[0, 0] + 1) * 127.5, 0, 255).round().astype(np.uint8)
    np.testing.assert_array_equal(img[1:9, 1:9], expect)
    # default scale: nearest upscale to a grid >= 512 px wide (8 x 8 tiles: 19 px * 27 = 513 px)
    assert run(["sample", tiny_bundle, "--seed", 3, "--num", 4, "--out", tmp_path / "b.png"], capsys)[0] == 0
    big = np.asarray(Image.open(tmp_path / "b.png"))
    np.testing.assert_array_equal(big, img.repeat(27, axis=0).repeat(27, axis=1))
    assert (
        run(
            ["sample", tiny_bundle, "--seed", 4, "--num", 4, "--out", tmp_path / "c.png", "--scale", 1],
            capsys,
        )[0]
        == 0
    )
    assert (tmp_path / "c.png").read_bytes() != data
    assert leftovers(tmp_path) == ["a.npy", "a.png", "b.png", "c.png"]


@pytest.mark.parametrize("steps", [0, -2])
def test_sample_bad_steps(tiny_bundle, tmp_path, capsys, steps):
    code, out, err = run(["sample", tiny_bundle, "--steps", steps, "--out", tmp_path / "g.png"], capsys)
    assert_one_line_error(code, err, f"steps must be >= 1, got {steps}")
    assert leftovers(tmp_path) == []


def test_sample_failure_midway_leaves_nothing_and_keeps_old_file(tiny_bundle, tmp_path, capsys, monkeypatch):
    from edgediff_runtime import pipeline
    from edgediff_runtime.errors import RuntimeStageError

    out = tmp_path / "grid.png"
    out.write_bytes(b"previous")
    calls = []
    real_make_feeds = pipeline.make_feeds

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeStageError("simulated device failure at step 2")
        return real_make_feeds(*a, **k)

    monkeypatch.setattr(pipeline, "make_feeds", failing)
    code, _, err = run(["sample", tiny_bundle, "--out", out], capsys)
    assert_one_line_error(code, err, "simulated device failure at step 2")
    assert out.read_bytes() == b"previous"
    assert leftovers(tmp_path) == ["grid.png"]


def test_missing_bundle(tmp_path, capsys):
    code, _, err = run(["sample", tmp_path / "nope.edgediff", "--out", tmp_path / "g.png"], capsys)
    assert_one_line_error(code, err, "does not exist; check the path")
    assert leftovers(tmp_path) == []


def test_truncated_bundle(bundle_copy, tmp_path, capsys):
    model = bundle_copy / "model.onnx"
    model.write_bytes(model.read_bytes()[:-100])
    code, _, err = run(["sample", bundle_copy, "--out", tmp_path / "g.png"], capsys)
    assert_one_line_error(code, err, "checksum mismatch for model.onnx: the file was modified or truncated")
    assert not (tmp_path / "g.png").exists()


def test_tampered_bundle(bundle_copy, tmp_path, capsys):
    model = bundle_copy / "model.onnx"
    data = bytearray(model.read_bytes())
    data[-5] ^= 0xFF
    model.write_bytes(bytes(data))
    code, _, err = run(["parity", bundle_copy, "--json", tmp_path / "r.json"], capsys)
    assert_one_line_error(code, err, "checksum mismatch for model.onnx")
    assert not (tmp_path / "r.json").exists()


def test_incomplete_bundle(bundle_copy, tmp_path, capsys):
    (bundle_copy / "model.onnx").unlink()
    code, _, err = run(["bench", bundle_copy], capsys)
    assert_one_line_error(code, err, "bundle tiny.edgediff is incomplete: model.onnx is missing; re-export")


def test_bundle_for_another_device(bundle_copy, tmp_path, capsys):
    retarget(bundle_copy, "jetson-orin-nano-8gb")
    out = tmp_path / "g.png"
    code, _, err = run(["sample", bundle_copy, "--out", out], capsys)
    assert_one_line_error(
        code,
        err,
        "bundle targets jetson-orin-nano-8gb (aarch64, TensorRT 10.3) but this host is x86_64; "
        "re-export with --device x86-cpu or pass --ignore-device",
    )
    assert not out.exists()
    code, _, err = run(["sample", bundle_copy, "--out", out, "--ignore-device", "--num", 1], capsys)
    assert code == 0, err
    assert out.read_bytes().startswith(PNG_MAGIC)


def test_trt_backend_absent(tiny_bundle, tmp_path, capsys):
    code, _, err = run(["sample", tiny_bundle, "--backend", "trt", "--out", tmp_path / "g.png"], capsys)
    assert_one_line_error(code, err, "bundle targets x86-cpu, which has no TensorRT; use --backend ort")
    pytest.importorskip("onnxruntime")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    argv = ["sample", tiny_bundle, "--backend", "trt", "--ignore-device", "--out", tmp_path / "g.png"]
    code, _, err = run(argv, capsys)
    assert_one_line_error(code, err, "TensorRT is not installed on this host; use --backend ort or install")
    assert leftovers(tmp_path) == []


def test_parity_pass_json_and_plot(tiny_bundle, tmp_path, capsys):
    report_path, plot_path = tmp_path / "parity.json", tmp_path / "parity.png"
    code, out, err = run(["parity", tiny_bundle, "--json", report_path, "--plot", plot_path], capsys)
    assert code == 0, err
    assert out.strip().endswith("PASS")
    report = json.loads(report_path.read_text())
    assert report["passed"] is True
    assert len(report["level2"]["per_step"]) == STEPS
    assert [c["name"] for c in report["checks"]] == [
        "latent_max_abs",
        "latent_psnr_min",
        "final_max_abs",
        "final_psnr_min",
    ]
    assert report["level2"]["latent_max_abs"] < 1e-4
    assert report["level3"]["psnr_vs_fp"] == pytest.approx(report["level3"]["pytorch_psnr_vs_fp"], abs=0.01)
    assert plot_path.read_bytes().startswith(PNG_MAGIC)
    from PIL import Image

    assert Image.open(plot_path).size == (760, 560)


def test_parity_fail_exits_1(bundle_copy, tmp_path, capsys):
    b = load_bundle(bundle_copy)
    b.manifest.parity.tolerances = {"latent_max_abs": 1e-12, "final_psnr_min": 80.0}
    write_manifest(bundle_copy, b.manifest)
    code, out, _ = run(["parity", bundle_copy, "--json", tmp_path / "r.json"], capsys)
    assert code == 1
    assert "FAIL latent_max_abs" in out and out.strip().endswith("FAIL")
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["passed"] is False
    assert [c["passed"] for c in report["checks"]] == [False, True]


def test_parity_without_golden_is_an_error(bundle_copy, tmp_path, capsys):
    b = load_bundle(bundle_copy)
    (bundle_copy / "reference" / "golden.npz").unlink()
    write_manifest(bundle_copy, b.manifest)
    code, _, err = run(["parity", bundle_copy, "--plot", tmp_path / "p.png"], capsys)
    assert_one_line_error(code, err, "has no reference/golden.npz; re-export it with golden references")
    assert leftovers(tmp_path) == ["tiny.edgediff"]


def test_parity_detects_sampler_mismatch(bundle_copy, capsys):
    b = load_bundle(bundle_copy)
    b.manifest.sampler.timestep_spacing = "leading"
    write_manifest(bundle_copy, b.manifest)
    code, _, err = run(["parity", bundle_copy], capsys)
    assert_one_line_error(code, err, "the manifest's sampler does not match the recording")


def test_bench(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code, text, err = run(
        [
            "bench",
            tiny_bundle,
            "--iters",
            5,
            "--warmup",
            1,
            "--image-runs",
            1,
            "--batch",
            2,
            "--steps",
            STEPS,
            "--json",
            out,
        ],
        capsys,
    )
    assert code == 0, err
    result = json.loads(out.read_text())
    call = result["unet_call_ms"]
    assert call["n"] == 5 and 0 < call["p50"] <= call["p90"] <= call["p99"]
    assert result["image_ms"]["n"] == 1 and result["steps"] == STEPS and result["batch"] == 2
    assert result["peak_rss_mb"] > 10
    assert "model call  p50" in text
    code, _, err = run(["bench", tiny_bundle, "--iters", 0], capsys)
    assert_one_line_error(code, err, "--iters must be >= 1, got 0")


@pytest.mark.parametrize("steps", [STEPS - 2, STEPS + 1])
@pytest.mark.parametrize("command", ["sample", "bench"])
def test_steps_outside_the_per_step_table_are_refused(tiny_bundle, tmp_path, capsys, command, steps):
    extra = ["--out", tmp_path / "g.png"] if command == "sample" else ["--iters", 1]
    code, _, err = run([command, tiny_bundle, "--steps", steps, *extra], capsys)
    assert_one_line_error(code, err, f"per-step activation scales for exactly {STEPS} steps, not {steps}")
    assert f"pass --steps {STEPS}" in err
    assert not (tmp_path / "g.png").exists()


def test_sample_and_info_do_not_need_the_golden_references(bundle_copy, tmp_path, capsys):
    (bundle_copy / "reference" / "golden.npz").unlink()
    code, out, err = run(["info", bundle_copy], capsys)
    assert code == 0, err
    assert "golden references: left out (parity needs them)" in out
    code, out, err = run(["sample", bundle_copy, "--out", tmp_path / "g.png", "--num", 1], capsys)
    assert code == 0, err
    code, _, err = run(["parity", bundle_copy], capsys)
    assert_one_line_error(code, err, "reference/golden.npz is missing")


def test_info_shows_method_bits_and_step_table(tiny_bundle, capsys):
    code, out, err = run(["info", tiny_bundle], capsys)
    assert code == 0, err
    line = f"quant       fp FP32, 32.00 mean weight bits, per-step scales for {STEPS} steps, placement ort"
    assert line in out
