"""Device profiles (docs/design.md section 5): shipped data, schema validation, host checks, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgediff_runtime._schema import schema_errors
from edgediff_runtime.devices import (
    PROFILE_SCHEMA,
    DeviceProfile,
    _load_toml,
    check_host,
    devices_dir,
    list_profiles,
    load_profile,
    load_schema,
    validate,
)
from edgediff_runtime.errors import RuntimeStageError

REQUIRED = [
    "jetson-orin-nano-8gb",
    "jetson-orin-nx-16gb",
    "jetson-agx-orin-64gb",
    "jetson-xavier-nx",
    "x86-cpu",
]
ORIN = REQUIRED[:3]
CPU_ONLY = ["CPUExecutionProvider"]

GOOD = """\
name = "{name}"
description = "a test device"
arch = "aarch64"
sm = 87
jetpack = "6.2"
cuda = "12.6"
tensorrt = "10.3"
memory_gb = 8
model_memory_gb = 4.5
precisions = ["fp16", "int8"]
dla = 0
plugin_flavour = "ipluginv3-cpp"
ort_providers = ["TensorrtExecutionProvider", "CPUExecutionProvider"]
max_opset = 21
"""


@pytest.fixture
def devdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty devices folder (with the real schema) selected through $EDGEDIFF_DEVICES."""
    folder = tmp_path / "devices"
    folder.mkdir()
    (folder / "schema.json").write_text((devices_dir() / "schema.json").read_text())
    monkeypatch.setenv("EDGEDIFF_DEVICES", str(folder))
    return folder


def test_shipped_profiles_are_present_and_valid():
    names = list_profiles()
    assert set(REQUIRED) <= set(names)
    schema = load_schema()
    for name in names:
        raw = _load_toml(devices_dir() / f"{name}.toml")
        assert schema_errors(raw, schema) == [], name
        assert load_profile(name).name == name


def test_profiles_are_package_data_found_without_the_source_tree():
    """The default folder is inside the installed package, not a path relative to a checkout."""
    import edgediff_runtime

    folder = Path(str(devices_dir()))
    assert folder == Path(edgediff_runtime.__file__).parent / "profiles"
    assert json.loads((folder / "schema.json").read_text()) == PROFILE_SCHEMA
    assert PROFILE_SCHEMA["title"] == "edgediff device profile"
    assert set(PROFILE_SCHEMA["required"]) <= set(PROFILE_SCHEMA["properties"])


def test_env_folder_replaces_packaged_profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """$EDGEDIFF_DEVICES without a schema.json falls back to the packaged schema."""
    monkeypatch.setenv("EDGEDIFF_DEVICES", str(tmp_path))
    assert list_profiles() == []
    assert load_schema() == PROFILE_SCHEMA
    (tmp_path / "my-board.toml").write_text(GOOD.format(name="my-board"))
    assert list_profiles() == ["my-board"]
    with pytest.raises(RuntimeStageError, match="unknown device profile 'x86-cpu'; known profiles: my-board"):
        load_profile("x86-cpu")


@pytest.mark.parametrize("name", ORIN)
def test_orin_profiles(name):
    p = load_profile(name)
    assert (p.arch, p.sm, p.cuda, p.tensorrt) == ("aarch64", 87, "12.6", "10.3")
    assert p.plugin_flavour == "ipluginv3-cpp"
    assert p.jetpack.startswith("6.")
    assert {"fp16", "int8", "int4-weight-only"} <= set(p.precisions)
    assert "fp8" not in p.precisions
    assert p.model_memory_gb < p.memory_gb
    assert p.ort_providers[0] == "TensorrtExecutionProvider"
    assert (p.dla > 0) == (name != "jetson-orin-nano-8gb")


def test_xavier_and_cpu_profiles():
    xavier = load_profile("jetson-xavier-nx")
    assert (xavier.sm, xavier.tensorrt, xavier.plugin_flavour) == (72, "8.5", "ipluginv2-dynamic-ext")
    assert xavier.jetpack.startswith("5.1")
    assert set(xavier.precisions) == {"fp32", "fp16", "int8"}
    cpu = load_profile("x86-cpu")
    assert (cpu.arch, cpu.sm, cpu.tensorrt, cpu.plugin_flavour) == ("x86_64", None, None, "none")
    assert cpu.ort_providers == ("CPUExecutionProvider",)


def test_to_dict_round_trips_through_json():
    for name in REQUIRED:
        p = load_profile(name)
        again = DeviceProfile.from_dict(json.loads(json.dumps(p.to_dict())))
        assert again == p


def test_load_by_path_and_env(devdir: Path):
    (devdir / "my-board.toml").write_text(GOOD.format(name="my-board"))
    assert list_profiles() == ["my-board"]
    assert load_profile("my-board").sm == 87
    assert load_profile(str(devdir / "my-board.toml")).name == "my-board"


def test_unknown_profile_lists_known_names():
    with pytest.raises(RuntimeStageError) as err:
        load_profile("jetson-thor")
    msg = str(err.value)
    assert "unknown device profile 'jetson-thor'" in msg
    for name in REQUIRED:
        assert name in msg
    assert "\n" not in msg


def test_malformed_toml_names_file_line_and_column(devdir: Path):
    (devdir / "broken.toml").write_text('name = "broken"\ndescription "no equals sign"\n')
    with pytest.raises(RuntimeStageError, match=r"broken\.toml is not valid TOML: .*line 2, column \d+"):
        load_profile("broken")


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("sm = 87", 'sm = "eighty-seven"'), "field 'sm'|sm: expected integer or null"),
        (('arch = "aarch64"', 'arch = "riscv64"'), "arch: 'riscv64' is not one of"),
        (('precisions = ["fp16", "int8"]', 'precisions = ["fp16", "int3"]'), r"precisions\[1\]: 'int3'"),
        (("max_opset = 21\n", "max_opset = 21\nspeed = 3\n"), "speed: unknown field"),
        (("dla = 0\n", ""), "missing required field 'dla'"),
        (("memory_gb = 8", "memory_gb = -8"), "memory_gb: -8 must be greater than 0"),
        (("sm = 87\n", ""), "'tensorrt' is set, so 'sm' and 'cuda' must be set too"),
        (("model_memory_gb = 4.5", "model_memory_gb = 12"), "exceeds 'memory_gb'"),
    ],
)
def test_schema_violations_name_file_and_field(devdir: Path, edit, expected):
    old, new = edit
    text = GOOD.format(name="bad")
    assert old in text
    (devdir / "bad.toml").write_text(text.replace(old, new))
    with pytest.raises(RuntimeStageError, match=expected) as err:
        load_profile("bad")
    assert str(err.value).startswith("bad.toml: ")


def test_name_must_match_file(devdir: Path):
    (devdir / "board-a.toml").write_text(GOOD.format(name="board-b"))
    with pytest.raises(RuntimeStageError, match="'name' is 'board-b' but the file is named 'board-a.toml'"):
        load_profile("board-a")


def test_validate_reports_all_problems_count():
    with pytest.raises(RuntimeStageError, match=r"profile.x: .*\(and 1 more problem\(s\)\)"):
        schema = {"type": "object", "required": ["a", "b"], "properties": {}}
        validate({"name": 3}, schema, source="profile.x")


def test_validator_rejects_unsupported_keywords():
    with pytest.raises(ValueError, match="unsupported keywords"):
        schema_errors({}, {"type": "object", "oneOf": []})
    assert schema_errors(True, {"type": "integer"}) == ["(top level): expected integer, got True"]
    unique = {"type": "array", "uniqueItems": True}
    assert schema_errors([1, 1], unique) == ["(top level): items must be unique"]


def test_check_host_passes_on_matching_cpu_host():
    check_host(load_profile("x86-cpu"), machine="x86_64", providers=CPU_ONLY)


def test_check_host_refuses_other_arch():
    with pytest.raises(RuntimeStageError) as err:
        check_host(load_profile("jetson-orin-nano-8gb"), machine="x86_64", providers=CPU_ONLY)
    assert str(err.value) == (
        "bundle targets jetson-orin-nano-8gb (aarch64, TensorRT 10.3) but this host is x86_64; "
        "re-export with --device x86-cpu or pass --ignore-device"
    )
    with pytest.raises(RuntimeStageError, match=r"x86-cpu \(x86_64, ONNX Runtime CPU EP\) but this host is"):
        check_host(load_profile("x86-cpu"), machine="aarch64", providers=CPU_ONLY)


def test_check_host_refuses_missing_provider_and_trt_on_cpu_profile():
    with pytest.raises(RuntimeStageError, match="runs on TensorrtExecutionProvider, but this onnxruntime"):
        check_host(load_profile("jetson-orin-nx-16gb"), machine="aarch64", providers=CPU_ONLY)
    check_host(load_profile("jetson-orin-nx-16gb"), backend="trt", machine="aarch64", providers=CPU_ONLY)
    with pytest.raises(RuntimeStageError, match="has no TensorRT; use --backend ort"):
        check_host(load_profile("x86-cpu"), backend="trt", machine="x86_64")


def test_check_host_uses_real_host_by_default():
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("x86-only assertion")
    check_host(load_profile("x86-cpu"))  # onnxruntime here has the CPU provider
    with pytest.raises(RuntimeStageError, match="this host is x86_64"):
        check_host(load_profile("jetson-agx-orin-64gb"))


def test_cpu_threads_from_profiles():
    """Jetson profiles name their CPU core count; the generic x86 profile leaves ORT's default and
    does not embed the field (manifests of existing bundles stay as they were)."""
    cores = {
        "jetson-orin-nano-8gb": 6,
        "jetson-orin-nx-16gb": 8,
        "jetson-agx-orin-64gb": 12,
        "jetson-xavier-nx": 6,
    }
    for name, n in cores.items():
        assert load_profile(name).cpu_threads == n
        assert load_profile(name).to_dict()["cpu_threads"] == n
    cpu = load_profile("x86-cpu")
    assert cpu.cpu_threads is None and "cpu_threads" not in cpu.to_dict()
