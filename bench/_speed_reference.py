"""The 1.1M-parameter reference UNet in `bench.speed`: ORT FP32 against our W8A8 bundle at one large batch.

The bundles are the ones `bench.export` and `bench.export_profile` time (`bench._models`: `ptq` W8A8
with symmetric weights, `ort` placement); each graph pass of `edgediff_export.passes.fastpath`
is applied to the W8A8 `model.onnx` on its own and all together, like the real-size rows.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from bench._models import bundle_for, quantized_folder, source_digest
from bench._speed_build import (
    combined_passes,
    fastpath_code,
    file_bytes,
    pass_counts,
    passed_file,
    psnr_vs,
    untimed_rows,
)

log = logging.getLogger(__name__)


def reference_files(work: Path, passes: list[str]) -> dict[str, Path]:
    """ONNX files of the reference rows (built once under `work`)."""
    work.mkdir(parents=True, exist_ok=True)
    fp = bundle_for(work, "reference", "fp32", fp=True) / "model.onnx"
    w8 = bundle_for(work, quantized_folder(work, "W8A8", symmetric_weights=True), "w8a8-sym", "ort")
    paths = {"ort-fp32": fp, "w8a8": w8 / "model.onnx"}
    tag = source_digest(*fastpath_code())
    combined = combined_passes(passes)
    todo = [([p], f"w8a8+{p}") for p in passes] + ([(combined, "w8a8+all")] if len(combined) > 1 else [])
    for chosen, key in todo:
        paths[key] = w8.parent / f"{w8.name}-{key}-{tag}.onnx"
        log.info("reference: %s %s", key, passed_file(paths["w8a8"], chosen, paths[key]))
    return paths


def reference_feeds(backend, batch: int) -> dict[str, np.ndarray]:
    """The reference UNet's inputs at `batch` (1x16x16 noise, timestep 500, step 0 where used)."""
    rng = np.random.default_rng(0)
    feeds = {
        "sample": rng.standard_normal((batch, 1, 16, 16), dtype=np.float32),
        "timestep": np.full((batch,), 500, dtype=np.int64),
    }
    if "step" in backend.input_names:
        feeds["step"] = np.array(0, dtype=np.int64)
    return feeds


def reference_rows(args, work: Path, rounds: int, open_ort, interleaved, summarize) -> dict:
    """Per-call timing at `args.reference_batch` of every row, output PSNR against PyTorch FP32."""
    from edgediff.reference.model import load_pipeline_parts

    paths = reference_files(work, args.passes)
    skipped = untimed_rows(paths)
    paths = {k: p for k, p in paths.items() if k not in skipped}
    backends = {k: open_ort(p, args.threads) for k, p in paths.items()}
    unet, _ = load_pipeline_parts("reference")
    unet.eval()
    batch = args.reference_batch
    f = {k: reference_feeds(b, batch) for k, b in backends.items()}
    x, t = torch.from_numpy(f["ort-fp32"]["sample"]), torch.from_numpy(f["ort-fp32"]["timestep"])

    def torch_call():
        with torch.no_grad():
            return unet(x, t, return_dict=False)[0].numpy()

    ref = torch_call()
    calls = {"torch-fp32": torch_call}
    calls |= {k: (lambda b=b, feeds=f[k]: b.run(feeds)) for k, b in backends.items()}
    log.info("reference batch %d: timing %d rows x %d rounds", batch, len(calls), rounds)
    timing = summarize(interleaved(calls, rounds), "ort-fp32")
    out_name = {k: b.output_names[0] for k, b in backends.items()}
    quality = {k: psnr_vs(ref, b.run(f[k])[out_name[k]]) for k, b in backends.items()}
    return {
        "params_m": sum(p.numel() for p in unet.parameters()) / 1e6,
        "bytes": {k: file_bytes(p) for k, p in paths.items()},
        "passes": {k: pass_counts(p) for k, p in paths.items() if pass_counts(p) is not None},
        "untimed_no_rewrite": skipped,
        "calls": {batch: timing},
        "psnr_call_db": {batch: quality},
    }
