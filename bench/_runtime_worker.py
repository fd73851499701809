"""One timed image-generation run in a fresh process (so peak memory is per process).

`python bench/_runtime_worker.py ort BUNDLE BATCH STEPS THREADS` (imports no torch) or
`python bench/_runtime_worker.py torch reference BATCH STEPS THREADS`; prints one JSON line with
the sampling wall time (model loading excluded, one warm-up call included in neither) and the
process's peak resident memory.
"""

from __future__ import annotations

import json
import resource
import sys
import time

import numpy as np


def run_ort(bundle_path: str, batch: int, steps: int, threads: int) -> float:
    from edgediff_runtime.backends import open_backend
    from edgediff_runtime.bundle import load_bundle
    from edgediff_runtime.pipeline import sample

    bundle = load_bundle(bundle_path)
    backend = open_backend(
        "ort",
        bundle.model_path,
        threads=threads,
        disabled_optimizers=bundle.manifest.onnx.ort_disabled_optimizers,
    )
    noise = np.random.default_rng(0).standard_normal(
        (batch, *bundle.manifest.model.sample_shape), dtype=np.float32
    )
    sample(bundle, backend, noise[:1], 1)  # warm-up
    t = time.perf_counter()
    sample(bundle, backend, noise, steps)
    return time.perf_counter() - t


def run_torch(model: str, batch: int, steps: int, threads: int) -> float:
    import torch

    from edgediff.reference.model import load_pipeline_parts
    from edgediff.sampling import ddim_sample, seeded_noise

    torch.set_num_threads(threads)
    unet, scheduler = load_pipeline_parts(model)
    cfg = dict(scheduler.config)
    noise = seeded_noise(batch, (1, 16, 16), 0)
    ddim_sample(unet, cfg, noise[:1], 1)  # warm-up
    t = time.perf_counter()
    ddim_sample(unet, cfg, noise, steps, batch_size=batch)
    return time.perf_counter() - t


if __name__ == "__main__":
    kind, target, batch, steps, threads = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
    seconds = (run_ort if kind == "ort" else run_torch)(target, batch, steps, threads)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {"kind": kind, "seconds": seconds, "peak_rss_mb": peak_mb, "torch_loaded": "torch" in sys.modules}
        )
    )
