"""ONNX Runtime threads: `--threads` first, then the device profile's `cpu_threads`."""

from __future__ import annotations

import pytest

from edgediff_runtime.backends import threads_for
from edgediff_runtime.errors import RuntimeStageError


def test_threads_for_prefers_the_flag_then_the_profile():
    assert threads_for(3, 6) == 3
    assert threads_for(None, 6) == 6
    assert threads_for(None, None) is None
    with pytest.raises(RuntimeStageError, match="--threads must be >= 1"):
        threads_for(0, 6)


def test_cli_opens_the_backend_with_the_profile_threads(monkeypatch, tmp_path):
    """`_open` passes the profile's cpu_threads to the backend when no --threads is given."""
    import argparse

    from edgediff_runtime import cli
    from edgediff_runtime.devices import load_profile

    seen = {}

    class Manifest:
        onnx = argparse.Namespace(ort_disabled_optimizers=[])

        def profile(self):
            return load_profile("jetson-orin-nano-8gb")

    bundle = argparse.Namespace(manifest=Manifest(), model_path=tmp_path / "model.onnx", root=tmp_path)
    monkeypatch.setattr(cli, "load_bundle", lambda *a, **k: bundle)
    monkeypatch.setattr(cli, "check_host", lambda *a, **k: None)
    monkeypatch.setattr(cli, "open_backend", lambda kind, path, **kw: seen.update(kw) or object())
    args = argparse.Namespace(
        bundle=tmp_path, backend="ort", threads=None, ignore_device=False, provider=["cpu"]
    )
    cli._open(args)
    assert seen["threads"] == 6
    args.threads = 2
    cli._open(args)
    assert seen["threads"] == 2
    args.threads, args.ignore_device = None, True
    cli._open(args)
    assert seen["threads"] is None
