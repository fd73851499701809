"""Save a model inline below the protobuf limit and with one external data file above it.

docs/design.md section 3: the bundle holds ``model.onnx`` and, when the model is over 2 GB,
``model.onnx.data``. docs/deployment.md section 11: keep models under 2 GB inline (``external_data=False``),
because ONNX Runtime's quantization tools fail on the ``.data`` file. Torch-free.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from edgediff_export.errors import ExportError

#: Protobuf's hard limit on one serialized message.
PROTOBUF_LIMIT = 2**31
#: Default switch point: 2 GB minus 64 MiB of headroom for the graph itself.
DEFAULT_THRESHOLD = PROTOBUF_LIMIT - 64 * 2**20


def model_bytes(model: onnx.ModelProto) -> int:
    """Serialized size of ``model``; ``PROTOBUF_LIMIT`` when protobuf cannot size it."""
    try:
        return int(model.ByteSize())
    except Exception:  # noqa: BLE001 - some protobuf builds refuse messages past 2 GB
        return PROTOBUF_LIMIT


def external_data_path(path: str | os.PathLike[str]) -> Path:
    """The data file that goes with ``path``: ``<name>.onnx.data`` next to it."""
    p = Path(path)
    return p.with_name(p.name + ".data")


def save_model(
    model: onnx.ModelProto,
    path: str | os.PathLike[str],
    *,
    threshold: int = DEFAULT_THRESHOLD,
    min_tensor_bytes: int = 1024,
    copy: bool = True,
) -> list[Path]:
    """Write ``model`` to ``path``; returns the files written.

    Inline when its serialized size is below ``threshold`` bytes (a stale ``.data`` file from an earlier
    save is removed); otherwise every tensor of at least ``min_tensor_bytes`` goes to one file,
    ``<path>.data`` (``model.onnx.data``), referenced relative to ``path``. ``model`` is not modified
    unless ``copy=False``: then its tensors are moved to the data file in place (no second copy of
    the weights in memory; the caller must not use ``model``'s tensor data afterwards).
    """
    p = Path(path)
    if p.suffix != ".onnx":
        raise ExportError(f"model path {p} should end in .onnx so the data file is named {p.name}.onnx.data")
    data = external_data_path(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    if data.exists():
        data.unlink()  # onnx appends to an existing data file
    if model_bytes(model) < threshold:
        onnx.save_model(model, str(p))
        return [p]
    if copy:
        m = onnx.ModelProto()
        m.CopyFrom(model)
    else:
        m = model
    onnx.save_model(
        m,
        str(p),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data.name,
        size_threshold=min_tensor_bytes,
        convert_attribute=True,
    )
    return [p, data] if data.exists() else [p]


__all__ = ["DEFAULT_THRESHOLD", "PROTOBUF_LIMIT", "external_data_path", "model_bytes", "save_model"]
