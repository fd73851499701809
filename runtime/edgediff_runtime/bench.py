"""Latency benchmark of a bundle on this host: per model call and per image (``edgediff-run bench``).

Percentiles p50/p90/p99 over timed iterations after warm-up; peak resident memory from
``resource.getrusage`` (the process high-water mark, so it includes the Python runtime).
"""

from __future__ import annotations

import platform
import sys
import time

import numpy as np

from edgediff_runtime.backends import Backend
from edgediff_runtime.bundle import Bundle
from edgediff_runtime.errors import RuntimeStageError
from edgediff_runtime.pipeline import make_feeds, sample
from edgediff_runtime.samplers import make_sampler


def percentiles(seconds: list[float]) -> dict[str, float]:
    """p50/p90/p99/mean/min in milliseconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return {
        "p50": float(np.percentile(ms, 50)),
        "p90": float(np.percentile(ms, 90)),
        "p99": float(np.percentile(ms, 99)),
        "mean": float(ms.mean()),
        "min": float(ms.min()),
        "n": int(ms.size),
    }


def peak_rss_mb() -> float | None:
    """Peak resident set size of this process in MiB (None where ``resource`` is unavailable)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024.0 if sys.platform != "darwin" else peak / (1024.0 * 1024.0)


def run_bench(
    bundle: Bundle,
    backend: Backend,
    *,
    batch: int = 1,
    iters: int = 20,
    warmup: int = 3,
    steps: int | None = None,
    image_runs: int = 3,
    seed: int = 0,
    backend_name: str = "ort",
) -> dict:
    """Time ``iters`` model calls and ``image_runs`` full sampling runs at ``batch``; returns a JSON dict."""
    for name, value, low in (
        ("--batch", batch, 1),
        ("--iters", iters, 1),
        ("--warmup", warmup, 0),
        ("--image-runs", image_runs, 0),
    ):
        if value < low:
            raise RuntimeStageError(f"{name} must be >= {low}, got {value}")
    manifest = bundle.manifest
    steps = manifest.sampler.steps if steps is None else steps
    sampler = make_sampler(manifest.sampler, steps)  # validates steps
    manifest.check_steps(sampler.num_steps)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *manifest.model.sample_shape), dtype=np.float32)
    feeds = make_feeds(
        manifest.model, sampler.scale_model_input(sampler.init_latent(x), 0), float(sampler.timesteps[0]), 0
    )
    for _ in range(warmup):
        backend.run(feeds)
    calls = []
    for _ in range(iters):
        start = time.perf_counter()
        backend.run(feeds)
        calls.append(time.perf_counter() - start)
    images = []
    for k in range(image_runs):
        noise = np.random.default_rng(seed + k).standard_normal(x.shape, dtype=np.float32)
        start = time.perf_counter()
        sample(bundle, backend, noise, steps, rng=np.random.default_rng(seed + k))
        images.append((time.perf_counter() - start) / batch)
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:  # pragma: no cover
        ort_version = None
    return {
        "bundle": bundle.name,
        "backend": backend_name,
        "providers": list(getattr(backend, "providers", [])),
        "batch": batch,
        "steps": steps,
        "unet_call_ms": percentiles(calls),
        "image_ms": percentiles(images) if images else None,
        "peak_rss_mb": peak_rss_mb(),
        "host": {
            "machine": platform.machine(),
            "processor": platform.processor(),
            "python": platform.python_version(),
            "onnxruntime": ort_version,
        },
    }
