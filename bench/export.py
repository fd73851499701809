"""Export benchmark: ONNX size and ONNX Runtime CPU latency per UNet call.

FP32 and the reference model quantized with `ptq` at W8A8, W4A8 and W2A4, each exported with
the `ort` placement (Q/DQ on inputs and outputs) and the `trt` placement (inputs only, symmetric
int8; TensorRT's form, timed here on ONNX Runtime CPU for comparison). Latencies are measured
side by side in one process, interleaving the sessions round by round, and reported as medians
and as ratios to FP32 from the same rounds.

Usage: `python -m bench.export [--work /tmp/edgediff-bench] [--rounds 15] [--threads 2]`.
Writes bench/results/export.json and the `export` section of docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench._models import bundle_for, quantized_folder
from bench._report import host_info, markdown_table, update_results_section, write_json

CONFIGS = ["W8A8", "W4A8", "W2A4"]


def make_session(path: Path, threads: int):
    import onnx
    import onnxruntime as ort

    from edgediff_export.passes.placement import ort_session_options

    so = ort_session_options(onnx.load(str(path)), intra_op_num_threads=threads)
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def feeds_for(session, batch: int) -> dict:
    rng = np.random.default_rng(0)
    feeds = {
        "sample": rng.standard_normal((batch, 1, 16, 16), dtype=np.float32),
        "timestep": np.full((batch,), 500, dtype=np.int64),
    }
    if "step" in [i.name for i in session.get_inputs()]:
        feeds["step"] = np.array(0, dtype=np.int64)
    return feeds


def time_interleaved(sessions: dict, batch: int, rounds: int) -> dict[str, list[float]]:
    feeds = {k: feeds_for(s, batch) for k, s in sessions.items()}
    for k, s in sessions.items():  # warm-up
        s.run(None, feeds[k])
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, feeds[k])
            times[k].append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/edgediff-bench")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument(
        "--extra",
        nargs="*",
        default=[],
        metavar="LABEL=FOLDER",
        help="more quantized folders to export with the ort placement (e.g. 'MPQ-DMv2 W2A4=out/mpqdmv2')",
    )
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    bundles = {"FP32": bundle_for(work, "reference", "fp32", fp=True)}
    for bits in CONFIGS:
        q = quantized_folder(work, bits)
        for placement in ("ort", "trt"):
            bundles[f"{bits} {placement}"] = bundle_for(work, q, bits.lower(), placement)
    # symmetric weights (zero point 2^(b-1)): int8 weights in the ort bundle, ONNX Runtime's u8s8 path
    q = quantized_folder(work, "W8A8", symmetric_weights=True)
    bundles["W8A8 sym-weights ort"] = bundle_for(work, q, "w8a8-sym", "ort")
    for spec in args.extra:
        label, _, folder = spec.partition("=")
        if not folder or not Path(folder).is_dir():
            raise SystemExit(f"error: --extra needs LABEL=FOLDER with an existing folder, got {spec!r}")
        meta = json.loads((Path(folder) / "edgediff_meta.json").read_text())
        steps = meta.get("_edgediff", {}).get("num_steps") or meta.get("num_steps", 20)
        slug = "".join(c if c.isalnum() else "-" for c in label.lower())
        bundles[f"{label} ort"] = bundle_for(work, folder, slug, "ort", steps=steps)
    sizes = {k: (b / "model.onnx").stat().st_size for k, b in bundles.items()}
    sessions = {k: make_session(b / "model.onnx", args.threads) for k, b in bundles.items()}
    latency = {}
    for batch in args.batches:
        times = time_interleaved(sessions, batch, args.rounds)
        fp = np.array(times["FP32"])
        latency[batch] = {
            k: {"median_ms": 1e3 * float(np.median(v)), "speedup_vs_fp32": float(np.median(fp / np.array(v)))}
            for k, v in times.items()
        }
        print(batch, {k: round(v["speedup_vs_fp32"], 2) for k, v in latency[batch].items()}, flush=True)
    result = {
        "host": host_info(),
        "threads": args.threads,
        "rounds": args.rounds,
        "sizes_bytes": sizes,
        "latency": {str(b): v for b, v in latency.items()},
    }
    write_json("export", result)
    rows = []
    for k in bundles:
        row = [k, f"{sizes[k] / 1e6:.3f}", f"{sizes['FP32'] / sizes[k]:.1f}x"]
        for b in args.batches:
            row += [f"{latency[b][k]['median_ms']:.1f}", f"{latency[b][k]['speedup_vs_fp32']:.2f}x"]
        rows.append(row)
    header = ["model / placement", "ONNX MB", "smaller than FP32"]
    for b in args.batches:
        header += [f"batch {b} ms", f"batch {b} speed-up"]
    update_results_section(
        "export",
        "### Export: ONNX size and ONNX Runtime CPU latency per UNet call (`python -m bench.export`, "
        f"{args.threads} threads, median of {args.rounds} interleaved rounds; speed-up = median of per-round "
        "FP32/model ratios)\n\n"
        + markdown_table(header, rows)
        + "\n\nThe `trt` rows are TensorRT's graph form timed on ONNX Runtime CPU (no TensorRT here); "
        "ONNX Runtime runs it with float dequantization, so it is expected to be slower than FP32 on the "
        "CPU (docs/deployment.md 11).\n",
    )


if __name__ == "__main__":
    main()
