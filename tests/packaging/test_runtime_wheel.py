"""The runtime installs alone: both wheels are built, the `edgediff-runtime` wheel goes into a fresh
virtual environment without torch, and its `edgediff-run` runs `info`, `sample` and `parity` on a
W8A8 bundle of the bundled reference model (exported here with the main environment).

numpy, onnxruntime and pillow come from pip's cache or index at install time; nothing is
downloaded at run time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.name != "posix", reason="venv layout (bin/) of POSIX systems"),
]

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ROOT / "runtime" / "edgediff_runtime" / "profiles"
STEPS = 4
SKIP_COPY = shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "*.pyc")


def _run(cmd: list, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run outside the checkout with no PYTHONPATH, so only what is installed can be imported."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "EDGEDIFF_DEVICES")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{' '.join(proc.args)} exited {proc.returncode}: {proc.stderr[-3000:]}"
    return proc


def _top_level(names: list[str]) -> set[str]:
    return {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}


def _wheel_meta(wheel: Path) -> tuple[list[str], list[Requirement], str]:
    """(file names, unconditional Requires-Dist, entry_points.txt) of a wheel."""
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    reqs = [
        Requirement(line.split(":", 1)[1].strip())
        for line in meta.splitlines()
        if line.startswith("Requires-Dist:")
    ]
    return names, [r for r in reqs if r.marker is None], entry_points


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both wheels, built from copies of the sources (the checkout gets no build/ or egg-info)."""
    work = tmp_path_factory.mktemp("wheels")
    runtime_src = work / "runtime-src"
    shutil.copytree(ROOT / "runtime", runtime_src, ignore=SKIP_COPY)
    main_src = work / "main-src"
    main_src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, main_src / name)
    for name in ("edgediff", "export"):
        shutil.copytree(ROOT / name, main_src / name, ignore=SKIP_COPY)
    dist = work / "dist"
    for src in (runtime_src, main_src):
        _ok(_run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dist, src], cwd=work))
    found = {w.name.split("-")[0]: w for w in dist.glob("*.whl")}
    assert set(found) == {"edgediff", "edgediff_runtime"}, sorted(found)
    return found


@pytest.fixture(scope="module")
def runtime_venv(wheels: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with only the runtime wheel (and its dependencies) installed."""
    venv = tmp_path_factory.mktemp("venv") / "runtime-only"
    _ok(_run([sys.executable, "-m", "venv", venv], cwd=venv.parent))
    pip = [venv / "bin" / "python", "-m", "pip", "install", "-q"]
    _ok(_run([*pip, wheels["edgediff_runtime"]], cwd=venv.parent))
    return venv


@pytest.fixture(scope="module")
def w8a8_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A W8A8 ptq bundle of the bundled reference model, few steps, exported with this environment."""
    import torch

    from edgediff_export.cli import main

    work = tmp_path_factory.mktemp("bundle")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert (
            main(
                [
                    "quantize",
                    "--model",
                    "reference",
                    "--method",
                    "ptq",
                    "--bits",
                    "W8A8",
                    "--steps",
                    str(STEPS),
                    "--out",
                    str(work / "q"),
                    "--device",
                    "cpu",
                ]
            )
            == 0
        )
        assert (
            main(
                [
                    "export",
                    "onnx",
                    str(work / "q"),
                    "--out",
                    str(work / "w8a8.edgediff"),
                    "--steps",
                    str(STEPS),
                    "--device",
                    "x86-cpu",
                    "--golden-samples",
                    "2",
                ]
            )
            == 0
        )
    finally:
        torch.set_num_threads(threads)
    return work / "w8a8.edgediff"


def test_runtime_wheel_ships_the_profiles_and_no_torch(wheels: dict[str, Path]):
    names, reqs, entry_points = _wheel_meta(wheels["edgediff_runtime"])
    assert _top_level(names) == {"edgediff_runtime"}
    for path in PROFILES.iterdir():
        assert f"edgediff_runtime/profiles/{path.name}" in names
    assert {r.name for r in reqs} == {"numpy", "onnxruntime", "pillow", "safetensors"}
    assert "edgediff-run = edgediff_runtime.cli:main" in entry_points


def test_main_wheel_requires_the_runtime_and_does_not_ship_it(wheels: dict[str, Path]):
    names, reqs, entry_points = _wheel_meta(wheels["edgediff"])
    assert _top_level(names) == {"edgediff", "edgediff_export"}
    assert "edgediff/reference/assets/digits16-ddpm/unet/config.json" in names
    by_name = {r.name: r for r in reqs}
    assert by_name["edgediff-runtime"].specifier.contains("0.1.0")
    assert by_name["torch"].specifier.contains("2.13.0")
    assert all(spec.operator != "==" for spec in by_name["torch"].specifier)
    assert "edgediff = edgediff_export.cli:main" in entry_points
    assert "edgediff-run" not in entry_points


def test_runtime_venv_has_no_torch(runtime_venv: Path):
    py = runtime_venv / "bin" / "python"
    proc = _run([py, "-c", "import torch"], cwd=runtime_venv)
    assert proc.returncode != 0 and "No module named 'torch'" in proc.stderr
    listing = json.loads(_ok(_run([py, "-m", "pip", "list", "--format=json"], cwd=runtime_venv)).stdout)
    installed = {d["name"].lower().replace("_", "-") for d in listing}
    assert {"edgediff-runtime", "numpy", "onnxruntime", "pillow"} <= installed
    assert not installed & {"torch", "diffusers", "edgediff"}


def test_wheel_install_lists_the_packaged_profiles(runtime_venv: Path):
    script = (
        "import json, edgediff_runtime\n"
        "from edgediff_runtime.devices import devices_dir, list_profiles, load_profile\n"
        "names = list_profiles()\n"
        "print(json.dumps({'package': edgediff_runtime.__file__, 'folder': str(devices_dir()),\n"
        "                  'names': names, 'loaded': [load_profile(n).name for n in names]}))\n"
    )
    out = json.loads(_ok(_run([runtime_venv / "bin" / "python", "-c", script], cwd=runtime_venv)).stdout)
    venv = runtime_venv.resolve()
    assert Path(out["package"]).resolve().is_relative_to(venv)  # the installed copy, not the checkout
    assert Path(out["folder"]).resolve().is_relative_to(venv)
    shipped = sorted(p.stem for p in PROFILES.glob("*.toml"))
    assert len(shipped) >= 5
    assert out["names"] == shipped
    assert out["loaded"] == shipped


def test_edgediff_run_info_sample_parity_without_torch(runtime_venv: Path, w8a8_bundle: Path, tmp_path: Path):
    exe = runtime_venv / "bin" / "edgediff-run"
    info = _ok(_run([exe, "info", w8a8_bundle], cwd=tmp_path)).stdout
    assert "w8a8.edgediff" in info and "x86-cpu" in info

    grid, raw = tmp_path / "grid.png", tmp_path / "raw.npy"
    _ok(
        _run(
            [exe, "sample", w8a8_bundle, "--num", "2", "--seed", "3", "--out", grid, "--save-npy", raw],
            cwd=tmp_path,
        )
    )
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    images = np.load(raw)
    assert images.shape == (2, 1, 16, 16) and np.isfinite(images).all()
    assert images.std() > 0.05  # not a constant image

    report = tmp_path / "parity.json"
    proc = _run([exe, "parity", w8a8_bundle, "--json", report], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert json.loads(report.read_text())["passed"] is True
