"""trtexec command lines per device profile, plugin source bundling, and the TensorRT-absent error."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgediff_export.errors import ExportError
from edgediff_export.trt import build

ORIN_TRT103 = {
    "name": "jetson-orin-nano-8gb",
    "sm": 87,
    "tensorrt": "10.3",
    "memory_gb": 8,
    "precisions": ["fp32", "fp16", "int8", "int4-weight-only"],
    "plugin_flavour": "ipluginv3-cpp",
}
XAVIER_TRT85 = {
    "name": "jetson-xavier-nx",
    "sm": 72,
    "tensorrt": "8.5",
    "memory_gb": 8,
    "precisions": ["fp32", "fp16", "int8"],
    "plugin_flavour": "ipluginv2-dynamic-ext",
}
SHAPES = {
    "min_shapes": {"sample": (1, 4, 32, 32), "step": (1,)},
    "opt_shapes": {"sample": (2, 4, 64, 64), "step": (2,)},
    "max_shapes": {"sample": (4, 4, 64, 64), "step": (4,)},
}


def test_orin_trt103_command():
    cmd = build.trtexec_command(
        "unet.onnx", "unet.plan", ORIN_TRT103, "/opt/edgediff/libedgediff_trt_plugins.so", **SHAPES
    )
    assert cmd == [
        "trtexec",
        "--onnx=unet.onnx",
        "--saveEngine=unet.plan",
        "--stronglyTyped",
        "--memPoolSize=workspace:1024M",
        "--dynamicPlugins=/opt/edgediff/libedgediff_trt_plugins.so",
        "--minShapes=sample:1x4x32x32,step:1",
        "--optShapes=sample:2x4x64x64,step:2",
        "--maxShapes=sample:4x4x64x64,step:4",
        "--skipInference",
    ]


def test_orin_weakly_typed_and_serialized_plugin():
    cmd = build.trtexec_command(
        "m.onnx",
        "m.plan",
        ORIN_TRT103,
        "lib.so",
        strongly_typed=False,
        serialize_plugin=True,
        timing_cache="cache.bin",
        builder_optimization_level=2,
        build_only=False,
        trtexec="/usr/src/tensorrt/bin/trtexec",
    )
    assert cmd == [
        "/usr/src/tensorrt/bin/trtexec",
        "--onnx=m.onnx",
        "--saveEngine=m.plan",
        "--fp16",
        "--int8",
        "--memPoolSize=workspace:1024M",
        "--dynamicPlugins=lib.so",
        "--setPluginsToSerialize=lib.so",
        "--timingCacheFile=cache.bin",
        "--builderOptimizationLevel=2",
    ]


def test_xavier_trt85_command():
    cmd = build.trtexec_command("m.onnx", "m.plan", XAVIER_TRT85, "lib.so", fp16=True, int8=False)
    assert cmd == [
        "trtexec",
        "--onnx=m.onnx",
        "--saveEngine=m.plan",
        "--fp16",
        "--memPoolSize=workspace:1024",
        "--plugins=lib.so",
        "--buildOnly",
    ]
    assert build.plugin_problems(XAVIER_TRT85)[0].startswith("TensorRT 8.5 has no IPluginV3")
    assert build.plugin_problems(ORIN_TRT103) == []


def test_workspace_follows_memory():
    assert build.workspace_mib(ORIN_TRT103) == 1024
    assert build.workspace_mib({**ORIN_TRT103, "memory_gb": 64}) == 4096
    assert build.workspace_mib({**ORIN_TRT103, "memory_gb": 1}) == 256
    cmd = build.trtexec_command("m.onnx", "m.plan", ORIN_TRT103, workspace=300)
    assert "--memPoolSize=workspace:300M" in cmd and not any("Plugins" in c for c in cmd)


@pytest.mark.parametrize(
    "profile,kwargs,message",
    [
        (XAVIER_TRT85, {"strongly_typed": True}, "needs TensorRT >= 9"),
        (ORIN_TRT103, {"fp16": True}, "strongly typed builds take precisions from the ONNX graph"),
        (
            {**ORIN_TRT103, "precisions": ["fp32"]},
            {"strongly_typed": False, "fp16": True},
            "does not list fp16",
        ),
        ({**ORIN_TRT103, "tensorrt": None}, {}, "has no TensorRT version"),
        ({**ORIN_TRT103, "tensorrt": "ten"}, {}, "is not 'MAJOR.MINOR'"),
        (ORIN_TRT103, {"min_shapes": {"x": (1,)}}, "together"),
        (XAVIER_TRT85, {"plugin_lib": "lib.so", "serialize_plugin": True}, "needs TensorRT >= 10"),
    ],
)
def test_bad_requests_are_one_line_errors(profile, kwargs, message):
    with pytest.raises(ExportError, match=message) as err:
        build.trtexec_command("m.onnx", "m.plan", profile, **kwargs)
    assert "\n" not in str(err.value)


def test_repository_device_profiles():
    """The DeviceProfile objects of the packaged profiles (to_dict()) work as well as plain dicts."""
    devices = pytest.importorskip("edgediff_runtime.devices")
    try:
        orin = devices.load_profile("jetson-agx-orin-64gb")
        xavier = devices.load_profile("jetson-xavier-nx")
    except Exception as exc:  # Python 3.10 without tomli
        pytest.skip(f"device profiles unreadable here: {exc}")
    cmd = build.trtexec_command("m.onnx", "m.plan", orin, "lib.so")
    assert "--memPoolSize=workspace:4096M" in cmd and "--stronglyTyped" in cmd
    assert build.plugin_problems(orin) == []
    assert build.trtexec_command("m.onnx", "m.plan", xavier)[3:5] == ["--fp16", "--int8"]
    assert build.plugin_problems(xavier)


def test_cmake_commands_target_the_profile_sm():
    configure, make = build.cmake_commands("src", "out", ORIN_TRT103, tensorrt_root="/opt/TensorRT-10.3")
    assert configure == [
        "cmake",
        "-S",
        "src",
        "-B",
        "out",
        "-DCMAKE_BUILD_TYPE=Release",
        "-DCMAKE_CUDA_ARCHITECTURES=87",
        "-DTENSORRT_ROOT=/opt/TensorRT-10.3",
    ]
    assert make == ["cmake", "--build", "out", "-j", "2"]
    with pytest.raises(ExportError, match="has no `sm`"):
        build.cmake_commands("src", "out", {"name": "x86-cpu", "sm": None})


def test_copy_plugin_sources_writes_sources_and_readme(tmp_path):
    out = build.copy_plugin_sources(
        tmp_path / "bundle" / "trt", [ORIN_TRT103, XAVIER_TRT85], onnx_name="unet.onnx"
    )
    names = sorted(p.name for p in (out / "plugin").iterdir())
    assert names == sorted(build.PLUGIN_SOURCES)
    readme = (out / "README.md").read_text()
    assert readme.startswith("# edgediff TensorRT plugins")
    assert "-DCMAKE_CUDA_ARCHITECTURES=87" in readme
    assert "cmake -S trt/plugin -B trt/plugin/build" in readme
    assert (
        "trtexec --onnx=unet.onnx --saveEngine=engines/jetson-orin-nano-8gb.engine --stronglyTyped "
        "--memPoolSize=workspace:1024M --dynamicPlugins=trt/lib/libedgediff_trt_plugins.so"
    ) in readme
    assert "cannot be used here: TensorRT 8.5 has no IPluginV3" in readme
    assert "--plugins=" not in readme  # no plugin command for a profile the library cannot serve
    assert "CMAKE_CUDA_ARCHITECTURES=72" not in readme


def test_plugin_sources_dir_has_the_cmake_project():
    src = build.plugin_sources_dir()
    for name in build.PLUGIN_SOURCES:
        assert (src / name).is_file(), name
    cmake = (src / "CMakeLists.txt").read_text()
    assert 'set(CMAKE_CUDA_ARCHITECTURES "87;90"' in cmake and "TENSORRT_ROOT" in cmake
    assert "edgediff_trt_plugins SHARED" in cmake


def test_build_engine_without_tensorrt_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    with pytest.raises(ExportError, match="TensorRT Python bindings are not installed") as err:
        build.build_engine(tmp_path / "m.onnx", tmp_path / "m.plan", ORIN_TRT103)
    assert "\n" not in str(err.value)
    with pytest.raises(ExportError, match="not installed"):
        build.load_plugin_library(tmp_path / "lib.so")


def test_module_imports_neither_torch_nor_tensorrt():
    code = (
        "import sys; import edgediff_export.trt.build, edgediff_export.trt.numpy_ref; "
        "print([m for m in ('torch', 'tensorrt', 'cupy') if m in sys.modules])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_readme_commands_put_library_and_engine_where_the_runtime_looks(tmp_path):
    """Follow the bundle README's build commands (from the bundle root) and open it as the runtime does."""
    import argparse
    import re
    from types import SimpleNamespace

    from edgediff_runtime.cli import _engine_and_plugins

    readme = build.bundle_readme([ORIN_TRT103], onnx_name="model.onnx")
    section = readme.split("## Build commands for this bundle's device profiles")[1]
    engine = re.search(r"--saveEngine=(\S+)", section).group(1)
    library = re.search(r"--dynamicPlugins=(\S+)", section).group(1)
    copied = re.search(r"cp trt/plugin/build/(\S+) (\S+)/", section)
    assert f"{copied.group(2)}/{copied.group(1)}" == library
    for rel in (engine, library):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    profile = SimpleNamespace(name=ORIN_TRT103["name"])
    bundle = SimpleNamespace(root=tmp_path, manifest=SimpleNamespace(profile=lambda: profile))
    found_engine, found_plugins = _engine_and_plugins(bundle, argparse.Namespace(engine=None, plugin=None))
    assert found_engine == tmp_path / engine
    assert found_plugins == [tmp_path / library]
