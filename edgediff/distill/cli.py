"""`edgediff distill`: staged step distillation (progressive distillation, RDD) from the CLI."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgediff.errors import EdgediffError


def _power_of_two(kind: str):
    """argparse type: a power of two >= 1, with a one-line error naming the option."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{kind} must be an integer, got {text!r}") from exc
        if value < 1 or value & (value - 1):
            raise argparse.ArgumentTypeError(f"{kind} must be a power of two (1, 2, 4, 8, ...), got {value}")
        return value

    return parse


def _positive_float(kind: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{kind} must be a number, got {text!r}") from exc
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{kind} must be positive, got {value}")
        return value

    return parse


def _weight(kind: str):
    """argparse type: a loss weight >= 0."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{kind} must be a number, got {text!r}") from exc
        if not value >= 0:
            raise argparse.ArgumentTypeError(f"{kind} must be >= 0, got {value}")
        return value

    return parse


def budgets_from_args(args: argparse.Namespace) -> dict:
    """One `StageBudget` per student step count: `--iterations` is one value or one per stage."""
    from edgediff.distill.run import StageBudget

    n_stages = (args.from_steps // args.to_steps).bit_length() - 1
    its = list(args.iterations)
    if len(its) == 1:
        its = its * n_stages
    if len(its) != n_stages:
        raise EdgediffError(
            f"--iterations takes one value or one per stage ({n_stages} stages from {args.from_steps} "
            f"to {args.to_steps} steps), got {len(its)}"
        )
    students = [args.from_steps // 2 ** (i + 1) for i in range(n_stages)]
    return {n: StageBudget(iterations=it, batch_size=args.batch, lr=args.lr) for n, it in zip(students, its)}


def _cmd_distill(args: argparse.Namespace) -> int:
    from edgediff.distill.config import RDDConfig
    from edgediff.distill.run import distill

    if args.to_steps >= args.from_steps:
        raise EdgediffError(
            f"--to-steps ({args.to_steps}) must be smaller than --from-steps ({args.from_steps})"
        )
    rdd = RDDConfig(
        weight_cfd=args.cfd_weight,
        weight_is=args.is_weight,
        weight_queue=args.queue_weight,
        weight_pd=args.pd_weight,
        released_enqueue_reshape=args.released_enqueue_reshape,
    )
    records = distill(
        args.model,
        args.method,
        args.from_steps,
        args.to_steps,
        Path(args.out),
        budgets_from_args(args),
        seed=args.seed,
        rdd_from=args.rdd_from,
        rdd=rdd,
    )
    for r in records:
        state = "reused" if r.get("skipped") else f"{r['wall_seconds']} s"
        print(f"{r['stage']}: {r['num_steps']} steps, final loss {r['final_loss']:.4g} ({state})")
    last = records[-1]
    print(f"saved {Path(args.out) / last['stage']} (sample it with {last['num_steps']} DDIM steps)")
    return 0


def add_distill_command(sub: argparse._SubParsersAction) -> None:
    """Register `edgediff distill` on the top-level parser."""
    from edgediff.cli import positive_int
    from edgediff.distill.config import RDDConfig

    p = sub.add_parser(
        "distill",
        help="step distillation (pd | rdd): halve the DDIM step count per stage",
        description="Progressive distillation or RDD, one halving per stage; each stage is saved as a "
        "diffusers folder OUT/<method>-<2N>to<N>/ with distill.json; reruns skip finished stages.",
    )
    p.add_argument("--model", required=True, help="'reference' or a local diffusers folder (v_prediction)")
    p.add_argument("--method", required=True, choices=["pd", "rdd"])
    p.add_argument("--from-steps", type=_power_of_two("--from-steps"), default=32, help="teacher steps (32)")
    p.add_argument("--to-steps", type=_power_of_two("--to-steps"), default=1, help="final student steps (1)")
    p.add_argument("--out", required=True, help="output folder (one sub-folder per stage)")
    p.add_argument(
        "--iterations",
        type=positive_int("--iterations"),
        nargs="+",
        default=[500],
        help="iterations per stage: one value for all stages or one per stage, first stage first",
    )
    p.add_argument("--batch", type=positive_int("--batch"), default=64)
    p.add_argument("--lr", type=_positive_float("--lr"), default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--rdd-from",
        type=_power_of_two("--rdd-from"),
        default=8,
        help="rdd: PD stages down to this many steps, RDD below (8, as the paper)",
    )
    weights = RDDConfig()
    for flag, default, what in (
        ("--cfd-weight", weights.weight_cfd, "classifier-feature term CFD"),
        ("--is-weight", weights.weight_is, "in-batch pixel relation term IS_P2P (0: off)"),
        ("--queue-weight", weights.weight_queue, "memory-queue relation term M_P2P (0: off)"),
        ("--pd-weight", weights.weight_pd, "PD pixel term (0: off)"),
    ):
        help_text = f"rdd: weight of the {what} ({default:g})"
        p.add_argument(flag, type=_weight(flag), default=default, help=help_text)
    p.add_argument(
        "--released-enqueue-reshape",
        action="store_true",
        help="rdd: enqueue with the released code's reshape (mixes channels and positions)",
    )
    p.set_defaults(func=_cmd_distill)
