"""TensorRT engines for a device profile: trtexec command lines, the TensorRT Python API, plugin sources.

Torch-free, and TensorRT is imported only inside :func:`build_engine` / :func:`load_plugin_library`,
so this module works on a machine without TensorRT (to write a bundle's build instructions).

The edgediff plugin library (``plugin/``, built with CMake into ``libedgediff_trt_plugins.so``)
is a TensorRT 10 ``IPluginV3`` library: it exports ``getCreators``/``setLoggerFinder`` and is
loaded with ``IPluginRegistry::loadLibrary`` (``trtexec --dynamicPlugins``). TensorRT 8.x has no
IPluginV3: its commands are still produced (``--plugins``) for a future IPluginV2DynamicExt port,
and :func:`plugin_problems` says why the shipped library cannot serve such a profile.
"""

from __future__ import annotations

import ctypes
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgediff_export.errors import ExportError

__all__ = [
    "PLUGIN_LIBRARY_NAME",
    "PLUGIN_NAMESPACE",
    "PLUGIN_NAMES",
    "PLUGIN_VERSION",
    "build_engine",
    "bundle_readme",
    "cmake_commands",
    "copy_plugin_sources",
    "load_plugin_library",
    "parse_trt_version",
    "plugin_problems",
    "plugin_sources_dir",
    "trtexec_command",
    "workspace_mib",
]

PLUGIN_LIBRARY_NAME = "libedgediff_trt_plugins.so"
#: Where a bundle keeps the built library and engines (the runtime's defaults for `--plugin`, `--engine`).
PLUGIN_LIB_DIR = "trt/lib"
ENGINES_DIR = "engines"
PLUGIN_NAMESPACE = "edgediff"
PLUGIN_VERSION = "1"
PLUGIN_NAMES = ("ResidualBinaryLinear", "ResidualBinaryConv")
PLUGIN_SOURCES = (
    "CMakeLists.txt",
    "residual_binary_kernels.cu",
    "residual_binary_kernels.cuh",
    "residual_binary_plugin.cpp",
    "residual_binary_plugin.h",
)

Shapes = Mapping[str, Sequence[int]]


def _profile_dict(profile: Mapping[str, Any] | Any) -> dict[str, Any]:
    """A device profile as a dict: a mapping, or an object with to_dict() (edgediff_runtime DeviceProfile)."""
    if isinstance(profile, Mapping):
        return dict(profile)
    to_dict = getattr(profile, "to_dict", None)
    if callable(to_dict):
        return dict(to_dict())
    raise TypeError(f"expected a device profile mapping or DeviceProfile, got {type(profile).__name__}")


def parse_trt_version(version: str | None) -> tuple[int, int]:
    """'10.3' / '10.3.0.30' -> (10, 3); a missing or malformed version is a one-line ExportError."""
    parts = str(version or "").split(".")
    try:
        major = int(parts[0])
        minor = int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise ExportError(
            f"device profile TensorRT version {version!r} is not 'MAJOR.MINOR': set `tensorrt` in the profile"
        ) from None
    return major, minor


def _profile_trt(profile: dict[str, Any]) -> tuple[int, int]:
    if not profile.get("tensorrt"):
        raise ExportError(
            f"device profile {profile.get('name', '?')!r} has no TensorRT version: "
            'add `tensorrt = "10.3"` to it'
        )
    return parse_trt_version(profile["tensorrt"])


def workspace_mib(profile: Mapping[str, Any] | Any) -> int:
    """Builder workspace cap: 1/8 of the device memory, clamped to [256, 4096] MiB.

    Jetsons share LPDDR between CPU and GPU (an 8 GB Orin Nano has about 5 GB free after the OS,
    docs/deployment.md section 6), and engine builds are a known OOM point there; 1/8 leaves the model,
    the builder's own allocations and the OS room. Pass workspace_mib= to override.
    """
    memory_gb = float(_profile_dict(profile).get("memory_gb") or 8)
    return int(min(4096, max(256, memory_gb * 1024 / 8)))


def _shape_arg(shapes: Shapes) -> str:
    """{'x': (1, 4, 64, 64), 't': (1,)} -> "x:1x4x64x64,t:1" (names with ':' or ',' are quoted)."""
    parts = []
    for name, dims in shapes.items():
        if not dims or any(int(d) < 0 for d in dims):
            raise ExportError(f"input {name!r}: give a concrete non-negative shape, got {tuple(dims)}")
        quoted = f"'{name}'" if any(c in name for c in ":,' ") else name
        parts.append(f"{quoted}:{'x'.join(str(int(d)) for d in dims)}")
    return ",".join(parts)


def _plugin_flags(trt: tuple[int, int], plugin_lib: str, serialize_plugin: bool) -> list[str]:
    if trt >= (10, 0):
        # loadLibrary -> getCreators: the library registers its creators under namespace "edgediff".
        flags = [f"--dynamicPlugins={plugin_lib}"]
        if serialize_plugin:
            flags.append(f"--setPluginsToSerialize={plugin_lib}")
        return flags
    if serialize_plugin:
        raise ExportError(
            "serializing a plugin library into the engine needs TensorRT >= 10 (use serialize_plugin=False)"
        )
    # 8.6/9.x: --staticPlugins (dlopen; the library must self-register); 8.5 and older: --plugins.
    return [f"--staticPlugins={plugin_lib}"] if trt >= (8, 6) else [f"--plugins={plugin_lib}"]


def trtexec_command(
    onnx_path: str | Path,
    engine_path: str | Path,
    profile: Mapping[str, Any] | Any,
    plugin_lib: str | Path | None = None,
    *,
    min_shapes: Shapes | None = None,
    opt_shapes: Shapes | None = None,
    max_shapes: Shapes | None = None,
    fp16: bool | None = None,
    int8: bool | None = None,
    strongly_typed: bool | None = None,
    workspace: int | None = None,
    serialize_plugin: bool = False,
    timing_cache: str | Path | None = None,
    builder_optimization_level: int | None = None,
    build_only: bool = True,
    trtexec: str = "trtexec",
) -> list[str]:
    """The exact trtexec argument list that builds `engine_path` from `onnx_path` for `profile`.

    strongly_typed (default: True on TensorRT >= 10) keeps every tensor the type the ONNX graph
    gives it, which the plugin needs: in a weakly typed network an INT8 constant is a "real"
    tensor TensorRT may re-type, and the plugin takes Wq/w_zero as INT8. Precision flags are then
    not allowed (trtexec would drop them): fp16 comes from an fp16 graph, int8 from Q/DQ nodes.
    Weakly typed builds get --fp16/--int8 from the profile's precisions unless told otherwise.
    workspace is in MiB (default :func:`workspace_mib`). Shapes map input names to dims.
    """
    prof = _profile_dict(profile)
    trt = _profile_trt(prof)
    precisions = set(prof.get("precisions") or ())
    if strongly_typed is None:
        strongly_typed = trt >= (10, 0)
    if strongly_typed and trt < (9, 0):
        raise ExportError(
            f"--stronglyTyped needs TensorRT >= 9; profile {prof.get('name')!r} has "
            f"{trt[0]}.{trt[1]}: pass strongly_typed=False"
        )
    if strongly_typed and (fp16 or int8):
        raise ExportError(
            "strongly typed builds take precisions from the ONNX graph: drop fp16/int8 "
            "or pass strongly_typed=False"
        )
    if not strongly_typed:
        fp16 = "fp16" in precisions if fp16 is None else fp16
        int8 = "int8" in precisions if int8 is None else int8
        for flag, name in ((fp16, "fp16"), (int8, "int8")):
            if flag and name not in precisions:
                raise ExportError(f"profile {prof.get('name')!r} does not list {name} in its precisions")

    cmd = [trtexec, f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    if strongly_typed:
        cmd.append("--stronglyTyped")
    else:
        cmd += ["--fp16"] * bool(fp16) + ["--int8"] * bool(int8)
    mib = workspace_mib(prof) if workspace is None else int(workspace)
    if trt >= (10, 0):
        cmd.append(f"--memPoolSize=workspace:{mib}M")
    elif trt >= (8, 4):
        cmd.append(f"--memPoolSize=workspace:{mib}")  # MiB; 8.x takes no unit suffix
    else:
        cmd.append(f"--workspace={mib}")
    if plugin_lib is not None:
        cmd += _plugin_flags(trt, str(plugin_lib), serialize_plugin)
    given = [s for s in (min_shapes, opt_shapes, max_shapes) if s]
    if given:
        if len(given) != 3:
            raise ExportError(
                "give min_shapes, opt_shapes and max_shapes together (or none for static shapes)"
            )
        if not (set(min_shapes or {}) == set(opt_shapes or {}) == set(max_shapes or {})):
            raise ExportError("min_shapes, opt_shapes and max_shapes must name the same inputs")
        cmd += [
            f"--minShapes={_shape_arg(min_shapes or {})}",
            f"--optShapes={_shape_arg(opt_shapes or {})}",
            f"--maxShapes={_shape_arg(max_shapes or {})}",
        ]
    if timing_cache is not None:
        cmd.append(f"--timingCacheFile={timing_cache}")
    if builder_optimization_level is not None:
        if trt < (8, 6):
            raise ExportError("--builderOptimizationLevel needs TensorRT >= 8.6")
        cmd.append(f"--builderOptimizationLevel={int(builder_optimization_level)}")
    if build_only:
        cmd.append("--skipInference" if trt >= (8, 6) else "--buildOnly")
    return cmd


def plugin_problems(profile: Mapping[str, Any] | Any) -> list[str]:
    """Why the shipped IPluginV3 library cannot serve this profile (empty list: it can)."""
    prof = _profile_dict(profile)
    problems = []
    if not prof.get("tensorrt"):
        problems.append("the profile has no TensorRT version")
    elif parse_trt_version(prof["tensorrt"]) < (10, 0):
        problems.append(
            f"TensorRT {prof['tensorrt']} has no IPluginV3 (needs >= 10.0); an IPluginV2DynamicExt "
            "port of plugin/ is not written yet"
        )
    if prof.get("plugin_flavour") not in (None, "ipluginv3-cpp"):
        problems.append(
            f"profile plugin_flavour is {prof.get('plugin_flavour')!r}, the library is ipluginv3-cpp"
        )
    if not prof.get("sm"):
        problems.append("the profile has no SM version (not an NVIDIA GPU target)")
    return problems


def cmake_commands(
    source_dir: str | Path,
    build_dir: str | Path,
    profile: Mapping[str, Any] | Any,
    tensorrt_root: str | None = None,
) -> list[list[str]]:
    """Configure + build commands of the plugin library for the profile's SM (2 parallel jobs)."""
    prof = _profile_dict(profile)
    sm = prof.get("sm")
    if not sm:
        raise ExportError(
            f"profile {prof.get('name')!r} has no `sm`: the plugin is built for one GPU architecture"
        )
    configure = [
        "cmake",
        "-S",
        str(source_dir),
        "-B",
        str(build_dir),
        "-DCMAKE_BUILD_TYPE=Release",
        f"-DCMAKE_CUDA_ARCHITECTURES={int(sm)}",
    ]
    if tensorrt_root:
        configure.append(f"-DTENSORRT_ROOT={tensorrt_root}")
    return [configure, ["cmake", "--build", str(build_dir), "-j", "2"]]


def plugin_sources_dir() -> Path:
    """The folder with the plugin's CUDA/C++ sources and CMakeLists.txt."""
    return Path(__file__).resolve().parent / "plugin"


def bundle_readme(profiles: Sequence[Mapping[str, Any] | Any] = (), onnx_name: str = "model.onnx") -> str:
    """trt/README.md followed by the exact build commands for each profile, run from the bundle root:
    the library goes to `trt/lib/`, the engine to `engines/<profile>.engine`, the paths where
    `edgediff-run --backend trt` looks by default."""
    text = (Path(__file__).resolve().parent / "README.md").read_text()
    sections = []
    for profile in profiles:
        prof = _profile_dict(profile)
        name = prof.get("name", "device")
        lines = [f"### {name} (TensorRT {prof.get('tensorrt')}, sm_{prof.get('sm')})", ""]
        problems = plugin_problems(prof)
        engine = f"{ENGINES_DIR}/{name}.engine"
        dynamic_note = ["# add --minShapes/--optShapes/--maxShapes for dynamic inputs"]
        if problems:
            lines += [f"The plugin library cannot be used here: {'; '.join(problems)}.", ""]
            if prof.get("tensorrt"):
                lines += [
                    "A graph without edgediff plugin nodes (the standard-op lowering) still builds:",
                    "",
                    "```sh",
                    f"mkdir -p {ENGINES_DIR}",
                    " ".join(trtexec_command(onnx_name, engine, prof) + dynamic_note),
                    "```",
                    "",
                ]
        else:
            lines += ["```sh"]
            lines += [" ".join(c) for c in cmake_commands("trt/plugin", "trt/plugin/build", prof)]
            built = f"trt/plugin/build/{PLUGIN_LIBRARY_NAME}"
            lines += [f"mkdir -p {PLUGIN_LIB_DIR} && cp {built} {PLUGIN_LIB_DIR}/"]
            lines += [f"mkdir -p {ENGINES_DIR}"]
            lines += [
                " ".join(
                    trtexec_command(onnx_name, engine, prof, f"{PLUGIN_LIB_DIR}/{PLUGIN_LIBRARY_NAME}")
                    + dynamic_note
                ),
                "```",
                "",
            ]
        sections.append("\n".join(lines))
    if not sections:
        return text
    return text.rstrip() + "\n\n## Build commands for this bundle's device profiles\n\n" + "\n".join(sections)


def copy_plugin_sources(
    dest: str | Path, profiles: Sequence[Mapping[str, Any] | Any] = (), onnx_name: str = "model.onnx"
) -> Path:
    """Copy the plugin sources to dest/plugin/ and write dest/README.md (build steps per profile)."""
    out = Path(dest)
    plugin_out = out / "plugin"
    plugin_out.mkdir(parents=True, exist_ok=True)
    src = plugin_sources_dir()
    for name in PLUGIN_SOURCES:
        shutil.copy2(src / name, plugin_out / name)
    (out / "README.md").write_text(bundle_readme(profiles, onnx_name))
    return out


def _import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError:
        raise ExportError(
            "TensorRT Python bindings are not installed: build on the device (JetPack ships them) "
            "or use trtexec_command()"
        ) from None
    return tensorrt


def load_plugin_library(plugin_lib: str | Path) -> Any:
    """Load the plugin .so (ctypes first, for a clear error on missing dependencies) and register it."""
    trt = _import_tensorrt()
    path = Path(plugin_lib).resolve()
    if not path.is_file():
        raise ExportError(
            f"plugin library {path} not found: build it with CMake (see {plugin_sources_dir()})"
        )
    try:
        ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        raise ExportError(f"cannot load {path}: {exc}") from None
    registry = trt.get_plugin_registry()
    if registry.get_creator(PLUGIN_NAMES[0], PLUGIN_VERSION, PLUGIN_NAMESPACE) is None:
        registry.load_library(str(path))
    missing = [n for n in PLUGIN_NAMES if registry.get_creator(n, PLUGIN_VERSION, PLUGIN_NAMESPACE) is None]
    if missing:
        raise ExportError(
            f"{path} did not register {', '.join(missing)} (namespace {PLUGIN_NAMESPACE!r}): "
            "is it an edgediff plugin library built for this TensorRT?"
        )
    return registry


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    profile: Mapping[str, Any] | Any,
    plugin_lib: str | Path | None = None,
    *,
    min_shapes: Shapes | None = None,
    opt_shapes: Shapes | None = None,
    max_shapes: Shapes | None = None,
    fp16: bool | None = None,
    int8: bool | None = None,
    strongly_typed: bool | None = None,
    workspace: int | None = None,
    serialize_plugin: bool = False,
    allow_version_mismatch: bool = False,
) -> Path:
    """Build and save an engine with the TensorRT Python API (same choices as :func:`trtexec_command`)."""
    trt = _import_tensorrt()
    prof = _profile_dict(profile)
    want = _profile_trt(prof)
    have = parse_trt_version(trt.__version__)
    if have != want and not allow_version_mismatch:
        raise ExportError(
            f"installed TensorRT {trt.__version__} differs from the profile's {prof['tensorrt']}: "
            "engines only run on the TensorRT version that built them (build on the device)"
        )
    # Validate the options exactly as the trtexec path does (raises the same errors).
    trtexec_command(
        onnx_path,
        engine_path,
        prof,
        plugin_lib,
        min_shapes=min_shapes,
        opt_shapes=opt_shapes,
        max_shapes=max_shapes,
        fp16=fp16,
        int8=int8,
        strongly_typed=strongly_typed,
        workspace=workspace,
        serialize_plugin=serialize_plugin,
    )
    if strongly_typed is None:
        strongly_typed = have >= (10, 0)
    precisions = set(prof.get("precisions") or ())
    if not strongly_typed:
        fp16 = "fp16" in precisions if fp16 is None else fp16
        int8 = "int8" in precisions if int8 is None else int8
    if plugin_lib is not None:
        if have < (10, 0):
            raise ExportError(
                f"the edgediff plugin library needs TensorRT >= 10 (IPluginV3), found {trt.__version__}"
            )
        load_plugin_library(plugin_lib)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if have < (10, 0):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    mib = workspace_mib(prof) if workspace is None else int(workspace)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, mib << 20)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)
    if serialize_plugin and plugin_lib is not None:
        config.plugins_to_serialize = [str(Path(plugin_lib).resolve())]
    if min_shapes:
        opt_profile = builder.create_optimization_profile()
        for name in min_shapes:
            opt_profile.set_shape(
                name,
                tuple(min_shapes[name]),
                tuple((opt_shapes or {})[name]),
                tuple((max_shapes or {})[name]),
            )
        config.add_optimization_profile(opt_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path}: see the log above")
    out = Path(engine_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(bytes(serialized))
    return out
