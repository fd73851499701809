"""Device profiles as data
(docs/design.md section 5): ``profiles/*.toml`` validated by ``profiles/schema.json``, shipped as
package data of ``edgediff_runtime`` and read with :mod:`importlib.resources`, so a wheel install
finds them; ``$EDGEDIFF_DEVICES`` names a folder of your own profiles instead.

A profile pins what a bundle may assume about its target: CPU arch, SM version, JetPack / CUDA /
TensorRT versions, memory, the precisions the hardware runs, DLA cores, the TensorRT plugin
flavour and the ONNX Runtime providers. The exporter embeds ``DeviceProfile.to_dict()`` in the
bundle manifest, so the device itself needs no profile files; :func:`check_host` refuses to
run a bundle on a host it was not built for.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgediff_runtime._schema import schema_errors
from edgediff_runtime.errors import RuntimeStageError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

PROFILES_PACKAGE = "edgediff_runtime"
PROFILES_FOLDER = "profiles"


def packaged_profiles() -> Traversable:
    """The profiles shipped as package data (``edgediff_runtime/profiles/``), wherever it is installed."""
    return resources.files(PROFILES_PACKAGE) / PROFILES_FOLDER


def _read_schema(path: Traversable) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RuntimeStageError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}; fix the file"
        ) from None


# The packaged ``profiles/schema.json``: validates shipped profiles, user profiles and the profile
# a bundle embeds (a device needs no profiles folder of its own).
PROFILE_SCHEMA: dict[str, Any] = _read_schema(packaged_profiles() / "schema.json")

# Fields that may be left out of a profile (TOML has no null): absent means None.
_NULLABLE = ("sm", "jetpack", "cuda", "tensorrt")

_PROVIDER_SHORT = {
    "TensorrtExecutionProvider": "TensorRT EP",
    "CUDAExecutionProvider": "CUDA EP",
    "CPUExecutionProvider": "CPU EP",
}


@dataclass(frozen=True)
class DeviceProfile:
    """One validated device profile (docs/design.md section 5); lists are stored as tuples."""

    name: str
    description: str
    arch: str
    sm: int | None
    jetpack: str | None
    cuda: str | None
    tensorrt: str | None
    memory_gb: float
    model_memory_gb: float
    precisions: tuple[str, ...]
    dla: int
    plugin_flavour: str
    ort_providers: tuple[str, ...]
    max_opset: int
    notes: str = ""
    # ONNX Runtime intra-op threads on this device (its CPU cores); None: ONNX Runtime's default
    cpu_threads: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (what the exporter embeds in ``manifest.json`` as ``device``)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "cpu_threads" and value is None:
                continue  # optional: profiles without it embed exactly what they did before
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(
        cls,
        data: dict[str, Any],
        source: str = "device profile",
        *,
        path: str = "",
        fix: str = "fix the profile",
    ) -> DeviceProfile:
        """Validate ``data`` against :data:`PROFILE_SCHEMA` and build a profile.

        ``source``/``path`` name where the dict came from in error messages, ``fix`` says what to do.
        """
        validate(data, PROFILE_SCHEMA, source=source, path=path, fix=fix)
        kwargs = {key: None for key in _NULLABLE} | dict(data)
        kwargs["precisions"] = tuple(data["precisions"])
        kwargs["ort_providers"] = tuple(data["ort_providers"])
        kwargs["memory_gb"] = float(data["memory_gb"])
        kwargs["model_memory_gb"] = float(data["model_memory_gb"])
        where = f"{source}: {path + ': ' if path else ''}"
        if kwargs["model_memory_gb"] > kwargs["memory_gb"]:
            raise RuntimeStageError(
                f"{where}field 'model_memory_gb' ({data['model_memory_gb']}) exceeds 'memory_gb' "
                f"({data['memory_gb']}); {fix}"
            )
        _check_consistency(kwargs, where, fix)
        return cls(**kwargs)

    def runs_on(self) -> str:
        """Short human description of the execution stack, for error messages."""
        if self.tensorrt:
            return f"{self.arch}, TensorRT {self.tensorrt}"
        primary = self.ort_providers[0]
        return f"{self.arch}, ONNX Runtime {_PROVIDER_SHORT.get(primary, primary)}"


def _check_consistency(p: dict[str, Any], where: str, fix: str) -> None:
    """Cross-field rules the schema cannot say (so a forgotten ``sm`` is not silently "no GPU")."""
    problems = []
    gpu_eps = {"TensorrtExecutionProvider", "CUDAExecutionProvider"} & set(p["ort_providers"])
    if p["tensorrt"] and (p["sm"] is None or p["cuda"] is None):
        problems.append("'tensorrt' is set, so 'sm' and 'cuda' must be set too")
    if gpu_eps and p["cuda"] is None:
        problems.append(f"ort_providers lists {sorted(gpu_eps)[0]}, so 'cuda' must be set")
    if p["plugin_flavour"] != "none" and not p["tensorrt"]:
        problems.append(f"plugin_flavour '{p['plugin_flavour']}' needs 'tensorrt' to be set")
    if p["tensorrt"] and p["plugin_flavour"] == "none":
        problems.append("'tensorrt' is set, so 'plugin_flavour' must name the plugin interface")
    if p["dla"] and p["sm"] is None:
        problems.append("'dla' cores need a GPU ('sm')")
    if problems:
        raise RuntimeStageError(f"{where}{problems[0]}; {fix}")


def validate(
    data: Any, schema: dict[str, Any], source: str = "document", *, path: str = "", fix: str = "fix the file"
) -> None:
    """Raise :class:`RuntimeStageError` naming ``source``, the field and the problem of the first error."""
    errors = schema_errors(data, schema, path)
    if errors:
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise RuntimeStageError(f"{source}: {errors[0]}{more}; {fix}")


def devices_dir() -> Traversable:
    """``$EDGEDIFF_DEVICES`` if set (a folder of your own profiles), else the packaged profiles."""
    env = os.environ.get("EDGEDIFF_DEVICES")
    if env:
        return Path(env)
    return packaged_profiles()


def _stem(path: Traversable) -> str:
    return path.name.removesuffix(".toml")


def _load_toml(path: Traversable) -> dict[str, Any]:
    try:
        import tomllib  # Python >= 3.11
    except ModuleNotFoundError:  # pragma: no cover - exercised on Python 3.10 (JetPack 6)
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise RuntimeStageError(
                f"reading {path.name} needs a TOML parser; on Python 3.10 run `pip install tomli`"
            ) from None
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise RuntimeStageError(f"{path} is not valid TOML: {exc}; fix the file") from None
    except OSError as exc:
        raise RuntimeStageError(f"cannot read device profile {path}: {exc.strerror}") from None


def load_schema(folder: Traversable | None = None) -> dict[str, Any]:
    """The profile schema from ``<folder>/schema.json`` (or the packaged one when the folder has none)."""
    folder = devices_dir() if folder is None else folder
    path = folder / "schema.json"
    return _read_schema(path) if path.is_file() else PROFILE_SCHEMA


def list_profiles(folder: Traversable | None = None) -> list[str]:
    """Names of the profiles in the profiles folder (:func:`devices_dir`), sorted."""
    folder = devices_dir() if folder is None else folder
    if not folder.is_dir():
        return []
    return sorted(_stem(p) for p in folder.iterdir() if p.name.endswith(".toml") and p.is_file())


def load_profile(name_or_path: str | os.PathLike[str]) -> DeviceProfile:
    """Load a profile by name (packaged, or in ``$EDGEDIFF_DEVICES`` when set) or by path to a ``.toml``."""
    raw = str(name_or_path)
    path: Traversable = Path(raw)
    if raw.endswith(".toml") or os.sep in raw or Path(raw).is_file():
        folder: Traversable = Path(raw).parent
        if not path.is_file():
            raise RuntimeStageError(f"device profile file {path} does not exist; check the path")
    else:
        folder = devices_dir()
        path = folder / f"{raw}.toml"
        if not path.is_file():
            known = ", ".join(list_profiles(folder)) or f"none (no profiles in {folder})"
            raise RuntimeStageError(
                f"unknown device profile '{raw}'; known profiles: {known} (or pass a path to a .toml file)"
            )
    data = _load_toml(path)
    validate(data, load_schema(folder), source=path.name)
    if data["name"] != _stem(path):
        raise RuntimeStageError(
            f"{path.name}: field 'name' is '{data['name']}' but the "
            f"file is named '{_stem(path)}.toml'; make them match"
        )
    return DeviceProfile.from_dict(data, source=path.name)


def host_arch() -> str:
    """The host CPU architecture in profile spelling (``x86_64`` or ``aarch64``)."""
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def _available_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


def check_host(
    profile: DeviceProfile,
    backend: str = "ort",
    *,
    machine: str | None = None,
    providers: list[str] | None = None,
) -> None:
    """Raise when this host cannot run a bundle exported for ``profile`` (docs/design.md section 5).

    Checks the CPU architecture, and for ``backend="ort"`` that the profile's primary ONNX Runtime
    provider (the first in ``ort_providers``) is available; for ``backend="trt"`` that the profile
    targets TensorRT at all. ``machine`` and ``providers`` override host detection (tests).
    """
    arch = machine if machine is not None else host_arch()
    if arch != profile.arch:
        suggestion = "x86-cpu" if arch == "x86_64" else "<a profile for this host>"
        raise RuntimeStageError(
            f"bundle targets {profile.name} ({profile.runs_on()}) but this host is {arch}; "
            f"re-export with --device {suggestion} or pass --ignore-device"
        )
    if backend == "trt":
        if not profile.tensorrt:
            raise RuntimeStageError(
                f"bundle targets {profile.name}, which has no TensorRT; "
                "use --backend ort or re-export for a TensorRT device"
            )
        return
    have = _available_providers() if providers is None else providers
    primary = profile.ort_providers[0]
    if primary not in have:
        shown = ", ".join(have) or "none (onnxruntime is not installed)"
        raise RuntimeStageError(
            f"bundle targets {profile.name}, which runs on {primary}, but this "
            f"onnxruntime offers {shown}; install the onnxruntime build for this device "
            "(onnxruntime-gpu from the Jetson Zoo on Jetson) or pass --ignore-device"
        )
