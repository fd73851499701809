"""The runtime is torch-free
(docs/design.md section 1): import every module and run the CLI with torch blocked."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

BLOCKED = ("torch", "diffusers", "edgediff", "edgediff_export", "tensorrt")

SCRIPT = textwrap.dedent(
    """
    import importlib, pkgutil, sys

    BLOCKED = {blocked!r}

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{{name}} is blocked in this test")
            return None

    sys.meta_path.insert(0, Blocker())
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("blocker failed: torch imported")

    import edgediff_runtime
    names = [m.name for m in pkgutil.walk_packages(edgediff_runtime.__path__, "edgediff_runtime.")]
    for name in names:
        importlib.import_module(name)
    print("imported", len(names), "modules")

    from edgediff_runtime.cli import main
    for argv in ([], ["info"], ["sample"], ["parity"], ["bench"]):
        assert main([*argv, "--help"]) == 0, argv
    code = main(["info", {bundle!r}])
    assert code == 0, code
    code = main(["parity", {bundle!r}])
    assert code == 0, code
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not leaked, leaked
    print("ok")
    """
)


def test_runtime_imports_and_runs_without_torch(tiny_bundle: Path):
    script = SCRIPT.format(blocked=BLOCKED, bundle=str(tiny_bundle))
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "runtime")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ok" in proc.stdout.splitlines()
    n = int(proc.stdout.split("imported ")[1].split()[0])
    assert n >= 12  # every module of the package, backends included


def test_console_script_help():
    exe = shutil.which("edgediff-run") or str(Path(sys.executable).with_name("edgediff-run"))
    assert Path(exe).exists(), "edgediff-run is not installed; pip install -e ./runtime"
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "info" in proc.stdout and "parity" in proc.stdout and "bench" in proc.stdout
    proc = subprocess.run(
        [exe, "sample", "/nonexistent.edgediff", "--out", "/tmp/x.png"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr == "error: bundle /nonexistent.edgediff does not exist; check the path\n"
