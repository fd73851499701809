"""Training-seed replicates of `bench.mpq` rows: how much the FD moves when only the seed of
calibration, search and fine-tuning changes (the sampling seeds stay the same).

Reads result files of one protocol that differ only in `--train-seed` (default: `mpq.json`,
seed 0, and `mpq_train_seed<N>.json` written by `python -m bench.mpq --train-seed N --out ...`),
and for every (bits, row) present in more than one of them reports the FD per training seed
(mean over the sampling seeds) and the mean ± sd over training seeds. Writes
`bench/results/mpq_replicates.json` and the `mpq-replicates` section of docs/RESULTS.md.

Usage: `python -m bench.mpq_replicates [FILES ...]`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bench._report import RESULTS_DIR, markdown_table, update_results_section, write_json
from bench.mpq import LABELS, PROTOCOL_KEYS, ROWS, check_same_protocol


def default_files() -> list[Path]:
    return [RESULTS_DIR / "mpq.json", *sorted(RESULTS_DIR.glob("mpq_train_seed*.json"))]


def collect(results: list[dict]) -> dict:
    """{"protocol", "rows": [{bits, row, fd_by_train_seed, mean, sd}]} for rows in >= 2 results."""
    if len(results) < 2:
        raise ValueError("need at least two result files (train seed 0 and a replicate)")
    check_same_protocol(results, "result files")
    first = results[0]
    seeds = [r.get("train_seed", 0) for r in results]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"two result files share a train seed: {seeds}")
    fds: dict[tuple[str, str], dict[int, float]] = {}
    for seed, result in zip(seeds, results):
        for row in result["rows"]:
            fd = float(np.mean([s["fd"] for s in row["per_seed"]]))
            fds.setdefault((row["bits"], row["row"]), {})[seed] = fd
    rank = {name: i for i, name in enumerate(ROWS)}
    rows = []
    for (bits, name), by_seed in sorted(fds.items(), key=lambda kv: (kv[0][0], rank[kv[0][1]])):
        if len(by_seed) < 2:
            continue
        values = list(by_seed.values())
        rows.append(
            {
                "bits": bits,
                "row": name,
                "fd_by_train_seed": {str(k): v for k, v in sorted(by_seed.items())},
                "mean": float(np.mean(values)),
                "sd": float(np.std(values, ddof=1)),
            }
        )
    if not rows:
        raise ValueError("no (bits, row) was measured under two train seeds")
    return {"protocol": {k: first[k] for k in PROTOCOL_KEYS}, "train_seeds": sorted(seeds), "rows": rows}


def write_docs(summary: dict) -> None:
    seeds = summary["train_seeds"]
    table = [
        [
            r["bits"],
            LABELS[r["row"]],
            *[
                f"{r['fd_by_train_seed'][str(s)]:.1f}" if str(s) in r["fd_by_train_seed"] else "not run"
                for s in seeds
            ],
            f"{r['mean']:.1f} ± {r['sd']:.1f}",
        ]
        for r in summary["rows"]
    ]
    p = summary["protocol"]
    update_results_section(
        "mpq-replicates",
        "\n".join(
            [
                "### MPQ training-seed replicates (`python -m bench.mpq_replicates`; "
                f"{p['samples']} samples, sampling seeds {p['seeds']}, "
                "each cell the FD mean over those seeds)\n",
                markdown_table(
                    ["bits", "method", *[f"train seed {s}" for s in seeds], "mean ± sd over train seeds"],
                    table,
                ),
                "",
                "Only the seed of calibration, split search and fine-tuning changes between columns.",
            ]
        ),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args()
    files = args.files or default_files()
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise SystemExit(f"result file not found: {missing[0]}; run bench.mpq with --train-seed first")
    try:
        summary = collect([json.loads(f.read_text()) for f in files])
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    summary["files"] = [str(f) for f in files]
    write_json("mpq_replicates", summary)
    for r in summary["rows"]:
        print(r["bits"], r["row"], r["fd_by_train_seed"], f"{r['mean']:.2f} ± {r['sd']:.2f}")
    if not args.no_docs:
        write_docs(summary)


if __name__ == "__main__":
    main()
