"""Interop: `export onnx PIPELINE --layout optimum` loads in Hugging Face Optimum's
ORTStableDiffusionPipeline and gives the image `edgediff-run sample --prompt` gives.

optimum-onnx pins an older transformers (< 4.58) than this project's, and that transformers an
older huggingface-hub than the installed diffusers accepts, so Optimum runs in its own virtual
environment: the test environment's packages are visible through a `.pth` file, and
optimum-onnx, transformers < 4.58 and diffusers < 0.36 are installed over them (network needed
once; the venv is cached under ~/.cache). Skipped with a one-line reason when it cannot be built.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")

from edgediff_export.cli import main as edgediff  # noqa: E402
from edgediff_runtime.cli import main as run  # noqa: E402
from tests.edgediff.models.tiny import save_sd_pipeline  # noqa: E402

pytestmark = pytest.mark.slow

VENV = Path(os.environ.get("EDGEDIFF_OPTIMUM_VENV", Path.home() / ".cache" / "edgediff-optimum-venv"))
REQUIREMENTS = ["optimum-onnx[onnxruntime]==0.1.0", "transformers>=4.36,<4.58", "diffusers>=0.30,<0.36"]
SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np, torch
    from diffusers import DDIMScheduler
    from optimum.onnxruntime import ORTStableDiffusionPipeline

    folder, prompt, seed, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    pipe = ORTStableDiffusionPipeline.from_pretrained(folder)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    noise = np.random.default_rng(seed).standard_normal((1, 4, 8, 8), dtype=np.float32)
    image = pipe(prompt, negative_prompt="blue", latents=torch.from_numpy(noise), num_inference_steps=4,
                 guidance_scale=7.5, output_type="np").images[0]
    np.save(out, np.asarray(image, dtype=np.float32))
    """
)


def _optimum_python() -> Path:
    python = VENV / "bin" / "python"
    check = [str(python), "-c", "from optimum.onnxruntime import ORTStableDiffusionPipeline"]
    if python.is_file() and subprocess.run(check, capture_output=True, timeout=300).returncode == 0:
        return python
    steps = [[sys.executable, "-m", "venv", "--clear", str(VENV)]]
    steps.append([str(python), "-m", "pip", "install", "-q", *REQUIREMENTS])
    for cmd in steps:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"cannot build the optimum-onnx venv: {type(exc).__name__}")
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1][:160]
            pytest.skip(f"cannot build the optimum-onnx venv ({cmd[2]}): {last}")
        if cmd[2] == "venv":  # the test environment's packages, under the venv's own
            site = Path(sysconfig.get_paths(vars={"base": str(VENV)})["purelib"])
            (site / "zz_edgediff_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    if subprocess.run(check, capture_output=True, timeout=300).returncode != 0:
        pytest.skip("the optimum-onnx venv was built but cannot import ORTStableDiffusionPipeline")
    return python


def test_optimum_loads_the_layout_and_matches_the_runtime(tmp_path: Path):
    python = _optimum_python()
    pipe = save_sd_pipeline(tmp_path / "tiny-sd")
    folder, bundle = tmp_path / "optimum", tmp_path / "b.edgediff"
    argv = ["export", "onnx", str(pipe), "--fp", "--steps", "4", "--golden-samples", "1"]
    assert edgediff([*argv, "--layout", "optimum", "--out", str(folder)]) == 0
    assert (folder / "unet" / "model.onnx").is_file() and (folder / "vae_decoder" / "config.json").is_file()
    assert edgediff([*argv, "--out", str(bundle)]) == 0
    theirs = tmp_path / "optimum.npy"
    proc = subprocess.run(
        [str(python), "-c", SCRIPT, str(folder), "a photo of a red cat", "3", str(theirs)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    ours = tmp_path / "ours.npy"
    sample = ["sample", str(bundle), "--prompt", "a photo of a red cat", "--negative-prompt", "blue"]
    assert (
        run(
            [
                *sample,
                "--steps",
                "4",
                "--seed",
                "3",
                "--out",
                str(tmp_path / "o.png"),
                "--save-npy",
                str(ours),
            ]
        )
        == 0
    )
    a, b = np.load(theirs), (np.load(ours)[0].transpose(1, 2, 0) + 1) / 2
    assert a.shape == b.shape == (16, 16, 3)
    assert 10 * math.log10(1 / max(float(np.mean((a - b) ** 2)), 1e-30)) >= 40.0
