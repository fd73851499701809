"""Packaging metadata: `edgediff-runtime` is its own torch-free distribution, `edgediff` requires it,
torch is a range that admits the Makefile's CPU-wheel pin, the profiles are declared package data."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ROOT / "runtime" / "edgediff_runtime" / "profiles"


def _project(path: Path) -> dict:
    return tomllib.loads(path.read_text(encoding="utf-8"))


def _requirements(project: dict) -> dict[str, Requirement]:
    reqs = [Requirement(line) for line in project["project"]["dependencies"]]
    return {r.name: r for r in reqs}


MAIN = _project(ROOT / "pyproject.toml")
RUNTIME = _project(ROOT / "runtime" / "pyproject.toml")


def _makefile_install_lines() -> list[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    recipe = text.split("$(STAMP):", 1)[1].split("\n\n", 1)[0]
    return [line.strip() for line in recipe.splitlines() if "pip install" in line]


def test_main_requires_the_runtime_at_its_version_and_does_not_package_it():
    runtime_req = _requirements(MAIN)["edgediff-runtime"]
    assert RUNTIME["project"]["name"] == "edgediff-runtime"
    assert runtime_req.specifier.contains(RUNTIME["project"]["version"])
    found = MAIN["tool"]["setuptools"]["packages"]["find"]
    assert "runtime" not in found["where"]
    assert not any(fnmatch.fnmatch("edgediff_runtime", pat) for pat in found["include"])
    assert not any(fnmatch.fnmatch("edgediff_runtime.devices", pat) for pat in found["include"])
    assert "edgediff-run" not in MAIN["project"]["scripts"]


def test_runtime_dependencies_are_torch_free():
    deps = _requirements(RUNTIME)
    assert set(deps) == {"numpy", "onnxruntime", "pillow", "safetensors", "tomli"}
    assert deps["tomli"].marker is not None and not deps["tomli"].marker.evaluate({"python_version": "3.11"})
    extras = RUNTIME["project"]["optional-dependencies"]
    assert [Requirement(r).name for r in extras["prompts"]] == ["tokenizers"]
    assert RUNTIME["project"]["scripts"] == {"edgediff-run": "edgediff_runtime.cli:main"}


def test_torch_is_a_range_that_admits_the_makefile_pin():
    torch = _requirements(MAIN)["torch"]
    assert all(spec.operator not in ("==", "===", "~=") for spec in torch.specifier)
    pins = [m.group(1) for line in _makefile_install_lines() for m in [re.search(r"torch==(\S+)", line)] if m]
    assert len(pins) == 1
    assert torch.specifier.contains(pins[0])


def test_makefile_installs_torch_then_runtime_then_main():
    lines = [line for line in _makefile_install_lines() if "--upgrade pip" not in line]
    assert lines == [
        "$(PY) -m pip install -q torch==2.13.0",
        '$(PY) -m pip install -q -e "./runtime[prompts]"',
        '$(PY) -m pip install -q -e ".[dev,pipelines]"',
    ]


def test_pipelines_extra_brings_the_text_encoder_packages():
    extras = MAIN["project"]["optional-dependencies"]
    assert sorted(Requirement(r).name for r in extras["pipelines"]) == ["tokenizers", "transformers"]


def test_every_profile_file_is_declared_package_data():
    patterns = RUNTIME["tool"]["setuptools"]["package-data"]["edgediff_runtime"]
    files = [p.relative_to(PROFILES.parent).as_posix() for p in PROFILES.iterdir() if p.is_file()]
    assert "profiles/schema.json" in files and len(files) >= 6
    for name in files:
        assert any(fnmatch.fnmatch(name, pat) for pat in patterns), name
