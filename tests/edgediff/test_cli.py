"""CLI behaviour: one-line errors, exit code 2, help everywhere."""

import subprocess
import sys

import pytest

from edgediff_export.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgediff_export.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_missing_model_folder_is_one_line_exit_2(tmp_path):
    res = run_cli("eval", "--model", str(tmp_path / "nope"), "--samples", "10", "--steps", "2")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "model folder not found" in lines[0] and "nope" in lines[0]
    assert "Traceback" not in res.stderr


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "junk.txt").write_text("x")
    res = run_cli("eval", "--model", str(tmp_path), "--samples", "10", "--steps", "2")
    assert res.returncode == 2 and "not a diffusers model folder" in res.stderr


def test_unknown_device_profile(capsys):
    assert main(["devices", "show", "no-such-device"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-such-device" in err[0]


def test_malformed_toml_profile_names_the_file(tmp_path, capsys):
    bad = tmp_path / "broken.toml"
    bad.write_text('name = "broken"\narch = [unclosed\n')
    assert main(["devices", "show", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.toml" in err[0]


def test_devices_list_has_the_required_profiles(capsys):
    assert main(["devices", "list"]) == 0
    out = capsys.readouterr().out
    for name in (
        "jetson-orin-nano-8gb",
        "jetson-orin-nx-16gb",
        "jetson-agx-orin-64gb",
        "jetson-xavier-nx",
        "x86-cpu",
    ):
        assert name in out


@pytest.mark.parametrize("args", [[], ["eval"], ["reference", "train"], ["devices", "show"], ["demo"]])
def test_help_everywhere(args, capsys):
    assert main([*args, "--help"]) == 0
    assert "usage:" in capsys.readouterr().out


def test_symmetric_weights_flag_is_for_ptq_and_efficientdm(tmp_path, capsys):
    code = main(
        ["quantize", "--model", "reference", "--method", "mpqdm", "--bits", "W4A8"]
        + ["--symmetric-weights", "--out", str(tmp_path / "q")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--symmetric-weights applies to ptq and efficientdm" in err[0]
    assert not (tmp_path / "q").exists()
