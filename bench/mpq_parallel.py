"""Run `bench.mpq` rows as parallel processes and merge them into one result file.

Each (bits, row) runs in its own `python -m bench.mpq` process writing its own part file (no
two processes share a JSON), with `--threads` torch threads; the parts are merged into `--out`
(rows of the same protocol and device only) and the docs section of `--out` is written.
`--deadline` stops the pieces still running after that many seconds and merges the finished
ones (for a leased GPU with a hard time limit); the stopped ones are listed under `failed`.
Meant for a GPU (`--device cuda`: the reference model is tiny, so many processes share one
GPU) or a many-core CPU.

Usage: `python -m bench.mpq_parallel --device cuda --samples 2000 --bits W2A4
--out bench/results/mpq_h100_2000.json [--jobs 9] [--threads 2] [--rows ...]`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.mpq import ROWS, add_protocol_args, check_same_protocol, section_for, write_docs, write_figure


def row_command(bits: str, row: str, part: Path, args: argparse.Namespace) -> list[str]:
    """The `bench.mpq` command line of one (bits, row) piece."""
    return [
        sys.executable,
        "-m",
        "bench.mpq",
        "--bits",
        bits,
        "--rows",
        row,
        "--samples",
        str(args.samples),
        "--steps",
        str(args.steps),
        "--seeds",
        *map(str, args.seeds),
        "--updates",
        str(args.updates),
        "--batch",
        str(args.batch),
        "--device",
        args.device,
        "--train-seed",
        str(args.train_seed),
        "--out",
        str(part),
        "--no-docs",
    ]


def merge_parts(parts: list[dict]) -> dict:
    """One result from part results of the same protocol and device (raises ValueError otherwise)."""
    if not parts:
        raise ValueError("no part finished; nothing to merge")
    check_same_protocol(parts, "parts")
    if len({p.get("train_seed", 0) for p in parts}) > 1:
        raise ValueError("parts differ in train_seed; merge one training seed per file")
    first = parts[0]
    rows = {(r["bits"], r["row"]): r for p in parts for r in p["rows"]}
    rank = {name: i for i, name in enumerate(ROWS)}
    order = list(dict.fromkeys(b for p in parts for b in p.get("bits_order", [])))
    merged = {k: v for k, v in first.items() if k != "rows"}
    merged["bits_order"] = order
    merged["rows"] = sorted(
        rows.values(), key=lambda r: (order.index(r["bits"]) if r["bits"] in order else -1, rank[r["row"]])
    )
    return merged


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_protocol_args(ap, samples=2000)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes at a time")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument(
        "--out", required=True, help="merged result file (a new one: parts are not merged into old rows)"
    )
    ap.add_argument("--no-docs", action="store_true")
    ap.add_argument(
        "--deadline", type=float, default=None, help="seconds: then stop unfinished pieces and merge the rest"
    )
    args = ap.parse_args()
    if args.jobs < 1 or args.threads < 1:
        raise SystemExit("--jobs and --threads must be >= 1")
    out = Path(args.out)
    pieces = [("FP32", "fp")] if "fp" in args.rows else []
    pieces += [(b, r) for b in args.bits for r in args.rows if r != "fp"]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    with tempfile.TemporaryDirectory(prefix="mpq_parts_") as tmp:
        todo = list(pieces)
        running: dict[subprocess.Popen, tuple[str, str, Path, float]] = {}
        finished: list[Path] = []
        failed: list[str] = []
        start = time.perf_counter()
        while todo or running:
            if args.deadline is not None and time.perf_counter() - start > args.deadline:
                for proc, (bits, row, _, _) in running.items():
                    proc.kill()
                    proc.wait()
                    failed.append(f"{bits} {row} (stopped at the deadline)")
                failed += [f"{b} {r} (not started before the deadline)" for b, r in todo]
                print(
                    f"deadline {args.deadline:.0f} s: stopped {len(running)}, skipped {len(todo)}", flush=True
                )
                break
            while todo and len(running) < args.jobs:
                bits, row = todo.pop(0)
                part = Path(tmp) / f"{bits}_{row}.json"
                log = open(Path(tmp) / f"{bits}_{row}.log", "w")  # noqa: SIM115 (closed with the process)
                proc = subprocess.Popen(
                    row_command(bits if row != "fp" else args.bits[0], row, part, args),
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
                running[proc] = (bits, row, part, time.perf_counter())
                log.close()
            time.sleep(0.5)
            for proc in [p for p in running if p.poll() is not None]:
                bits, row, part, t0 = running.pop(proc)
                took = time.perf_counter() - t0
                if proc.returncode == 0 and part.is_file():
                    finished.append(part)
                    print(f"done {bits} {row} in {took:.0f} s", flush=True)
                else:
                    failed.append(f"{bits} {row}")
                    tail = (Path(tmp) / f"{bits}_{row}.log").read_text()[-3000:]
                    print(f"FAILED {bits} {row} (exit {proc.returncode}):\n{tail}", flush=True)
        try:
            merged = merge_parts([json.loads(p.read_text()) for p in finished])
        except ValueError as exc:
            raise SystemExit(
                f"nothing written to {out}: {exc} (failed: {', '.join(failed) or 'none'})"
            ) from None
    if failed:
        merged["failed"] = failed
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".tmp")
    tmp_out.write_text(json.dumps(merged, indent=2) + "\n")
    tmp_out.replace(out)
    print(f"wrote {out} ({len(merged['rows'])} rows, {len(failed)} failed)")
    if not args.no_docs:
        section = section_for(out)
        for bits in merged["bits_order"]:
            write_figure(merged, bits, section)
        write_docs(merged, section)
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
