"""The artifact bundle: open, verify and checksum a ``NAME.edgediff/`` folder (docs/design.md section 3).

The runtime owns this contract; the exporter writes it with :func:`write_manifest` and
:func:`edgediff_runtime.golden.save_golden`. A bundle is a folder::

    NAME.edgediff/
      manifest.json           Manifest.to_json() (edgediff_runtime.manifest): sha256 of every other file
      model.onnx              (+ model.onnx.data over 2 GB)
      reference/golden.npz    noise, timesteps, per-step latents, final (+ fp_final, step_noise)
      trt/ engines/           plugin sources and engines (optional)

:func:`load_bundle` verifies the folder before anything runs: the manifest parses and validates,
every listed file exists with the recorded sha256 (the golden references under ``reference/`` may
be left off a device copy; only parity needs them), the manifest agrees with the ONNX graph (input
and output names, opset), and the installed runtime is new enough.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from edgediff_runtime._atomic import write_bytes
from edgediff_runtime.errors import RuntimeStageError
from edgediff_runtime.manifest import GOLDEN_PATH, MANIFEST_NAME, REFERENCE_DIR, Manifest


# ----------------------------------------------------------------------------------- file I/O
def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: str | os.PathLike[str], manifest: Manifest) -> Manifest:
    """Fill ``manifest.files`` with the sha256 of every file in ``folder`` (but manifest.json); write it.

    Hidden files (names starting with ``.``, e.g. leftovers of atomic writes) are skipped. Returns the
    manifest that was written. The exporter calls this last, on its temporary bundle folder.
    """
    root = Path(folder)
    if not root.is_dir():
        raise RuntimeStageError(f"bundle folder {root} does not exist; create it before writing the manifest")
    files: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if not path.is_file() or rel == MANIFEST_NAME or any(p.startswith(".") for p in rel.split("/")):
            continue
        files[rel] = sha256_file(path)
    if manifest.model.file not in files:
        raise RuntimeStageError(f"bundle folder {root} has no {manifest.model.file}; write the model first")
    out = dataclasses.replace(manifest, files=files)
    out.check(f"manifest of {root.name}")
    write_bytes(root / MANIFEST_NAME, out.to_json().encode("utf-8"))
    return out


@dataclass
class Bundle:
    """A verified bundle on disk."""

    root: Path
    manifest: Manifest

    @property
    def name(self) -> str:
        """The bundle's folder name."""
        return self.root.name

    @property
    def model_path(self) -> Path:
        """Path of the ONNX model."""
        return self.root / self.manifest.model.file

    @property
    def golden_path(self) -> Path:
        """Path of the golden references (may not exist)."""
        return self.root / GOLDEN_PATH

    @property
    def has_golden(self) -> bool:
        """True when the bundle lists golden references and they are present."""
        return GOLDEN_PATH in self.manifest.files and self.golden_path.is_file()


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        m = re.match(r"\d+", piece)
        if not m:
            break
        parts.append(int(m.group()))
    return tuple(parts)


def version_at_least(installed: str, minimum: str) -> bool:
    """``installed >= minimum`` comparing leading numeric components (``1.20.1`` >= ``1.20``)."""
    a, b = _version_tuple(installed), _version_tuple(minimum)
    width = max(len(a), len(b))
    return a + (0,) * (width - len(a)) >= b + (0,) * (width - len(b))


def _check_runtime_versions(manifest: Manifest, backend: str | None, name: str) -> None:
    req = manifest.requirements
    if backend == "ort":
        try:
            import onnxruntime as ort
        except ImportError:
            raise RuntimeStageError(
                "onnxruntime is not installed; pip install "
                "onnxruntime (or onnxruntime-gpu from the Jetson Zoo)"
            ) from None
        if not version_at_least(ort.__version__, req.onnxruntime_min):
            raise RuntimeStageError(
                f"bundle {name} needs onnxruntime >= {req.onnxruntime_min} but {ort.__version__} is "
                "installed; upgrade onnxruntime"
            )
    elif backend == "trt" and req.tensorrt_min:
        try:
            import tensorrt as trt
        except ImportError:
            return  # the TensorRT backend reports its absence itself, with the fix
        if not version_at_least(trt.__version__, req.tensorrt_min):
            raise RuntimeStageError(
                f"bundle {name} needs TensorRT >= {req.tensorrt_min} but {trt.__version__} is installed; "
                "use a JetPack with a newer TensorRT or --backend ort"
            )


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """The bundle's parsed and validated ``manifest.json`` alone (no file hashing, no graph check):
    what a command needs to check its arguments before it opens the bundle."""
    root = Path(path)
    if not root.exists():
        raise RuntimeStageError(f"bundle {root} does not exist; check the path")
    if not root.is_dir():
        raise RuntimeStageError(
            f"bundle {root} is not a folder; pass the NAME.edgediff folder the exporter wrote"
        )
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise RuntimeStageError(f"{root} is not an edgediff bundle: {MANIFEST_NAME} is missing; re-export it")
    try:
        text = manifest_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RuntimeStageError(f"cannot read {manifest_path}: {exc}; re-export the bundle") from None
    return Manifest.from_json(text, source=f"{MANIFEST_NAME} of bundle {root.name}")


def load_bundle(
    path: str | os.PathLike[str],
    *,
    verify: bool = True,
    backend: str | None = "ort",
    need_golden: bool = False,
) -> Bundle:
    """Open and verify a bundle (docs/design.md section 3).

    Checks that the folder and ``manifest.json`` exist and parse, that every file listed in
    ``manifest.files`` exists with the recorded sha256 (``verify=False`` skips hashing; files
    under ``reference/`` may be absent unless ``need_golden``), that the manifest agrees with the
    ONNX graph (:func:`check_graph`), and that the installed runtime for ``backend`` ("ort",
    "trt" or None) meets ``manifest.requirements``.
    """
    root = Path(path)
    manifest = read_manifest(root)
    if manifest.model.file not in manifest.files:
        raise RuntimeStageError(
            f"{MANIFEST_NAME} of bundle {root.name} has no checksum "
            f"for {manifest.model.file}; re-export the bundle"
        )
    for rel, expected in manifest.files.items():
        file = root / rel
        if not file.is_file() and rel.startswith(REFERENCE_DIR) and not need_golden:
            continue  # golden references: only parity reads them
        if not file.is_file():
            hint = (
                "copy it from the exported bundle or re-export"
                if rel.startswith(REFERENCE_DIR)
                else ("re-export it")
            )
            raise RuntimeStageError(f"bundle {root.name} is incomplete: {rel} is missing; {hint}")
        if verify and sha256_file(file) != expected:
            raise RuntimeStageError(
                f"checksum mismatch for {rel}: the file was modified or truncated; re-export the bundle"
            )
    check_graph(manifest, root / manifest.model.file, root.name)
    _check_runtime_versions(manifest, backend, root.name)
    return Bundle(root=root, manifest=manifest)


def check_graph(manifest: Manifest, model_path: Path, name: str) -> None:
    """The manifest's graph inputs, outputs and opset must be those of ``model.onnx``."""
    from edgediff_runtime.onnx_header import OnnxHeaderError, read_onnx_header

    try:
        header = read_onnx_header(model_path)
    except (OSError, OnnxHeaderError) as exc:
        raise RuntimeStageError(
            f"cannot read {model_path.name} of bundle {name} as ONNX ({exc}); re-export it"
        ) from None
    fix = "the manifest does not describe this model.onnx; re-export the bundle"
    for what, declared, actual in (
        ("inputs", [t.name for t in manifest.model.inputs], header.inputs),
        ("outputs", [t.name for t in manifest.model.outputs], header.outputs),
    ):
        if sorted(declared) != sorted(actual):
            raise RuntimeStageError(
                f"bundle {name}: manifest lists graph {what} {declared} "
                f"but {model_path.name} has {actual}; {fix}"
            )
    if header.opset != manifest.onnx.opset:
        raise RuntimeStageError(
            f"bundle {name}: manifest says opset {manifest.onnx.opset} but {model_path.name} imports opset "
            f"{header.opset}; {fix}"
        )
