"""Speed at real model sizes: edgediff's integer bundles against what users would run instead.

For random-weight denoisers built from configs (`bench/_speed_models.py`: DDPM-CIFAR10 UNet 35.7M,
DiT-S/2, DiT-B/2, opt-in SD-1.5 UNet at a 32x32 latent), one denoiser call at each batch size on
ONNX Runtime CPU, rows:

* PyTorch FP32 eager (diffusers), ORT FP32 of our export, ORT `quantize_static` of that file (QDQ,
  per-channel int8 weights), our W8A8 and W4A8 (`ptq`, symmetric weights, `ort` placement), and
  W8A8 after each graph pass of `edgediff_export.passes.fastpath` on its own and all together;
* paired PSNR of every quantized row against PyTorch FP32: the call's output on the same inputs,
  and the final sample of a 20-step DDIM run from the same noise (runtime sampler);
* end to end: the runtime's sampling loop (`edgediff_runtime.pipeline.sample`, 20 steps) against the
  diffusers DDIM loop in PyTorch FP32.

Timing: every row runs once per round, rounds interleaved, min and median reported; ratios are
taken within the same run. Threads are fixed (`--threads`, default 2) for PyTorch and ORT.

Usage: `python -m bench.speed --models unet-cifar10 dit-b2 --batches 1 8 --rounds 20`
(`--calib-samples 4` by default: few DDIM trajectories, enough to set ranges for a speed bench).
Writes bench/results/speed.json and the `speed` section of docs/RESULTS.md (`--no-docs` to skip).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

import bench._report as report
from bench._report import host_info, markdown_table, update_results_section, write_json
from bench._speed_build import build_variants, file_bytes, pass_counts, psnr_vs, torch_ddim, untimed_rows
from bench._speed_models import CASES, ModelCase, parameter_count
from edgediff_runtime.parity import psnr  # final samples lie in [-1, 1]: data range 2

log = logging.getLogger("bench.speed")

DEFAULT_PASSES = [
    "fold-weight-transposes",
    "dynamic-linears",
    "dynamic-linears-sym",
    "transpose-pairs",
    "drop-dq-q-pairs",
    "groupnorm",
    "remove-noop-casts",
]


NO_BINDING = "w8a8 session.run"  # the W8A8 graph without the backend's IO binding


def open_ort(path: Path, threads: int, io_binding: bool = True):
    """The runtime's ORT backend on `path` with the optimizers the graph needs off."""
    import onnx

    from edgediff_export.passes.placement import ort_disabled_optimizers
    from edgediff_runtime.backends.ort import OrtBackend

    disabled = ort_disabled_optimizers(onnx.load(str(path), load_external_data=False))
    return OrtBackend(path, threads=threads, disabled_optimizers=disabled, io_binding=io_binding)


def feeds(case: ModelCase, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    gen = torch.Generator().manual_seed(seed)
    out = {
        "sample": torch.randn(batch, *case.sample_shape, generator=gen).numpy(),
        "timestep": np.full((batch,), 500, dtype=np.int64),
    }
    return out | {k: v.numpy() for k, v in case.extra_inputs(batch, seed).items()}


def interleaved(calls: dict[str, callable], rounds: int, warm_up: bool = True) -> dict[str, list[float]]:
    """Seconds per call of each row; one warm-up (unless `warm_up` is False: a sampling loop warms
    itself on its first step), then `rounds` rounds of every row in turn."""
    for fn in calls.values() if warm_up else []:
        fn()
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for k, fn in calls.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return times


def summarize(times: dict[str, list[float]], base: str) -> dict[str, dict]:
    out = {}
    for k, v in times.items():
        out[k] = {"min_ms": 1e3 * min(v), "median_ms": 1e3 * statistics.median(v), "rounds": len(v)}
    for k in out:
        out[k]["speedup_vs_" + base] = out[base]["min_ms"] / out[k]["min_ms"]
        out[k]["speedup_vs_torch"] = out["torch-fp32"]["min_ms"] / out[k]["min_ms"]
    return out


def runtime_bundle(path: Path, case: ModelCase, steps: int):
    """An in-memory runtime `Bundle` over an ONNX file: what `edgediff-run` samples with."""
    import onnx

    from edgediff.sampling import ddim_settings
    from edgediff_export.bundle import _tensor_specs, sampler_spec
    from edgediff_runtime.bundle import Bundle
    from edgediff_runtime.manifest import Manifest, ModelSpec, OnnxSpec

    proto = onnx.load(str(path), load_external_data=False)
    manifest = Manifest(
        name=path.stem,
        model=ModelSpec(
            family=case.kind,
            inputs=_tensor_specs(proto.graph.input),
            outputs=_tensor_specs(proto.graph.output),
            sample_shape=list(case.sample_shape),
        ),
        sampler=sampler_spec(
            case.schedule,
            steps,
            timestep_spacing=ddim_settings(case.schedule).timestep_spacing,
            set_alpha_to_one=ddim_settings(case.schedule).set_alpha_to_one,
        ),
        onnx=OnnxSpec(opset=17, ir_version=proto.ir_version),
    )
    return Bundle(root=path.parent, manifest=manifest)


def call_rows(case: ModelCase, fp, backends: dict, batch: int, rounds: int) -> tuple[dict, dict]:
    """Timing of one denoiser call per row, and each ORT row's output PSNR against PyTorch FP32."""
    f = feeds(case, batch)
    tf = {k: torch.from_numpy(v) for k, v in f.items()}
    x, t = tf.pop("sample"), tf.pop("timestep")

    def torch_call():
        with torch.no_grad():
            return fp(x, t, **tf, return_dict=False)[0].numpy()

    ref = torch_call()
    calls = {"torch-fp32": torch_call} | {k: partial(b.run, f) for k, b in backends.items()}
    log.info("%s batch %d: timing %d rows x %d rounds", case.name, batch, len(calls), rounds)
    timing = summarize(interleaved(calls, rounds), "ort-fp32")
    return timing, {k: psnr_vs(ref, b.run(f)["model_output"]) for k, b in backends.items()}


def _runtime_final(case: ModelCase, backend, path: Path, steps: int, noise: torch.Tensor, cond: dict):
    """The runtime's sampling loop (`edgediff_runtime.pipeline.sample`) on one ORT row."""
    from edgediff_runtime.pipeline import sample

    bundle = runtime_bundle(path, case, steps)
    extra = {k: v.numpy() for k, v in cond.items()}
    return sample(bundle, backend, noise.numpy(), steps, extra_feeds=extra).final


def loop_rows(case: ModelCase, fp, backends: dict, paths: dict, batch: int, args, rows: list[str]) -> dict:
    """End to end: the runtime's sampling loop on `rows` against the PyTorch DDIM loop, timed."""
    noise = torch.randn(batch, *case.sample_shape, generator=torch.Generator().manual_seed(7))
    cond = case.extra_inputs(batch, seed=7)
    loops = {"torch-fp32": partial(torch_ddim, fp, case, noise, args.steps, cond)}
    for k in rows:
        loops[k] = partial(_runtime_final, case, backends[k], paths[k], args.steps, noise, cond)
    log.info("%s batch %d: end to end, %d rounds", case.name, batch, args.e2e_rounds)
    return summarize(interleaved(loops, args.e2e_rounds, warm_up=False), "torch-fp32")


def sample_psnr(case: ModelCase, fp, backends: dict, paths: dict, samples: int, steps: int) -> dict:
    """Every ORT row's final sample from the same noise (runtime loop) vs the PyTorch FP32 loop's."""
    noise = torch.randn(samples, *case.sample_shape, generator=torch.Generator().manual_seed(11))
    cond = case.extra_inputs(samples, seed=11)
    ref = torch_ddim(fp, case, noise, steps, cond).final.numpy()
    log.info("%s: %d-step samples of %d rows for PSNR", case.name, steps, len(backends))
    rows = {k: b for k, b in backends.items() if k != NO_BINDING}  # same graph as w8a8
    return {k: psnr(ref, _runtime_final(case, b, paths[k], steps, noise, cond)) for k, b in rows.items()}


def bench_case(case: ModelCase, args, work: Path) -> dict:
    paths = build_variants(case, work, args.calib_samples, args.steps, args.passes, case.qdq_calib_samples)
    if args.build_only:
        return {"files": {k: str(p) for k, p in paths.items()}}
    skipped = untimed_rows(paths)
    untimed_counts = {k: pass_counts(paths[k]) for k in skipped}
    paths = {k: p for k, p in paths.items() if k not in skipped}
    fp = case.build()
    backends = {k: open_ort(p, args.threads) for k, p in paths.items()}
    backends[NO_BINDING] = open_ort(paths["w8a8"], args.threads, io_binding=False)
    result: dict = {
        "params_m": parameter_count(fp) / 1e6,
        "bytes": {k: file_bytes(p) for k, p in paths.items()},
        "passes": {k: pass_counts(p) for k, p in paths.items() if pass_counts(p) is not None},
        "untimed_no_rewrite": skipped,
        "passes_untimed": untimed_counts,
        "qdq_calib_samples": min(case.qdq_calib_samples or args.calib_samples, args.calib_samples),
        "calls": {},
        "psnr_call_db": {},
        "psnr_sample_db": {},
        "psnr_samples": args.psnr_samples,
        "end_to_end": {},
    }
    for batch in args.batches:
        rounds = rounds_for(args, batch)
        timing, quality = call_rows(case, fp, backends, batch, rounds)
        result["calls"][batch], result["psnr_call_db"][batch] = timing, quality
        best = _best_ours(timing)
        e2e = ["ort-fp32", "w8a8"] + ([best] if best != "w8a8" else [])
        result["end_to_end"][batch] = loop_rows(case, fp, backends, paths, batch, args, e2e)
    result["psnr_sample_db"] = sample_psnr(case, fp, backends, paths, args.psnr_samples, args.steps)
    if args.profile:
        from bench.export_profile import op_times_ms

        batch = args.batches[0]
        f = feeds(case, batch)
        keep = [k for k in ("ort-fp32", "ort-qdq", "w8a8", _best_ours(result["calls"][batch])) if k in paths]
        runs = min(args.rounds, 5)
        result["profile_ms_per_op_type"] = {
            k: op_times_ms(paths[k], batch, args.threads, runs, feeds=f) for k in dict.fromkeys(keep)
        }
    return result


def rounds_for(args, batch: int) -> int:
    """`--rounds`, or `--batch-rounds BATCH=N` for that batch."""
    for item in args.batch_rounds:
        b, _, n = item.partition("=")
        if int(b) == batch:
            return int(n)
    return args.rounds


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=["unet-cifar10", "dit-b2"], choices=sorted(CASES))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--rounds", type=int, default=20, help="interleaved rounds per denoiser call row")
    ap.add_argument(
        "--batch-rounds", nargs="*", default=[], metavar="BATCH=N", help="other rounds at a batch size"
    )
    ap.add_argument("--e2e-rounds", type=int, default=3, help="interleaved rounds of the 20-step loops")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--calib-samples", type=int, default=4)
    ap.add_argument("--psnr-samples", type=int, default=4, help="DDIM samples for the paired sample PSNR")
    ap.add_argument("--passes", nargs="*", default=DEFAULT_PASSES, help="graph passes measured one by one")
    ap.add_argument("--work", default="/tmp/edgediff-speed")
    ap.add_argument(
        "--reference-batch", type=int, default=0, help="also time the 1.1M reference UNet at this batch"
    )
    ap.add_argument("--reference-work", default="/tmp/edgediff-bench", help="bench.export's bundle cache")
    ap.add_argument("--label", default="", help="a note stored with the results (e.g. 'loaded machine')")
    ap.add_argument("--profile", action="store_true", help="ORT profiler op-type totals at the first batch")
    ap.add_argument("--merge", action="store_true", help="keep other models' entries of an earlier run")
    ap.add_argument("--build-only", action="store_true", help="build (cache) the ONNX files only")
    ap.add_argument("--no-docs", action="store_true")
    ap.add_argument("--docs-only", action="store_true", help="rewrite the docs section from the JSON")
    ap.add_argument("--out", default="speed", help="results name under bench/results/")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("onnxscript", "onnx_ir", "onnxruntime", "torch"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    import onnxruntime

    if args.docs_only:
        saved = json.loads((report.RESULTS_DIR / f"{args.out}.json").read_text())
        write_docs(saved)
        plot(saved)
        return saved
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    result = {
        "host": host_info() | {"onnxruntime": onnxruntime.__version__},
        "label": args.label,
        "threads": args.threads,
        "rounds": args.rounds,
        "e2e_rounds": args.e2e_rounds,
        "steps": args.steps,
        "calib_samples": args.calib_samples,
        "passes": args.passes,
        "models": {},
    }
    previous = report.RESULTS_DIR / f"{args.out}.json"
    if args.merge and previous.is_file():
        earlier = json.loads(previous.read_text())
        result["models"] = earlier.get("models", {})  # each entry records its own run settings
        for m in result["models"].values():  # and the load of the run that measured it
            m.setdefault("load_average", earlier.get("load_average", {}))
    run = {k: result[k] for k in ("label", "threads", "rounds", "e2e_rounds", "steps", "calib_samples")}
    result["load_average"] = {"start": os.getloadavg()}
    for name in args.models:
        entry = bench_case(CASES[name], args, work)
        if args.build_only:
            log.info("%s: %s", name, entry["files"])
            continue
        load = {"start": result["load_average"]["start"], "end": os.getloadavg()}
        result["models"][name] = entry | {"run": run | host_info(), "load_average": load}
        log.info("wrote %s", write_json(args.out, result))
    if args.reference_batch:
        from bench._speed_reference import reference_files, reference_rows

        if args.build_only:
            log.info("reference: %s", reference_files(Path(args.reference_work), args.passes))
        else:
            rounds = rounds_for(args, args.reference_batch)
            entry = reference_rows(args, Path(args.reference_work), rounds, open_ort, interleaved, summarize)
            load = {"start": result["load_average"]["start"], "end": os.getloadavg()}
            result["models"]["reference"] = entry | {"run": run | host_info(), "load_average": load}
            log.info("wrote %s", write_json(args.out, result))
    result["load_average"]["end"] = os.getloadavg()
    if args.build_only:
        return result
    write_json(args.out, result)
    if not args.no_docs:
        write_docs(result)
        plot(result)
    return result


ROW_NOTES = {
    "torch-fp32": "PyTorch FP32 eager (diffusers)",
    "ort-fp32": "ONNX Runtime FP32 of our export",
    "fp32+all": "ORT FP32 after the same float passes",
    "ort-qdq": "ORT `quantize_static` (QDQ, per-channel s8 weights, u8 activations)",
    "w8a8": "ours, W8A8 (`ptq`, symmetric weights, `ort` placement)",
    "w4a8": "ours, W4A8",
    NO_BINDING: "the `w8a8` graph through `session.run` instead of the runtime's IO binding (preallocated "
    "outputs, inputs bound in place)",
}
# (speed-up of our best W8A8 row over ORT FP32 per call, over the PyTorch FP32 loop end to end)
TARGETS = {1: (2.5, 3.0), 8: (2.0, 2.0), 64: (1.7, None)}  # batch 64: the 1.1M reference
#: ONNX Runtime kernels that compute in integers (the rest of a quantized call is float work).
INTEGER_OPS = {
    "QLinearConv",
    "ConvInteger",
    "MatMulInteger",
    "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
    "QLinearMatMul",
    "QGemm",
}
# MatMulNBits holds int weights but multiplies in float (accuracy level 0): a float matrix product
FLOAT_MATRIX_OPS = {"Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul", "MatMulNBits"}


def _best_ours(calls: dict) -> str:
    ours = [k for k in calls if k == "w8a8" or k.startswith("w8a8+")]  # IO-bound rows only
    return min(ours, key=lambda k: calls[k]["min_ms"])


#: The configurations the targets are checked on, fixed in advance (the fastest of many noisy pass
#: rows would be biased upward): the W8A8 bundle as exported, after all passes, and with the
#: alternative activation quantizer of `dynamic-linears-sym` (its PSNR is in the same table).
TARGET_ROWS = ("w8a8", "w8a8+all", "w8a8+dynamic-linears-sym")


def target_rows(name: str, m: dict) -> list[list]:
    """Targets of the speed table: per call vs ORT FP32 and vs ORT quantize_static, end to end."""
    rows = []
    for batch, calls in m["calls"].items():
        want_call, want_e2e = TARGETS.get(int(batch), (None, None))
        psnr = m["psnr_call_db"][batch]
        for cfg in [c for c in TARGET_ROWS if c in calls]:
            speed = calls[cfg]["speedup_vs_ort-fp32"]
            if want_call is not None:
                rows.append(
                    [
                        name,
                        batch,
                        f"{cfg} >= {want_call}x ORT FP32",
                        f"{speed:.2f}x",
                        _yes(speed >= want_call),
                    ]
                )
            if "ort-qdq" in calls:
                ratio = calls["ort-qdq"]["min_ms"] / calls[cfg]["min_ms"]
                rows.append([name, batch, f"{cfg} as fast as ort-qdq", f"{ratio:.2f}x", _yes(ratio >= 1.0)])
                ours, theirs = psnr.get(cfg), psnr.get("ort-qdq")
                rows.append(
                    [
                        name,
                        batch,
                        f"{cfg} PSNR > ort-qdq PSNR",
                        f"{_db(ours)} vs {_db(theirs)} dB",
                        _yes((ours or 0) > (theirs or 0)),
                    ]
                )
        e2e = m.get("end_to_end", {}).get(batch, {})
        for cfg in [k for k in e2e if k == "w8a8" or k.startswith("w8a8+")]:
            if want_e2e is not None:
                got = e2e[cfg]["speedup_vs_torch"]
                rows.append(
                    [
                        name,
                        batch,
                        f"{cfg} loop >= {want_e2e}x PyTorch loop",
                        f"{got:.2f}x",
                        _yes(got >= want_e2e),
                    ]
                )
    return rows


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def write_docs(result: dict) -> None:
    parts = [
        "### Speed at real model sizes (`python -m bench.speed`)\n",
        "Random-weight models built from configs (bench/_speed_models.py); ONNX Runtime "
        f"{result['host']['onnxruntime']} CPU; threads fixed for PyTorch and ORT; every row runs once per "
        "round, rounds interleaved; min (and median) per row; ratios within the same run. PSNR: against "
        "PyTorch FP32 on the same inputs (one call, data range = the reference's peak-to-peak) and of the "
        "final samples of a DDIM run from the same noise (runtime sampler vs the diffusers loop, range 2; "
        "`psnr_samples` samples, one value per row for all batches).\n",
        "Rows: "
        + "; ".join(f"`{k}` {v}" for k, v in ROW_NOTES.items())
        + "; `w8a8+<pass>` our W8A8 after one graph pass of `edgediff_export.passes.fastpath`, `w8a8+all` "
        "after all but `dynamic-linears-sym` (an alternative to `dynamic-linears`; "
        "docs/export-passes.md section 6); the `passes` column lists the passes a row went "
        "through with the nodes each rewrote. A row whose passes rewrote nothing is its source graph "
        "again and is not timed (listed under each model).\n",
        "Machine load average (1, 5, 15 min) at the start and the end of the run that measured each "
        "model is given under its heading (other jobs shared the 2 cores). On a loaded machine the "
        "minimum is the least disturbed round, and the median shows the spread: rows whose minima "
        "differ by less than that spread are not told apart by the run. The profile table sums ONNX "
        "Runtime's own kernel times (no scheduling gaps), a steadier view of where the time goes.\n",
    ]
    targets = []
    for name, m in result["models"].items():
        run = m.get("run", {})
        parts.append(
            f"#### {name} ({m['params_m']:.1f}M params) -- {run.get('threads')} threads, "
            f"{run.get('rounds')} rounds per call, {run.get('e2e_rounds')} per loop, "
            f"{run.get('calib_samples')} calibration trajectories"
            + (f" ({m['qdq_calib_samples']} for `ort-qdq`)" if "qdq_calib_samples" in m else "")
            + f", {run.get('date')}"
            + (f", **{run['label']}**" if run.get("label") else "")
            + f"; load average {_load(m, 'start')} at the start, {_load(m, 'end')} at the end\n"
        )
        for batch, calls in m["calls"].items():
            rows = [
                [
                    row,
                    f"{c['min_ms']:.1f}",
                    f"{c['median_ms']:.1f}",
                    f"{c['speedup_vs_ort-fp32']:.2f}x",
                    f"{c['speedup_vs_torch']:.2f}x",
                    _db(m["psnr_call_db"][batch].get(row)),
                    _db(m.get("psnr_sample_db", {}).get(row)),
                    f"{m['bytes'][row] / 1e6:.1f}" if row in m["bytes"] else "-",
                    _passes(m.get("passes", {}).get(row)),
                ]
                for row, c in calls.items()
            ]
            header = ["row", "min ms", "median ms", "vs ORT FP32", "vs PyTorch", "PSNR call", "PSNR sample"]
            parts.append(f"Batch {batch}, one denoiser call:\n")
            parts.append(markdown_table([*header, "MB", "passes (rewrites)"], rows) + "\n")
            if m.get("untimed_no_rewrite"):
                parts.append(f"Not timed (no rewrite on this model): {', '.join(m['untimed_no_rewrite'])}.\n")
            e2e = m.get("end_to_end", {}).get(batch)
            if not e2e:
                continue
            rows = [[k, f"{v['min_ms'] / 1e3:.2f}", f"{v['speedup_vs_torch']:.2f}x"] for k, v in e2e.items()]
            parts.append(f"Batch {batch}, end to end ({run.get('steps')} DDIM steps):\n")
            parts.append(markdown_table(["loop", "min s", "vs PyTorch FP32 loop"], rows) + "\n")
        if m.get("profile_ms_per_op_type"):
            prof = m["profile_ms_per_op_type"]
            ops = sorted(
                {k for p in prof.values() for k in p}, key=lambda k: -max(p.get(k, 0) for p in prof.values())
            )
            rows = [[op, *[f"{p.get(op, 0):.1f}" for p in prof.values()]] for op in ops[:14]]
            rows.append(["**all kernels**", *[f"{sum(p.values()):.1f}" for p in prof.values()]])
            parts.append(f"ONNX Runtime profile, ms per op type, batch {next(iter(m['calls']))}:\n")
            parts.append(markdown_table(["op type", *prof], rows) + "\n")
            parts.append("Where the time goes (share of all kernel time):\n")
            parts.append(
                markdown_table(
                    ["row", "integer kernels", "float Conv/MatMul/Gemm/MatMulNBits", "other float ops"],
                    [[k, *_shares(p)] for k, p in prof.items()],
                )
                + "\n"
            )
        targets += target_rows(name, m)
    if targets:
        parts.append("Targets:\n")
        parts.append(markdown_table(["model", "batch", "target", "measured", "met"], targets) + "\n")
    update_results_section("speed", "\n".join(parts))


def _load(result: dict, when: str) -> str:
    value = result.get("load_average", {}).get(when)
    return "-" if value is None else " / ".join(f"{v:.2f}" for v in value)


def _passes(counts: dict | None) -> str:
    return "-" if not counts else ", ".join(f"{k} ({v})" for k, v in counts.items())


def _shares(prof: dict[str, float]) -> list[str]:
    """Integer kernels, float matrix products, everything else: percent of the profiled kernel time."""
    total = sum(prof.values()) or 1.0
    integer = sum(v for k, v in prof.items() if k in INTEGER_OPS)
    matrix = sum(v for k, v in prof.items() if k in FLOAT_MATRIX_OPS)
    return [f"{100 * x / total:.0f} %" for x in (integer, matrix, total - integer - matrix)]


def _db(v: float | None) -> str:
    if v is None:
        return "-"
    return "inf" if v == float("inf") else f"{v:.1f}"


def plot(result: dict) -> None:
    """Bar chart of speed-up vs ORT FP32 per row (needs matplotlib; skipped with a log line otherwise)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed: no plot written")
        return
    panels = [(n, b, c) for n, m in result["models"].items() for b, c in m["calls"].items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.5), squeeze=False)
    for ax, (name, batch, calls) in zip(axes[0], panels):
        ax.bar(list(calls), [c["speedup_vs_ort-fp32"] for c in calls.values()])
        ax.set_title(f"{name}, batch {batch}")
        ax.set_ylabel("speed-up vs ORT FP32 (min)")
        ax.tick_params(axis="x", rotation=60)
    fig.tight_layout()
    out = Path(__file__).resolve().parents[1] / "docs" / "speed.png"
    fig.savefig(out, dpi=100)


if __name__ == "__main__":
    main()
