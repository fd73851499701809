"""Prompt -> image bundles from a tiny Stable-Diffusion-layout pipeline folder: export, the
torch-free `edgediff-run sample --prompt`, parity per component and end to end, the PSNR against
diffusers' StableDiffusionPipeline, and the one-line errors."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from edgediff_export.cli import main as edgediff  # noqa: E402
from edgediff_runtime.cli import main as run  # noqa: E402
from tests.edgediff.models.tiny import save_sd_pipeline  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
STEPS = 4
PROMPT = "a photo of a red cat"


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory) -> Path:
    return save_sd_pipeline(tmp_path_factory.mktemp("pipe") / "tiny-sd")


@pytest.fixture(scope="module")
def fp_bundle(pipe_dir: Path) -> Path:
    out = pipe_dir.parent / "fp.edgediff"
    argv = ["export", "onnx", str(pipe_dir), "--fp", "--out", str(out), "--steps", str(STEPS)]
    assert edgediff([*argv, "--golden-samples", "1"]) == 0
    return out


def psnr(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)


def test_bundle_lists_every_component_in_order(fp_bundle: Path):
    manifest = json.loads((fp_bundle / "manifest.json").read_text())
    pipe = manifest["pipeline"]
    assert pipe["order"] == ["tokenizer", "text_encoder", "denoiser", "vae_decoder"]
    files = {c["name"]: c["file"] for c in pipe["components"]}
    assert files["denoiser"] == "model.onnx" and files["tokenizer"] == "tokenizer/tokenizer.json"
    for rel in [*files.values(), "reference/pipeline_golden.npz", "reference/golden.npz"]:
        assert rel in manifest["files"] and (fp_bundle / rel).is_file()
    text = next(c for c in pipe["components"] if c["name"] == "text_encoder")
    assert text["outputs"][0]["shape"][-1] == manifest["conditioning"]["shape"][-1] == 16
    assert pipe["max_length"] == 16 and pipe["image_shape"] == [3, 16, 16]
    assert manifest["sampler"]["guidance_scale"] == 7.5
    # the export replayed every component through ONNX Runtime and derived bounded tolerances
    assert pipe["report"]["token_ids_equal"] is True
    assert pipe["tolerances"]["image_psnr_min"] >= 40.0


def test_parity_per_component_and_end_to_end(fp_bundle: Path, tmp_path: Path, capsys):
    assert run(["info", str(fp_bundle)]) == 0
    assert (
        "tokenizer (-) -> text_encoder (fp32) -> denoiser (FP32) -> vae_decoder (fp32)"
        in capsys.readouterr().out
    )
    assert run(["parity", str(fp_bundle), "--json", str(tmp_path / "p.json")]) == 0
    report = json.loads((tmp_path / "p.json").read_text())
    names = {c["name"] for c in report["pipeline"]["checks"]}
    assert names == {"token_ids_equal", "text_embedding_max_abs", "vae_psnr_min", "image_psnr_min"}
    assert "prompt -> image PSNR" in capsys.readouterr().out


def test_parity_fails_when_the_text_encoder_output_is_wrong(fp_bundle: Path, tmp_path: Path):
    """A golden reference from a different text encoder must fail the component check."""
    from edgediff_runtime.bundle import load_bundle
    from edgediff_runtime.parity import load_pipeline_golden, pipeline_parity

    bundle = load_bundle(fp_bundle, need_golden=True)
    golden = load_pipeline_golden(bundle)
    golden["text_embeddings"] = golden["text_embeddings"] + 1e-3
    report = pipeline_parity(bundle, golden=golden)
    failed = {c["name"] for c in report["checks"] if not c["passed"]}
    assert failed == {"text_embedding_max_abs"} and not report["passed"]


def test_prompt_image_matches_diffusers_stable_diffusion_pipeline(fp_bundle: Path, pipe_dir: Path, tmp_path):
    """FP32 bundle vs StableDiffusionPipeline: same prompt, same initial noise, same DDIM settings."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    npy, png = tmp_path / "img.npy", tmp_path / "img.png"
    argv = ["sample", str(fp_bundle), "--prompt", PROMPT, "--negative-prompt", "blue", "--guidance", "7.5"]
    assert run([*argv, "--steps", str(STEPS), "--seed", "3", "--out", str(png), "--save-npy", str(npy)]) == 0
    ours = (np.load(npy)[0].transpose(1, 2, 0) + 1) / 2  # [-1, 1] CHW -> [0, 1] HWC
    noise = np.random.default_rng(3).standard_normal((1, 4, 8, 8), dtype=np.float32)
    pipe = StableDiffusionPipeline.from_pretrained(pipe_dir, local_files_only=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(
        PROMPT,
        negative_prompt="blue",
        latents=torch.from_numpy(noise),
        num_inference_steps=STEPS,
        guidance_scale=7.5,
        output_type="np",
    ).images[0]
    assert ours.shape == ref.shape == (16, 16, 3)
    assert psnr(ours, ref, 1.0) >= 40.0
    # the PNG is that image in 8 bits, not upscaled (one image, no grid border)
    from PIL import Image

    img = np.asarray(Image.open(png)).astype(np.float64) / 255
    assert img.shape == (16, 16, 3) and np.max(np.abs(img - ours)) <= 0.5 / 255 + 1e-6
    # a different prompt gives a different image (the text path is live)
    other = tmp_path / "other.npy"
    argv = ["sample", str(fp_bundle), "--prompt", "a green tree", "--steps", str(STEPS), "--seed", "3"]
    assert run([*argv, "--out", str(tmp_path / "o.png"), "--save-npy", str(other)]) == 0
    assert psnr(np.load(other), np.load(npy), 2.0) < 40.0


def test_sequential_and_together_loading_give_the_same_image(fp_bundle: Path, tmp_path: Path):
    outs = {}
    for mode in ("sequential", "together"):
        npy = tmp_path / f"{mode}.npy"
        argv = ["sample", str(fp_bundle), "--prompt", PROMPT, "--steps", "2", "--load", mode]
        assert run([*argv, "--num", "2", "--out", str(tmp_path / f"{mode}.png"), "--save-npy", str(npy)]) == 0
        outs[mode] = np.load(npy)
    assert outs["sequential"].shape == (2, 3, 16, 16)
    np.testing.assert_array_equal(outs["sequential"], outs["together"])


def test_long_prompt_is_truncated_with_a_warning(fp_bundle: Path, tmp_path: Path, caplog):
    npy = tmp_path / "long.npy"
    long_prompt = " ".join(["cat"] * 40)  # 40 tokens + BOS/EOS > 16
    argv = ["sample", str(fp_bundle), "--prompt", long_prompt, "--steps", "2", "--guidance", "1"]
    with caplog.at_level("WARNING"):
        assert run([*argv, "--out", str(tmp_path / "long.png"), "--save-npy", str(npy)]) == 0
    assert any("truncated" in r.getMessage() and "16 tokens" in r.getMessage() for r in caplog.records)
    # the truncated prompt is the first 14 words: same image as asking for them
    argv = ["sample", str(fp_bundle), "--prompt", " ".join(["cat"] * 14), "--steps", "2", "--guidance", "1"]
    assert run([*argv, "--out", str(tmp_path / "short.png"), "--save-npy", str(tmp_path / "s.npy")]) == 0
    np.testing.assert_array_equal(np.load(npy), np.load(tmp_path / "s.npy"))


def _copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / bundle.name
    shutil.copytree(bundle, dst)
    return dst


def test_missing_component_is_one_line_and_writes_nothing(fp_bundle: Path, tmp_path: Path, capsys):
    bundle = _copy(fp_bundle, tmp_path)
    (bundle / "vae_decoder.onnx").unlink()
    out = tmp_path / "x.png"
    assert run(["sample", str(bundle), "--prompt", PROMPT, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "vae_decoder.onnx is missing" in err
    assert not out.exists()


def test_text_embedding_width_mismatch_is_one_line_at_open(fp_bundle: Path, tmp_path: Path, capsys):
    bundle = _copy(fp_bundle, tmp_path)
    manifest = json.loads((bundle / "manifest.json").read_text())
    text = next(c for c in manifest["pipeline"]["components"] if c["name"] == "text_encoder")
    text["outputs"][0]["shape"][-1] = 32
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "x.png"
    assert run(["sample", str(bundle), "--prompt", PROMPT, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "32 wide but the denoiser takes 16" in err
    assert not out.exists()


def test_prompt_on_a_denoiser_only_bundle_is_one_line(fp_bundle: Path, tmp_path: Path, capsys):
    """A manifest without the pipeline section (every bundle written before it) still reads."""
    from edgediff_runtime.bundle import load_bundle

    bundle = _copy(fp_bundle, tmp_path)
    manifest = json.loads((bundle / "manifest.json").read_text())
    del manifest["pipeline"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert load_bundle(bundle).manifest.pipeline is None
    assert run(["sample", str(bundle), "--prompt", PROMPT, "--out", str(tmp_path / "x.png")]) == 2
    assert "no text encoder or tokenizer" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


NO_TORCH = textwrap.dedent(
    """
    import sys
    BLOCKED = {"torch", "diffusers", "transformers", "edgediff", "edgediff_export"}

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(name + " is blocked in this test")
            return None

    sys.meta_path.insert(0, Blocker())
    from edgediff_runtime.cli import main
    assert main(["sample", sys.argv[1], "--prompt", "a dog", "--steps", "2", "--out", sys.argv[2]]) == 0
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not leaked, leaked
    print("ok")
    """
)


def test_sample_prompt_runs_without_torch_or_transformers(fp_bundle: Path, tmp_path: Path):
    out = tmp_path / "nt.png"
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(fp_bundle), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT / "runtime")},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.stat().st_size > 0


@pytest.mark.slow
def test_quantized_pipeline_folder_exports_the_whole_bundle(pipe_dir: Path, tmp_path: Path, capsys):
    """`quantize --model PIPELINE` keeps a checked reference to the other parts; its export is whole."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPTextModel, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(pipe_dir / "tokenizer")
    te = CLIPTextModel.from_pretrained(pipe_dir / "text_encoder").eval()
    ids = tok(["a cat", "a red house", "a dog", ""], padding="max_length", max_length=16).input_ids
    with torch.no_grad():
        emb = te(torch.tensor(ids))[0]
    save_file({"encoder_hidden_states": emb[:3], "null.encoder_hidden_states": emb[3:]}, tmp_path / "c.st")
    q, bundle = tmp_path / "q", tmp_path / "q.edgediff"
    argv = ["quantize", "--model", str(pipe_dir), "--method", "ptq", "--bits", "W8A8", "--out", str(q)]
    assert edgediff([*argv, "--steps", "4", "--calib-samples", "4", "--cond", str(tmp_path / "c.st")]) == 0
    meta = json.loads((q / "edgediff_meta.json").read_text())
    assert set(meta["pipeline"]["sha256"]) == {"tokenizer", "text_encoder", "vae"}
    assert not (q / "text_encoder").exists()  # a reference, not a copy
    assert (
        edgediff(["export", "onnx", str(q), "--out", str(bundle), "--steps", "4", "--golden-samples", "1"])
        == 0
    )
    manifest = json.loads((bundle / "manifest.json").read_text())
    precisions = {c["name"]: c["precision"] for c in manifest["pipeline"]["components"]}
    assert precisions["denoiser"] == "W8A8" and precisions["text_encoder"] == "fp32"
    assert (
        run(["sample", str(bundle), "--prompt", PROMPT, "--steps", "4", "--out", str(tmp_path / "q.png")])
        == 0
    )
    # a changed part of the source pipeline is refused, and no bundle is written
    copy = tmp_path / "moved"
    shutil.copytree(pipe_dir, copy)
    meta["pipeline"]["root"] = str(copy)
    (copy / "vae" / "config.json").write_text((copy / "vae" / "config.json").read_text() + " ")
    (q / "edgediff_meta.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert edgediff(["export", "onnx", str(q), "--out", str(tmp_path / "bad.edgediff")]) == 2
    assert "changed since" in capsys.readouterr().err
    assert not (tmp_path / "bad.edgediff").exists()


@pytest.mark.slow
def test_fp16_pipeline_bundle_passes_its_own_parity(pipe_dir: Path, tmp_path: Path):
    out = tmp_path / "f16.edgediff"
    argv = ["export", "onnx", str(pipe_dir), "--fp", "--dtype", "fp16", "--device", "jetson-orin-nano-8gb"]
    assert edgediff([*argv, "--out", str(out), "--steps", "4", "--golden-samples", "1"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    comps = {c["name"]: c for c in manifest["pipeline"]["components"]}
    assert comps["text_encoder"]["precision"] == comps["vae_decoder"]["precision"] == "fp16"
    assert comps["vae_decoder"]["inputs"][0]["dtype"] == "float16"
    assert run(["parity", str(out), "--ignore-device"]) == 0


def test_auto_loading_is_sequential_when_3x_the_components_exceed_the_model_memory(fp_bundle, tmp_path):
    from edgediff_runtime.bundle import load_bundle
    from edgediff_runtime.prompts import component_bytes, resolve_load

    bundle = _copy(fp_bundle, tmp_path)
    files = ("text_encoder.onnx", "model.onnx", "vae_decoder.onnx")
    size = sum((bundle / f).stat().st_size for f in files)
    assert component_bytes(load_bundle(bundle)) == size
    manifest = json.loads((bundle / "manifest.json").read_text())
    for memory, expected in ((3 * size / 2**30 * 0.99, "sequential"), (3 * size / 2**30 * 1.01, "together")):
        manifest["device"]["model_memory_gb"] = memory
        (bundle / "manifest.json").write_text(json.dumps(manifest))
        assert resolve_load("auto", load_bundle(bundle)) == expected
    assert resolve_load("sequential", load_bundle(bundle)) == "sequential"
