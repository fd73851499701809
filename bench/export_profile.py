"""Where an ONNX Runtime CPU call of the reference UNet spends its time, per operator type.

Profiles the FP32 bundle and the W8A8 symmetric-weight `ort` bundle (the fastest quantized one in
`bench.export`) with ONNX Runtime's own profiler at one batch size, and derives the speed-up
ceiling of weight/activation quantization on this model (Amdahl's law): if every convolution and
matrix product of the FP32 call (with the layout reorders ONNX Runtime puts around convolutions)
took no time at all, the call could get at most `total / (total - those)` faster. The rest
(GroupNorm, SiLU, softmax, adds, casts) stays in float in every bundle of this project.

Usage: `python -m bench.export_profile [--work /tmp/edgediff-bench] [--batch 64] [--runs 5]`.
Writes bench/results/export_profile.json and the `export-profile` section of docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
from pathlib import Path

from bench._models import bundle_for, quantized_folder
from bench._report import host_info, markdown_table, update_results_section, write_json
from bench.export import feeds_for

# Everything quantization could accelerate, counted generously so the ceiling is an upper bound:
# all convolutions and matrix products (attention's float Q.K^T and P.V included) and the NCHWc
# reorders ONNX Runtime inserts around float convolutions.
MATRIX_OPS = {
    "Conv",
    "FusedConv",
    "QLinearConv",
    "Gemm",
    "FusedGemm",
    "MatMul",
    "FusedMatMul",
    "MatMulIntegerToFloat",
    "ReorderInput",
    "ReorderOutput",
}


def op_times_ms(
    path: Path, batch: int, threads: int, runs: int, feeds: dict | None = None
) -> dict[str, float]:
    """Mean kernel milliseconds per call for each operator type (ONNX Runtime's profiler); `feeds`
    default to the reference UNet's inputs at `batch`."""
    import onnx
    import onnxruntime as ort

    from edgediff_export.passes.placement import ort_session_options

    so = ort_session_options(onnx.load(str(path)), intra_op_num_threads=threads)
    so.log_severity_level = 3
    so.enable_profiling = True
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feeds = feeds_for(session, batch) if feeds is None else feeds
    session.run(None, feeds)  # warm-up, profiled too: dropped below by counting only the last runs
    for _ in range(runs):
        session.run(None, feeds)
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    os.remove(trace)
    calls = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    first_timed = calls[-runs]["ts"]
    totals: collections.Counter[str] = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= first_timed:
            totals[e["args"]["op_name"]] += e["dur"] / 1000 / runs
    return dict(totals.most_common())


def ceiling(ops: dict[str, float]) -> float:
    """Amdahl bound: the speed-up if every op in MATRIX_OPS took zero time."""
    total = sum(ops.values())
    rest = total - sum(v for k, v in ops.items() if k in MATRIX_OPS)
    return total / rest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/edgediff-bench")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    bundles = {
        "FP32": bundle_for(work, "reference", "fp32", fp=True),
        "W8A8 sym-weights ort": bundle_for(
            work, quantized_folder(work, "W8A8", symmetric_weights=True), "w8a8-sym", "ort"
        ),
    }
    profiles = {
        k: op_times_ms(b / "model.onnx", args.batch, args.threads, args.runs) for k, b in bundles.items()
    }
    fp = profiles["FP32"]
    result = {
        "host": host_info(),
        "batch": args.batch,
        "threads": args.threads,
        "runs": args.runs,
        "ms_per_op_type": profiles,
        "kernel_ms_total": {k: sum(v.values()) for k, v in profiles.items()},
        "matrix_ops": sorted(MATRIX_OPS),
        "fp32_matrix_share": 1 - 1 / ceiling(fp),
        "speedup_ceiling": ceiling(fp),
    }
    write_json("export_profile", result)
    print(json.dumps({k: result[k] for k in ("kernel_ms_total", "fp32_matrix_share", "speedup_ceiling")}))
    if not args.no_docs:
        write_docs(result)


def write_docs(result: dict) -> None:
    profiles = result["ms_per_op_type"]
    slowest = {k: max(p.get(k, 0.0) for p in profiles.values()) for p in profiles.values() for k in p}
    ops = sorted(slowest, key=lambda k: -slowest[k])
    rows = [[op, *[f"{p.get(op, 0):.1f}" for p in profiles.values()]] for op in ops[:14]]
    rows.append(["**all kernels**", *[f"{t:.1f}" for t in result["kernel_ms_total"].values()]])
    md = (
        f"### Export: ONNX Runtime CPU time per operator type (`python -m bench.export_profile`, batch "
        f"{result['batch']}, {result['threads']} threads, mean of {result['runs']} profiled calls, ms)\n\n"
        + markdown_table(["op type", *profiles], rows)
        + f"\n\nConvolutions and matrix products (with the NCHWc reorders around them) are "
        f"{100 * result['fp32_matrix_share']:.0f} % of the FP32 call; everything else (GroupNorm, SiLU, "
        f"softmax, adds, casts) stays in float in every bundle. Even if quantized convolutions and matrix "
        f"products took no time, the call could get at most **{result['speedup_ceiling']:.2f}x** faster than "
        "FP32 on this model (Amdahl's law).\n"
    )
    update_results_section("export-profile", md)


if __name__ == "__main__":
    main()
