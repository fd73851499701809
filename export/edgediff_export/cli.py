"""The `edgediff` console script: the full toolchain (train + export + device profiles).

It lives in the export package because only `edgediff_export` may import every stage
(docs/design.md section 1); the train stage registers its own commands via `add_train_commands`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from edgediff import __version__
from edgediff.cli import add_train_commands, human_size, positive_int
from edgediff.errors import EdgediffError
from edgediff_runtime.cli_errors import OneLineParser, parse_or_exit_code, run_guarded
from edgediff_runtime.errors import RuntimeStageError


def _cmd_devices_list(args: argparse.Namespace) -> int:
    from edgediff_runtime.devices import list_profiles, load_profile

    for name in list_profiles():
        profile = load_profile(name)
        print(f"{name:24s} {profile.description}")
    return 0


def _cmd_devices_show(args: argparse.Namespace) -> int:
    import json

    from edgediff_runtime.devices import load_profile

    print(json.dumps(load_profile(args.name).to_dict(), indent=2))
    return 0


def _cmd_export_onnx(args: argparse.Namespace) -> int:
    from edgediff.utils.atomic import check_writable

    if args.model != "reference" and not Path(args.model).exists():
        raise EdgediffError(f"model folder not found: {args.model}")
    check_writable(Path(args.out))
    from edgediff_export.bundle import ExportOptions, export_bundle

    opts = ExportOptions(
        placement=args.placement,
        device=args.device,
        steps=args.steps,
        opset=args.opset,
        residual=args.residual,
        golden_samples=args.golden_samples,
        seed=args.seed,
        allow_fp=args.fp,
        dtype=args.dtype,
        guidance_scale=args.guidance,
        cond_tokens=args.cond_tokens,
        frames=args.frames,
        null_embedding=args.null_embedding,
    )
    from edgediff_export.pipeline import export_pipeline_bundle, pipeline_parts_of

    parts = pipeline_parts_of(args.model)
    if args.layout == "optimum":
        if parts is None:
            raise EdgediffError("--layout optimum needs a text-to-image pipeline folder (or a quantized one)")
        from edgediff_export.pipeline import export_optimum_folder

        out = export_optimum_folder(args.model, parts, Path(args.out), opts)
        print(f"wrote {out} ({human_size(out)}): Optimum ONNX Runtime diffusion layout")
        print(f"next: optimum.onnxruntime.ORTStableDiffusionPipeline.from_pretrained('{out}')")
        return 0
    if parts is not None:  # a text-to-image pipeline (or a quantized folder of one): the whole bundle
        out = export_pipeline_bundle(args.model, parts, Path(args.out), opts)
        print(
            f"wrote bundle {out} ({human_size(out)}): tokenizer, text_encoder.onnx, model.onnx (denoiser), "
            "vae_decoder.onnx, scheduler, manifest.json, golden references"
        )
        print(f'next: edgediff-run parity {out}  |  edgediff-run sample {out} --prompt "..." --out image.png')
        return 0
    out = export_bundle(args.model, Path(args.out), opts)
    print(f"wrote bundle {out} ({human_size(out)}): model.onnx, manifest.json, golden references")
    print(f"next: edgediff-run parity {out}  |  edgediff-run sample {out} --out grid.png")
    return 0


def _cmd_export_customize(args: argparse.Namespace) -> int:
    from edgediff.utils.atomic import check_writable

    model = str(args.model)
    if not model.startswith("reference") and not Path(model).exists():
        raise EdgediffError(f"model folder not found: {model}")
    check_writable(Path(args.out))
    from edgediff_export.customize import CustomizeExportOptions, export_customize

    opts = CustomizeExportOptions(
        steps=args.steps,
        sagi_steps=args.sagi_steps,
        salq_steps=args.salq_steps,
        guidance=args.guidance,
        invert_refine=args.invert_refine,
        seed=args.seed,
        device=args.device,
        opset=args.opset,
        cond_tokens=args.cond_tokens,
        null_embedding=args.null_embedding,
    )
    out = export_customize(model, Path(args.out), opts)
    from edgediff_runtime.bundle import read_manifest

    report = read_manifest(out).parity.report or {}
    l2 = report.get("level2", {})
    psnr = l2.get("latent_psnr_min")
    print(
        f"wrote customization bundle {out} ({human_size(out)}): model.onnx (controlled UNet, standard ops), "
        "customize.json, golden case"
    )
    print(
        f"ONNX Runtime vs PyTorch MCA-Ctrl on the golden case: worst latent max abs "
        f"{l2.get('latent_max_abs', float('nan')):.3g}, worst latent PSNR "
        f"{'inf' if psnr is None else f'{psnr:.1f}'} dB"
    )
    print(f"next: edgediff-run parity {out}  |  edgediff-run customize {out} --subject S.png ...")
    return 0


def _cmd_export_lint(args: argparse.Namespace) -> int:
    import onnx

    from edgediff_export.errors import ExportError
    from edgediff_export.passes.lint import format_grouped, format_violations, lint
    from edgediff_runtime.devices import load_profile

    path = Path(args.model)
    if not path.is_file():
        raise ExportError(f"ONNX file not found: {path}")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError and others for corrupt files
        raise ExportError(f"cannot read {path} as ONNX: {exc}") from exc
    violations = lint(model, load_profile(args.device).to_dict())
    if violations:
        print(format_violations(violations) if args.all else format_grouped(violations))
        rules = len({v.rule for v in violations})
        print(f"FAIL: {len(violations)} violation(s) of {rules} {args.device} rule(s) in {path}")
        return 1
    print(f"OK: {path} meets the rules of {args.device}")
    return 0


#: Default verdict threshold of `edgediff export validate`: every quantized layer's worst-step SQNR
#: (ONNX Runtime vs the same lowering in PyTorch) must reach it. 30 dB is an error of about 3 % of
#: the signal's RMS: flipped rounding ties stay far above it (the `ort` output Q/DQ alone is about
#: 48 dB), a wrong lowering (scale, zero point, step index) falls far below it.
MIN_SQNR_DB = 30.0


def _cmd_export_validate(args: argparse.Namespace) -> int:
    if args.json:
        from edgediff.utils.atomic import check_writable

        check_writable(Path(args.json), "--json")
    from edgediff_export.validate import validate_layers

    rows = validate_layers(args.model, args.bundle, max_steps=args.max_steps, ort_optimize=not args.no_fusion)
    print(f"{'layer (worst first)':56s} {'SQNR dB':>8s} {'min dB':>8s} {'vs fake-quant dB':>17s}")
    for row in rows[: args.worst]:
        name, vs_fq = row["layer"], row["vs_fake_quant_db"]
        print(f"{name:56s} {row['sqnr_db']:8.1f} {row['min_sqnr_db']:8.1f} {vs_fq:17.1f}")
    print(
        "SQNR: ONNX Runtime vs the same lowering in PyTorch; vs fake-quant: also what the placement changes"
    )
    if args.json:
        import json

        from edgediff.utils.atomic import atomic_file

        with atomic_file(Path(args.json)) as tmp:
            tmp.write_text(json.dumps(rows, indent=2) + "\n")
        print(f"wrote {args.json} ({len(rows)} layers)")
    worst = min((r["min_sqnr_db"] for r in rows), default=float("inf"))
    passed = worst >= args.min_sqnr
    below = sum(r["min_sqnr_db"] < args.min_sqnr for r in rows)
    print(
        f"{'PASS' if passed else 'FAIL'}: worst layer {worst:.1f} dB "
        f"{'>=' if passed else '<'} {args.min_sqnr:g} dB ({below} of {len(rows)} layers below)"
    )
    return 0 if passed else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from edgediff.utils.atomic import check_writable

    out = Path(args.out)
    check_writable(out / "report.json")
    from edgediff_export.demo import run_demo

    report = run_demo(out, samples=args.samples, steps=args.steps)
    s = report["summary"]
    print(
        f"FD ({s['samples']} samples, {s['steps']} steps, lower is better): FP {s['fp_fd']}, "
        f"quantized {s['quantized_fd']}, on the runtime {s['runtime_fd']}"
    )
    print(
        f"quantized vs FP (same noise): PSNR {s['quantized_paired_psnr_db']} dB, "
        f"class agreement {s['quantized_label_agree']}"
    )
    print(f"parity: {s['parity']}; total {s['seconds']:.0f} s")
    for name in ("report.json", "samples.png", "quantized_samples.png", "runtime_samples.png", "parity.png"):
        if (out / name).exists():
            print(f"wrote {out / name} ({human_size(out / name)})")
    return 0 if s["parity"] == "PASS" else 1


def _add_export_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="end to end on the bundled model: quantize, export, run, check parity")
    p.add_argument("--out", default="demo-out", help="output folder (default demo-out)")
    p.add_argument("--samples", type=positive_int("--samples"), default=500, help="samples per evaluation")
    p.add_argument("--steps", type=positive_int("--steps"), default=20, help="DDIM steps")
    p.set_defaults(func=_cmd_demo)

    exp = sub.add_parser("export", help="export to ONNX bundles, lint for TensorRT, validate layer parity")
    exp_sub = exp.add_subparsers(dest="export_cmd", required=True)
    p = exp_sub.add_parser("onnx", help="write an artifact bundle NAME.edgediff (atomically)")
    p.add_argument("model", help="a folder written by 'edgediff quantize' (or an FP folder with --fp)")
    p.add_argument("--out", required=True, help="bundle folder, e.g. w8a8.edgediff")
    p.add_argument(
        "--placement",
        choices=["ort", "trt"],
        default="ort",
        help="ort: Q/DQ on inputs and outputs (ONNX Runtime fuses); trt: inputs only, symmetric int8",
    )
    p.add_argument("--device", default="x86-cpu", help="device profile (see 'edgediff devices list')")
    p.add_argument(
        "--steps",
        type=positive_int("--steps"),
        default=None,
        help="sampler steps of the bundle (default: the quantized folder's per-step table size; "
        "20 when its activation scales are static)",
    )
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: min(21, device max))")
    p.add_argument(
        "--residual",
        choices=["custom", "standard"],
        default="custom",
        help="binary residuals as one edgediff node (with a function body) or as plain ops",
    )
    p.add_argument(
        "--golden-samples",
        type=positive_int("--golden-samples"),
        default=8,
        help="samples in the golden references",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fp", action="store_true", help="allow exporting a non-quantized (FP) model")
    p.add_argument(
        "--dtype",
        choices=["fp32", "fp16"],
        default="fp32",
        help="float type of an FP export (fp16: for GPU/Jetson profiles)",
    )
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="default classifier-free guidance scale of the bundle (also used for the golden references)",
    )
    p.add_argument("--cond-tokens", type=int, default=None, help="tokens of a raw-embedding condition (77)")
    p.add_argument(
        "--layout",
        choices=["bundle", "optimum"],
        default="bundle",
        help="bundle: an edgediff bundle; optimum (pipeline folders): the bundle's ONNX components laid "
        "out for Optimum's ORTStableDiffusionPipeline (docs/pipelines.md)",
    )
    p.add_argument("--frames", type=int, default=None, help="frames of a video model (default: its config)")
    p.add_argument(
        "--null-embedding",
        default=None,
        metavar="FILE.npy",
        help="null condition [tokens, dim] of a raw-embedding model, for classifier-free guidance",
    )
    p.set_defaults(func=_cmd_export_onnx)
    p = exp_sub.add_parser(
        "customize", help="a bundle for MCA-Ctrl subject editing on the device (edgediff-run customize)"
    )
    p.add_argument("--model", required=True, help="'reference:canvas32' or a UNet2DConditionModel folder")
    p.add_argument("--out", required=True, help="bundle folder, e.g. canvas32-customize.edgediff")
    p.add_argument("--steps", type=positive_int("--steps"), default=20, help="DDIM steps of the bundle (20)")
    p.add_argument("--sagi-steps", type=int, default=None, help="SAGI steps from the start (default: 40%%)")
    p.add_argument("--salq-steps", type=int, default=None, help="SALQ steps after SAGI (default: to 96%%)")
    p.add_argument("--guidance", type=float, default=None, help="guidance (golden case; runtime default)")
    p.add_argument("--invert-refine", type=int, default=0, help="refinements per inversion step (0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the golden case's images")
    p.add_argument("--device", default="x86-cpu", help="device profile (see 'edgediff devices list')")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: min(21, device max))")
    p.add_argument("--cond-tokens", type=int, default=None, help="tokens of a raw-embedding condition (77)")
    p.add_argument("--null-embedding", default=None, metavar="FILE.npy", help="null condition [tokens, dim]")
    p.set_defaults(func=_cmd_export_customize)
    p = exp_sub.add_parser("lint", help="check an ONNX file against TensorRT and device-profile rules")
    p.add_argument("model", help="an .onnx file")
    p.add_argument("--device", required=True, help="device profile")
    p.add_argument("--all", action="store_true", help="one line per finding instead of grouped by rule")
    p.set_defaults(func=_cmd_export_lint)
    p = exp_sub.add_parser("validate", help="parity level 1: SQNR of every quantized layer, PyTorch vs ONNX")
    p.add_argument("model", help="the quantized folder the bundle was exported from")
    p.add_argument("bundle", help="the bundle folder")
    p.add_argument("--worst", type=positive_int("--worst"), default=10, help="print the worst N layers (10)")
    p.add_argument(
        "--max-steps", type=positive_int("--max-steps"), default=4, help="golden steps to compare (default 4)"
    )
    p.add_argument("--json", help="write all layers' SQNR here")
    p.add_argument(
        "--min-sqnr",
        type=float,
        default=MIN_SQNR_DB,
        help=f"PASS when every layer's worst-step SQNR reaches this (dB, default {MIN_SQNR_DB:g}); "
        "exit 1 on FAIL",
    )
    p.add_argument(
        "--no-fusion",
        action="store_true",
        help="run ONNX Runtime without graph optimisations (Q/DQ emulated, no fused integer kernels)",
    )
    p.set_defaults(func=_cmd_export_validate)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="edgediff",
        description="Quantize, distill and export diffusion models for edge devices.",
    )
    parser.add_argument("--version", action="version", version=f"edgediff {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="cmd", required=True)
    add_train_commands(sub)
    _add_export_commands(sub)

    dev = sub.add_parser("devices", help="device profiles (packaged with edgediff-runtime)")
    dev_sub = dev.add_subparsers(dest="dev_cmd", required=True)
    p = dev_sub.add_parser("list", help="list the known device profiles")
    p.set_defaults(func=_cmd_devices_list)
    p = dev_sub.add_parser("show", help="print one profile as JSON")
    p.add_argument("name", help="profile name (see 'edgediff devices list') or a path to a .toml file")
    p.set_defaults(func=_cmd_devices_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_or_exit_code(build_parser(), argv)
    except EdgediffError as exc:  # a value error raised while the parser is built or run, one line
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    if isinstance(args, int):  # --help/--version (0) or a usage error (2, printed as one line)
        return args
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    return run_guarded(args.func, args, handled=(EdgediffError, RuntimeStageError))


if __name__ == "__main__":
    sys.exit(main())
