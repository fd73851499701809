"""Read an ONNX file's opsets and graph input/output names without the ``onnx`` package.

The runtime checks a bundle's manifest against its graph when it opens the bundle; it needs only
a few fields of the ``ModelProto`` protobuf (onnx/onnx.proto3)::

    ModelProto      1 ir_version (varint), 7 graph (GraphProto), 8 opset_import (OperatorSetIdProto)
    OperatorSetIdProto  1 domain (string), 2 version (varint)
    GraphProto      5 initializer, 11 input, 12 output (ValueInfoProto)
    ValueInfoProto  1 name (string)

Every other field, the weights included, is skipped by seeking, so a large model is not read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import BinaryIO

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class OnnxHeaderError(ValueError):
    """The file is not a readable ONNX protobuf."""


@dataclass
class OnnxHeader:
    """``opsets``: domain (``""`` = default) -> version; ``inputs``/``outputs``: graph names in order;
    ``initializers``: how many initializers the graph holds."""

    ir_version: int = 0
    opsets: dict[str, int] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    initializers: int = 0

    @property
    def opset(self) -> int | None:
        """The default-domain opset (``""`` or ``ai.onnx``)."""
        return self.opsets.get("", self.opsets.get("ai.onnx"))


def _varint(fh: BinaryIO) -> int:
    shift = result = 0
    while True:
        byte = fh.read(1)
        if not byte:
            raise OnnxHeaderError("truncated varint")
        result |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise OnnxHeaderError("varint longer than 64 bits")


def _fields(fh: BinaryIO, end: int):
    """Yield (field number, wire type, value or length) up to byte ``end``; LEN payloads are
    left at the current position for the caller to read or skip."""
    while fh.tell() < end:
        key = _varint(fh)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            yield number, wire, _varint(fh)
        elif wire == _LEN:
            length = _varint(fh)
            if fh.tell() + length > end:
                raise OnnxHeaderError(f"field {number} runs past its message")
            yield number, wire, length
        elif wire == _I64:
            fh.seek(8, os.SEEK_CUR)
            yield number, wire, None
        elif wire == _I32:
            fh.seek(4, os.SEEK_CUR)
            yield number, wire, None
        else:
            raise OnnxHeaderError(f"unsupported protobuf wire type {wire}")
    if fh.tell() != end:
        raise OnnxHeaderError("message overruns its length")


def _string_field(fh: BinaryIO, end: int, wanted: int) -> str:
    """The string field ``wanted`` of the message ending at ``end`` (seeks to ``end``)."""
    value = ""
    for number, wire, length in _fields(fh, end):
        if wire != _LEN:
            continue
        start = fh.tell()
        if number == wanted:
            value = fh.read(length).decode("utf-8", errors="replace")
        fh.seek(start + length)
    return value


def read_onnx_header(path: str | os.PathLike[str]) -> OnnxHeader:
    """Opsets, IR version and graph input/output names of the ONNX file at ``path``."""
    header = OnnxHeader()
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(0)
        for number, wire, value in _fields(fh, size):
            if number == 1 and wire == _VARINT:
                header.ir_version = value
            elif wire == _LEN:
                start = fh.tell()
                if number == 8:
                    domain, version = "", 0
                    for n, w, v in _fields(fh, start + value):
                        if n == 1 and w == _LEN:
                            domain = fh.read(v).decode("utf-8", errors="replace")
                        elif n == 2 and w == _VARINT:
                            version = v
                        elif w == _LEN:
                            fh.seek(v, os.SEEK_CUR)
                    header.opsets[domain] = version
                elif number == 7:
                    _read_graph(fh, start + value, header)
                fh.seek(start + value)
    if not header.opsets:
        raise OnnxHeaderError("no opset_import: not an ONNX model")
    return header


def _read_graph(fh: BinaryIO, end: int, header: OnnxHeader) -> None:
    for number, wire, length in _fields(fh, end):
        if wire != _LEN:
            continue
        start = fh.tell()
        if number in (11, 12):
            name = _string_field(fh, start + length, 1)
            (header.inputs if number == 11 else header.outputs).append(name)
        elif number == 5:
            header.initializers += 1
        fh.seek(start + length)
