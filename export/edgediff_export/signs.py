"""Binary-residual sign packing: the one implementation of the bit layout (docs/methods.md section 2.4).

Contract: bit ``b`` (LSB first) of byte ``j`` of row ``k`` is the sign of column ``8j+b``; 1 means
+1, 0 means -1; padding bits are written as 0 and ignored on read. The ONNX function bodies, the
CUDA kernels and the TensorRT plugin decode this layout; everything on the Python side (the
exported initializers, the numpy reference, the torch custom ops, the GPU check) packs and
unpacks through this module. It imports only numpy.
"""

from __future__ import annotations

import numpy as np

from edgediff_export.errors import ExportError


class SignPackingError(ExportError, ValueError):
    """A sign matrix or packed array that does not fit the layout (one line, names the fix)."""


def pack_signs(signs: np.ndarray) -> np.ndarray:
    """Pack a ±1 matrix ``[K, n]`` into uint8 ``[K, ceil(n/8)]``, LSB first, padding bits 0."""
    s = np.asarray(signs)
    if s.ndim != 2:
        raise SignPackingError(f"pack_signs needs a 2-D [K, n] sign matrix, got shape {s.shape}; reshape it")
    if s.size and not np.all((s == 1) | (s == -1)):
        raise SignPackingError(
            "pack_signs needs values in {-1, +1}; map the residual signs with np.where(s >= 0, 1, -1)"
        )
    bits = (s > 0).astype(np.uint8)
    return np.packbits(bits, axis=1, bitorder="little").reshape(s.shape[0], (s.shape[1] + 7) // 8)


def unpack_signs(packed: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`pack_signs`: ``[K, >= ceil(n/8)]`` bytes -> int8 ±1 ``[K, n]``.

    Any integer storage reads as its low byte (TensorRT's parser turns a UINT8 initializer into
    INT32); padding bits and extra bytes are ignored.
    """
    p = np.asarray(packed)
    if p.ndim != 2 or not np.issubdtype(p.dtype, np.integer):
        raise SignPackingError(f"unpack_signs needs an integer [K, ceil(n/8)] array, got {p.dtype} {p.shape}")
    need = (n + 7) // 8
    if p.shape[1] < need:
        raise SignPackingError(f"packed signs have {p.shape[1]} bytes per row but n={n} needs {need}")
    as_bytes = (p.astype(np.int64) & 0xFF).astype(np.uint8)
    bits = np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :n]
    return (bits.astype(np.int8) * 2 - 1).astype(np.int8)
