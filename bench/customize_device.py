"""Cost of the controlled UNet on the device: one graph call of a customization bundle against the
plain UNet of the same model (ONNX Runtime CPU, torch-free).

Rows: the plain bundle's graph at 3 and 6 rows (the streams of one call without and with guidance),
the controlled graph at 1 and 2 groups (3 and 6 rows) with every layer plain (the inversion and
the steps without control), SAGI in every layer, and SALQ in the decoder. Each row runs once per
round, rounds interleaved; min and median per call are reported. Inputs are random (timing only).

Usage: `python -m bench.customize_device CUSTOMIZE_BUNDLE PLAIN_BUNDLE [--rounds 20] [--threads 1]`
(the bundles of `edgediff export customize` and `edgediff export onnx --fp` of the same model).
Writes bench/results/customize_device.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from edgediff_runtime.bundle import load_bundle
from edgediff_runtime.customize_spec import load_customize_spec

RESULTS = Path(__file__).resolve().parent / "results" / "customize_device.json"


def _session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _rows(custom: Path, plain: Path, threads: int) -> dict[str, tuple]:
    cb, pb = load_bundle(custom), load_bundle(plain)
    spec = load_customize_spec(cb.root)
    c, h, w = cb.manifest.model.sample_shape
    tokens, dim = cb.manifest.conditioning.shape
    rng = np.random.default_rng(0)
    cs, ps = _session(cb.model_path, threads), _session(pb.model_path, threads)
    cond = pb.manifest.conditioning.input
    rows = {}
    for n in (3, 6):
        rows[f"plain UNet, {n} rows"] = (
            ps,
            {
                "sample": rng.standard_normal((n, c, h, w), dtype=np.float32),
                "timestep": np.full((n,), 500, dtype=np.int64),
                cond: rng.standard_normal((n, tokens, dim), dtype=np.float32),
            },
        )
    layers = len(spec.layers)
    salq = [2 if p == "up" else 0 for p in spec.parts]
    masks = np.zeros((1, 2, h, w), dtype=np.float32)
    masks[:, 0, h // 4 : h - h // 4, w // 4 : w - w // 4] = 1
    masks[:, 1, :, w // 2 :] = 1
    for g in (1, 2):
        for name, mode in (("plain", [0] * layers), ("SAGI", [1] * layers), ("SALQ (decoder)", salq)):
            rows[f"controlled, {g} group(s) = {3 * g} rows, {name}"] = (
                cs,
                {
                    "sample": rng.standard_normal((g, 3 * c, h, w), dtype=np.float32),
                    "timestep": np.full((g,), 500, dtype=np.int64),
                    cond: rng.standard_normal((g, 3 * tokens, dim), dtype=np.float32),
                    spec.mask_input: np.repeat(masks, g, axis=0),
                    spec.mode_input: np.tile(np.asarray(mode, dtype=np.int64), (g, 1)),
                },
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("customize_bundle", type=Path)
    p.add_argument("plain_bundle", type=Path)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    rows = _rows(args.customize_bundle, args.plain_bundle, args.threads)
    times: dict[str, list[float]] = {k: [] for k in rows}
    for sess, feeds in rows.values():  # warm-up
        sess.run(None, feeds)
    for _ in range(args.rounds):
        for name, (sess, feeds) in rows.items():
            start = time.perf_counter()
            sess.run(None, feeds)
            times[name].append(1e3 * (time.perf_counter() - start))
    result = {
        "customize_bundle": str(args.customize_bundle),
        "plain_bundle": str(args.plain_bundle),
        "threads": args.threads,
        "rounds": args.rounds,
        "rows": {k: {"min_ms": min(v), "median_ms": statistics.median(v)} for k, v in times.items()},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print("| graph call | min ms | median ms |\n|---|---:|---:|")
    for k, v in result["rows"].items():
        print(f"| {k} | {v['min_ms']:.1f} | {v['median_ms']:.1f} |")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
