"""Torch-free ONNX passes (docs/design.md section 1): fold weights, Q/DQ placement, lint, external data.

See docs/export-passes.md. Only numpy and onnx are imported at module level; onnxruntime is imported
lazily by the functions that run it (:func:`probe_int2_support`, :func:`ort_session_options`).
"""

from edgediff_export.passes.containers import narrow_weight_containers
from edgediff_export.passes.external_data import save_model
from edgediff_export.passes.fold_weights import (
    FoldResult,
    fold_weights,
    probe_2bit_details,
    probe_int2_support,
    symmetrize_int8,
)
from edgediff_export.passes.lint import Violation, format_violations, lint
from edgediff_export.passes.placement import find_quantized_nodes, ort_session_options, place_qdq

__all__ = [
    "FoldResult",
    "Violation",
    "find_quantized_nodes",
    "fold_weights",
    "format_violations",
    "lint",
    "narrow_weight_containers",
    "ort_session_options",
    "place_qdq",
    "probe_2bit_details",
    "probe_int2_support",
    "save_model",
    "symmetrize_int8",
]
