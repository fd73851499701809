"""``edgediff-run``: inspect, sample, check parity and benchmark a bundle on the device, without torch.

Subcommands (docs/design.md sections 3-5): ``info``, ``sample``, ``parity``, ``bench``, ``customize``
(MCA-Ctrl subject editing with a customization bundle, docs/customize.md). A user error prints
``error: <one line>`` to stderr and exits 2; ``parity`` exits 1 on FAIL. Outputs are written
atomically, so a failed run leaves no partial file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from edgediff_runtime._atomic import probe_dir, write_json
from edgediff_runtime.backends import BACKENDS, Backend, open_backend, threads_for
from edgediff_runtime.bundle import Bundle, load_bundle, read_manifest
from edgediff_runtime.cli_errors import OneLineParser, parse_or_exit_code, run_guarded
from edgediff_runtime.customize_spec import is_customize_bundle
from edgediff_runtime.devices import check_host
from edgediff_runtime.errors import RuntimeStageError
from edgediff_runtime.manifest import GOLDEN_PATH


def _check_out(path: Path | None, suffix: str, flag: str) -> None:
    """Refuse a bad output path before any work is done (the write itself is atomic)."""
    if path is None:
        return
    if path.suffix.lower() != suffix:
        raise RuntimeStageError(f"{flag} must end in {suffix}, got {path.name}")
    parent = path.resolve().parent
    if not parent.is_dir():
        raise RuntimeStageError(f"{flag}: folder {parent} does not exist; create it first")
    if path.is_dir():
        raise RuntimeStageError(f"{flag} {path} is a folder; name a {suffix} file")
    probe_dir(parent, f"{flag}: folder")


def _add_backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=BACKENDS, default="ort", help="execution backend (default: ort)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="ONNX Runtime intra-op threads (default: the device profile's cpu_threads)",
    )
    p.add_argument(
        "--provider",
        action="append",
        default=None,
        metavar="EP",
        help="ONNX Runtime provider (cpu, cuda, tensorrt or a full name); repeat for fallbacks. "
        "Default: the device profile's providers that are available, else CPU",
    )
    p.add_argument(
        "--engine", type=Path, default=None, help="TensorRT engine (default: engines/<device>.engine)"
    )
    p.add_argument(
        "--plugin",
        type=Path,
        action="append",
        default=None,
        metavar="LIB",
        help="TensorRT plugin library to load first (default: trt/lib/*.so in the bundle)",
    )
    p.add_argument(
        "--ignore-device", action="store_true", help="run even if the bundle targets another device profile"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of ``edgediff-run``."""
    parser = OneLineParser(
        prog="edgediff-run",
        description="Run edgediff bundles on a device (ONNX Runtime or TensorRT), no PyTorch needed.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("info", help="show what a bundle contains", description="Show a bundle's manifest.")
    p.add_argument("bundle", type=Path, help="NAME.edgediff folder")
    p.add_argument("--json", action="store_true", help="print the whole manifest as JSON")

    p = sub.add_parser(
        "sample",
        help="generate images into a PNG grid (videos: a GIF per sample)",
        description="Sample with the bundle's sampler; write a PNG grid (video bundles: "
        "one animated GIF per sample).",
    )
    p.add_argument("bundle", type=Path, help="NAME.edgediff folder")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="sampler steps (default: the manifest's; per-step scales allow only that)",
    )
    p.add_argument("--num", type=int, default=None, help="number of images (default 4; 1 with --prompt)")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output PNG grid (video bundles: OUT.gif, or OUT_<i>.gif for several samples)",
    )
    p.add_argument(
        "--labels",
        default=None,
        metavar="L1,L2",
        help="labels, one per slot, '-' for an empty slot (e.g. 7 or 7,2 or 7,-)",
    )
    p.add_argument(
        "--cond",
        type=Path,
        default=None,
        metavar="FILE",
        help="raw embeddings (.npy or .safetensors), [tokens, dim] or [N, tokens, dim]",
    )
    p.add_argument(
        "--prompt",
        default=None,
        metavar="TEXT",
        help="text prompt of a pipeline bundle (tokenizer + text encoder + denoiser + VAE decoder)",
    )
    p.add_argument(
        "--negative-prompt",
        default="",
        metavar="TEXT",
        help="null condition of classifier-free guidance with --prompt (default: the empty prompt)",
    )
    p.add_argument(
        "--load",
        choices=("auto", "sequential", "together"),
        default="auto",
        help="with --prompt: sequential opens each component just before it runs and frees it after "
        "(least memory); together opens all first; auto: sequential when the bundle's device profile "
        "leaves less model memory than 3x the component files (default auto)",
    )
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance scale (default: the manifest's; 1 = no guidance)",
    )
    p.add_argument(
        "--scale",
        type=int,
        default=None,
        help="pixel repeat factor (default: small images upscaled to a grid >= 512 px wide)",
    )
    p.add_argument("--save-npy", type=Path, default=None, help="also write the raw [N,C,H,W] output (.npy)")
    _add_backend_args(p)

    p = sub.add_parser(
        "parity",
        help="check the bundle against its golden references",
        description="Level-2/3 parity (docs/design.md section 4). Exit 0 PASS, 1 FAIL, 2 error.",
    )
    p.add_argument("bundle", type=Path, help="NAME.edgediff folder")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="write the JSON report")
    p.add_argument("--plot", type=Path, default=None, metavar="OUT.png", help="plot the per-step curve")
    _add_backend_args(p)

    p = sub.add_parser(
        "bench",
        help="latency per model call and per image",
        description="Benchmark: p50/p90/p99 latency per model call and per image, peak RSS.",
    )
    p.add_argument("bundle", type=Path, help="NAME.edgediff folder")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--iters", type=int, default=20, help="timed model calls (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed warm-up calls (default 3)")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="sampler steps per image (default: the manifest's; per-step scales allow only that)",
    )
    p.add_argument("--image-runs", type=int, default=3, help="timed full sampling runs (default 3)")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="write the JSON result")
    _add_backend_args(p)

    p = sub.add_parser(
        "customize",
        help="MCA-Ctrl subject editing with a customization bundle",
        description="Put the subject of --subject into the region --condition-mask of --condition, "
        "keeping the rest (a bundle from 'edgediff export customize').",
    )
    p.add_argument("bundle", type=Path, help="NAME.edgediff folder written by 'edgediff export customize'")
    p.add_argument("--subject", type=Path, required=True, help="subject image (PNG, or .npy (C, H, W))")
    p.add_argument(
        "--subject-mask", type=Path, default=None, help="subject mask (PNG > 127 or .npy; default: all)"
    )
    p.add_argument("--condition", type=Path, required=True, help="image to edit (PNG, or .npy (C, H, W))")
    p.add_argument(
        "--condition-mask", type=Path, required=True, help="region of --condition to fill with the subject"
    )
    p.add_argument(
        "--labels", default=None, metavar="L1,L2", help="the target's labels, one per slot ('-' = empty)"
    )
    p.add_argument(
        "--cond", type=Path, default=None, metavar="FILE", help="target embeddings (.npy/.safetensors)"
    )
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the manifest's)")
    p.add_argument("--out", type=Path, required=True, help="output image (.png, or .npy)")
    _add_backend_args(p)
    return parser


def _default_providers(bundle: Bundle) -> list[str] | None:
    profile = bundle.manifest.profile()
    if profile is None:
        return None
    try:
        import onnxruntime
    except ImportError:
        return None
    have = set(onnxruntime.get_available_providers())
    chosen = [p for p in profile.ort_providers if p in have]
    return chosen or None


def _engine_and_plugins(bundle: Bundle, args: argparse.Namespace) -> tuple[Path | None, list[Path]]:
    engine = args.engine
    if engine is None:
        profile = bundle.manifest.profile()
        engines = sorted((bundle.root / "engines").glob("*.engine"))
        named = [e for e in engines if profile is not None and e.stem == profile.name]
        engine = (named or engines or [bundle.root / "engines" / "model.engine"])[0]
    plugins = args.plugin if args.plugin is not None else sorted((bundle.root / "trt" / "lib").glob("*.so"))
    return engine, list(plugins)


def _open(
    args: argparse.Namespace, need_golden: bool = False, steps: int | None = None
) -> tuple[Bundle, Backend]:
    """Load and verify the bundle, refuse a ``steps`` its per-step tables do not fit, open the backend."""
    bundle = load_bundle(args.bundle, backend=args.backend, need_golden=need_golden)
    if steps is not None:
        bundle.manifest.check_steps(steps)
    profile = bundle.manifest.profile()
    if profile is not None and not args.ignore_device:
        check_host(profile, args.backend)
    use_profile = profile is not None and not args.ignore_device
    threads = threads_for(args.threads, profile.cpu_threads if use_profile else None)
    engine, plugins = _engine_and_plugins(bundle, args) if args.backend == "trt" else (None, [])
    backend = open_backend(
        args.backend,
        bundle.model_path,
        threads=threads,
        providers=args.provider or (None if args.ignore_device else _default_providers(bundle)),
        engine_path=engine,
        plugin_libraries=plugins,
        disabled_optimizers=bundle.manifest.onnx.ort_disabled_optimizers,
    )
    return bundle, backend


def cmd_info(args: argparse.Namespace) -> int:
    """Print a bundle summary (or the manifest JSON)."""
    bundle = load_bundle(args.bundle, backend=None)
    m = bundle.manifest
    if args.json:
        print(m.to_json(), end="")
        return 0
    present = [rel for rel in m.files if (bundle.root / rel).is_file()]
    size = sum((bundle.root / rel).stat().st_size for rel in present)
    s = m.sampler
    precisions: dict[str, int] = {}
    for value in m.quant.precision.values():
        key = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        precisions[key] = precisions.get(key, 0) + 1

    def shape(spec) -> str:
        return f"{spec.name} {spec.dtype}[{', '.join(map(str, spec.shape))}]"

    golden = "yes" if bundle.has_golden else "no"
    if GOLDEN_PATH in m.files and not bundle.has_golden:
        golden = "left out (parity needs them)"
    lines = [
        f"bundle      {bundle.name} (schema {m.schema_version}, created by {m.created_by})",
        f"model       {m.model.family}, {m.model.file}, layout {m.model.layout}, sample "
        f"[{','.join(m.model.layout[1:])}] = {m.model.sample_shape}"
        + (", learned sigma (first half of the output channels used)" if m.model.learned_sigma else ""),
        f"inputs      {'; '.join(shape(t) for t in m.model.inputs)}",
        f"outputs     {'; '.join(shape(t) for t in m.model.outputs)}",
        f"step input  {m.model.step_input or '-'}",
        f"condition   {m.conditioning.describe() if m.conditioning else 'none (unconditional)'}",
        *(
            [
                "pipeline    "
                + " -> ".join(f"{n} ({m.pipeline.component(n).precision})" for n in m.pipeline.order)
                + f"; {m.pipeline.max_length} tokens, image {m.pipeline.image_shape}; sample --prompt TEXT"
            ]
            if m.pipeline is not None
            else []
        ),
        f"sampler     {s.kind}, {s.steps} steps, {s.prediction_type}, {s.beta_schedule} "
        f"(T={s.num_train_timesteps}), spacing {s.timestep_spacing}, eta {s.eta}, "
        f"guidance {s.guidance_scale if s.guidance_scale is not None else '-'}",
        f"onnx        opset {m.onnx.opset}, IR {m.onnx.ir_version}, custom ops: "
        + (
            ", ".join(
                f"{c.domain}::{c.name} (plugin {c.plugin_namespace or '-'} v{c.plugin_version})"
                for c in m.onnx.custom_ops
            )
            or "none"
        ),
        f"quant       {m.quant.summary()}",
        "weights     containers: "
        + (", ".join(f"{k} x{v}" for k, v in sorted(m.quant.weight_containers.items())) or "as exported")
        + "; per-node precision: "
        + (", ".join(f"{k} x{v}" for k, v in sorted(precisions.items())) or "-"),
        f"requires    onnxruntime >= {m.requirements.onnxruntime_min}"
        + (f", TensorRT >= {m.requirements.tensorrt_min}" if m.requirements.tensorrt_min else ""),
        f"device      {m.device['name'] if m.device else 'any (no profile embedded)'}",
        f"files       {len(present)} ({size / 1e6:.2f} MB), golden references: {golden}",
        f"parity      tolerances {m.parity.tolerances}; {m.parity.tolerance_source}",
    ]
    if is_customize_bundle(m.files):
        from edgediff_runtime.customize_spec import load_customize_spec

        spec = load_customize_spec(bundle.root)
        case = "yes" if spec.golden and (bundle.root / spec.golden).is_file() else "left out"
        lines.append(f"customize   MCA-Ctrl {spec.describe()} (edgediff-run customize); golden case: {case}")
    print("\n".join(lines))
    return 0


def _progress(total: int, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, file=sys.stderr, leave=False, disable=None)


def cmd_sample(args: argparse.Namespace) -> int:
    """Sample ``--num`` images and write them as a PNG grid (atomically)."""
    from edgediff_runtime.conditioning import build_conditioning
    from edgediff_runtime.imaging import readable_scale, save_gif, save_grid, video_paths
    from edgediff_runtime.pipeline import Guidance, sample
    from edgediff_runtime.samplers import make_sampler

    if args.prompt is not None:
        return _sample_prompt(args)
    args.num = 4 if args.num is None else args.num
    if args.num < 1:
        raise RuntimeStageError(f"--num must be >= 1, got {args.num}")
    if args.scale is not None and args.scale < 1:
        raise RuntimeStageError(f"--scale must be >= 1, got {args.scale}")
    if args.seed < 0:
        raise RuntimeStageError(f"--seed must be >= 0, got {args.seed}")
    if args.steps is not None and args.steps < 1:
        raise RuntimeStageError(f"steps must be >= 1, got {args.steps}; pass --steps 1 or more")
    manifest = read_manifest(args.bundle)  # the bundle is opened and verified below
    _refuse_customize_bundle(manifest, "sample")
    video = manifest.model.layout == "BCFHW"
    _check_out(args.out, ".gif" if video else ".png", "--out")
    _check_out(args.save_npy, ".npy", "--save-npy")
    feeds = build_conditioning(
        args.bundle,
        manifest.conditioning,
        args.num,
        labels=args.labels,
        cond_file=args.cond,
        guidance=args.guidance,
        default_guidance=manifest.sampler.guidance_scale,
    )
    bundle, backend = _open(args, steps=args.steps)
    steps = bundle.manifest.sampler.steps if args.steps is None else args.steps
    make_sampler(bundle.manifest.sampler, steps)  # reject bad --steps before any work
    noise = np.random.default_rng(args.seed).standard_normal(
        (args.num, *bundle.manifest.model.sample_shape), dtype=np.float32
    )
    guidance = None
    if feeds.guidance_scale is not None and feeds.null is not None:
        guidance = Guidance(scale=feeds.guidance_scale, uncond=feeds.null, cond=feeds.cond)
    bar = _progress(steps, "sampling")
    try:
        result = sample(
            bundle,
            backend,
            noise,
            steps,
            step_callback=(lambda i, t, x: bar.update(1)) if bar is not None else None,
            rng=np.random.default_rng(args.seed + 1),
            extra_feeds=None if guidance is not None else feeds.cond,
            guidance=guidance,
        )
    finally:
        if bar is not None:
            bar.close()
    if not np.all(np.isfinite(result.final)):
        raise RuntimeStageError("the model produced NaN/Inf; check the bundle with `edgediff-run parity`")
    if video:
        written = video_paths(args.out, args.num)
        scale = args.scale or readable_scale(result.final.shape[-1], 1)
        for path, clip in zip(written, result.final):
            save_gif(path, clip, scale=scale)
    else:
        written = [args.out]
        scale = save_grid(args.out, result.final, scale=args.scale)
    if args.save_npy is not None:
        from edgediff_runtime._atomic import atomic_path

        with atomic_path(args.save_npy) as tmp, tmp.open("wb") as fh:
            np.save(fh, result.final)
    per_call = 1e3 * float(np.mean(result.call_seconds))
    what = f"{args.num} video(s) as GIF" if video else f"{args.num} images"
    cfg = f", guidance {guidance.scale:g} (one batched call)" if guidance is not None else ""
    size = sum(Path(path).stat().st_size for path in written) / 1e3
    print(
        f"wrote {args.out} ({what}, {steps} steps{cfg}, {per_call:.1f} ms per model call; "
        f"upscaled {scale}x, {size:.1f} kB)"
    )
    if args.save_npy is not None:
        npy_kb = args.save_npy.stat().st_size / 1e3
        print(f"wrote {args.save_npy} (raw output, float32, {npy_kb:.1f} kB)")
    return 0


def _sample_prompt(args: argparse.Namespace) -> int:
    """Prompt -> image with a pipeline bundle (edgediff_runtime.prompts); outputs written atomically."""
    from edgediff_runtime.imaging import save_grid
    from edgediff_runtime.prompts import check_components, pipeline_of, resolve_load, text_to_image
    from edgediff_runtime.samplers import make_sampler

    num = 1 if args.num is None else args.num
    if num < 1:
        raise RuntimeStageError(f"--num must be >= 1, got {num}")
    for flag, value in (("--labels", args.labels), ("--cond", args.cond)):
        if value is not None:
            raise RuntimeStageError(f"--prompt and {flag} exclude each other; pass one")
    if args.seed < 0:
        raise RuntimeStageError(f"--seed must be >= 0, got {args.seed}")
    if args.steps is not None and args.steps < 1:
        raise RuntimeStageError(f"steps must be >= 1, got {args.steps}; pass --steps 1 or more")
    if args.scale is not None and args.scale < 1:
        raise RuntimeStageError(f"--scale must be >= 1, got {args.scale}")
    if args.backend != "ort":
        raise RuntimeStageError("--prompt runs the pipeline's components on ONNX Runtime; use --backend ort")
    if args.guidance is not None and not np.isfinite(args.guidance):
        raise RuntimeStageError(f"--guidance must be a finite number, got {args.guidance}")
    _check_out(args.out, ".png", "--out")
    _check_out(args.save_npy, ".npy", "--save-npy")
    bundle = load_bundle(args.bundle, backend="ort")
    pipeline_of(bundle)
    check_components(bundle)
    if args.steps is not None:
        bundle.manifest.check_steps(args.steps)
    profile = bundle.manifest.profile()
    if profile is not None and not args.ignore_device:
        check_host(profile, "ort")
    if args.threads is not None and args.threads < 1:
        raise RuntimeStageError(f"--threads must be >= 1, got {args.threads}")
    steps = bundle.manifest.sampler.steps if args.steps is None else args.steps
    make_sampler(bundle.manifest.sampler, steps)
    providers = args.provider or (None if args.ignore_device else _default_providers(bundle))

    def open_onnx(path: Path) -> Backend:
        disabled = bundle.manifest.onnx.ort_disabled_optimizers if path == bundle.model_path else None
        return open_backend(
            "ort", path, threads=args.threads, providers=providers, disabled_optimizers=disabled
        )

    scale = args.guidance if args.guidance is not None else bundle.manifest.sampler.guidance_scale
    noise = np.random.default_rng(args.seed).standard_normal(
        (num, *bundle.manifest.model.sample_shape), dtype=np.float32
    )
    load = resolve_load(args.load, bundle)
    bar = _progress(steps, "sampling")
    try:
        result = text_to_image(
            bundle,
            open_onnx,
            [args.prompt] * num,
            noise,
            negative_prompt=args.negative_prompt,
            guidance=scale,
            steps=steps,
            load=load,
            step_callback=(lambda i, t, x: bar.update(1)) if bar is not None else None,
        )
    finally:
        if bar is not None:
            bar.close()
    if not np.all(np.isfinite(result.images)):
        raise RuntimeStageError("the pipeline produced NaN/Inf; check the bundle with `edgediff-run parity`")
    used = save_grid(args.out, result.images, scale=args.scale or 1, pad=1 if num > 1 else 0)
    if args.save_npy is not None:
        from edgediff_runtime._atomic import atomic_path

        with atomic_path(args.save_npy) as tmp, tmp.open("wb") as fh:
            np.save(fh, result.images)
    per_call = 1e3 * float(np.mean(result.call_seconds))
    cfg = f", guidance {scale:g}" if scale is not None and scale != 1.0 else ""
    print(
        f"wrote {args.out} ({num} image(s) {list(result.images.shape[1:])}, {steps} steps{cfg}, "
        f"{per_call:.1f} ms per denoiser call, components loaded {load}"
        + (f", upscaled {used}x" if used > 1 else "")
        + ")"
    )
    if args.save_npy is not None:
        print(f"wrote {args.save_npy} (images [N, 3, H, W] in [-1, 1], float32)")
    return 0


def cmd_parity(args: argparse.Namespace) -> int:
    """Level-2/3 parity; exit 0 on PASS, 1 on FAIL."""
    from edgediff_runtime.parity import format_report, run_parity

    _check_out(args.json, ".json", "--json")
    _check_out(args.plot, ".png", "--plot")
    bundle, backend = _open(args, need_golden=True)
    if is_customize_bundle(read_manifest(args.bundle).files):
        from edgediff_runtime.customize_parity import run_customize_parity

        report = run_customize_parity(bundle, backend, backend_name=args.backend)
    else:
        report = run_parity(bundle, backend, backend_name=args.backend)
    if bundle.manifest.pipeline is not None:  # per component and end to end (prompt -> image)
        from edgediff_runtime.parity import pipeline_parity

        report["pipeline"] = pipeline_parity(bundle)
        report["passed"] = report["passed"] and report["pipeline"]["passed"]
    if args.plot is not None:
        from edgediff_runtime.imaging import plot_parity

        plot_parity(args.plot, report)
    if args.json is not None:
        write_json(args.json, report)
    for what, path in (("report (JSON)", args.json), ("per-step plot (PNG)", args.plot)):
        if path is not None:
            print(f"wrote {what}: {path} ({path.stat().st_size / 1e3:.1f} kB)")
    print(format_report(report))  # the verdict (PASS/FAIL) stays the last line
    return 0 if report["passed"] else 1


def cmd_bench(args: argparse.Namespace) -> int:
    """Latency percentiles per model call and per image."""
    from edgediff_runtime.bench import run_bench

    for flag, value, least in (
        ("--batch", args.batch, 1),
        ("--iters", args.iters, 1),
        ("--warmup", args.warmup, 0),
        ("--image-runs", args.image_runs, 0),
    ):
        if value < least:
            raise RuntimeStageError(f"{flag} must be >= {least}, got {value}")
    if args.steps is not None and args.steps < 1:
        raise RuntimeStageError(f"steps must be >= 1, got {args.steps}; pass --steps 1 or more")
    _check_out(args.json, ".json", "--json")
    _refuse_customize_bundle(read_manifest(args.bundle), "bench")
    bundle, backend = _open(args, steps=args.steps)
    result = run_bench(
        bundle,
        backend,
        batch=args.batch,
        iters=args.iters,
        warmup=args.warmup,
        steps=args.steps,
        image_runs=args.image_runs,
        backend_name=args.backend,
    )
    if args.json is not None:
        write_json(args.json, result)
    call = result["unet_call_ms"]
    lines = [
        f"bench {result['bundle']} ({result['backend']}, batch {result['batch']}, {result['steps']} steps)",
        f"  model call  p50 {call['p50']:.2f} ms  p90 {call['p90']:.2f} "
        f"ms  p99 {call['p99']:.2f} ms  (n={call['n']})",
    ]
    if result["image_ms"]:
        img = result["image_ms"]
        lines.append(
            f"  per image   p50 {img['p50']:.1f} ms  p90 {img['p90']:.1f} ms  p99 {img['p99']:.1f} ms"
        )
    if result["peak_rss_mb"] is not None:
        lines.append(f"  peak RSS    {result['peak_rss_mb']:.0f} MiB")
    if args.json is not None:
        lines.append(f"wrote {args.json} ({args.json.stat().st_size / 1e3:.1f} kB)")
    print("\n".join(lines))
    return 0


def _refuse_customize_bundle(manifest, command: str) -> None:
    if is_customize_bundle(manifest.files):
        raise RuntimeStageError(
            f"bundle {manifest.name} is a customization bundle (three streams, masks and modes as inputs); "
            f"'{command}' needs a bundle from 'edgediff export onnx'; use 'edgediff-run customize' with it"
        )


def cmd_customize(args: argparse.Namespace) -> int:
    """MCA-Ctrl subject editing: write the edited image (atomically)."""
    from edgediff_runtime.conditioning import build_conditioning
    from edgediff_runtime.customize import CustomizeInputs, customize, null_rows
    from edgediff_runtime.customize_images import read_image, read_mask, write_image
    from edgediff_runtime.customize_spec import load_customize_spec

    manifest = read_manifest(args.bundle)
    if not is_customize_bundle(manifest.files):
        raise RuntimeStageError(
            f"bundle {manifest.name} has no customization section; "
            "export one with 'edgediff export customize'"
        )
    if args.out.suffix.lower() not in (".png", ".npy"):
        raise RuntimeStageError(f"--out must end in .png or .npy, got {args.out.name}")
    _check_out(args.out, args.out.suffix.lower(), "--out")
    shape = tuple(manifest.model.sample_shape)
    subject, subject_hw = read_image(args.subject, shape, "--subject")
    condition, condition_hw = read_image(args.condition, shape, "--condition")
    sample_hw = shape[1:]
    subject_mask = (
        read_mask(args.subject_mask, subject_hw, sample_hw, "--subject-mask")
        if args.subject_mask is not None
        else np.ones(sample_hw, dtype=bool)
    )
    condition_mask = read_mask(args.condition_mask, condition_hw, sample_hw, "--condition-mask")
    feeds = build_conditioning(
        args.bundle,
        manifest.conditioning,
        1,
        labels=args.labels,
        cond_file=args.cond,
        guidance=args.guidance,
        default_guidance=manifest.sampler.guidance_scale,
    )
    null = feeds.null if feeds.null is not None else null_rows(args.bundle, manifest.conditioning)
    inputs = CustomizeInputs(
        subject, condition, subject_mask, condition_mask, feeds.cond, null, feeds.guidance_scale
    )
    bundle, backend = _open(args)
    spec = load_customize_spec(bundle.root)
    bar = _progress(2 * spec.steps * (1 + spec.invert_refine), "customize")
    try:
        step = (lambda what, i: bar.update(1)) if bar is not None else None
        run = customize(bundle, backend, spec, inputs, progress=step)
    finally:
        if bar is not None:
            bar.close()
    if not np.all(np.isfinite(run.image)):
        raise RuntimeStageError("the model produced NaN/Inf; check the bundle with `edgediff-run parity`")
    write_image(run.image, args.out)
    per_call = 1e3 * float(np.mean(run.call_seconds))
    print(
        f"wrote {args.out} ({spec.describe()}; editable region {int(condition_mask.sum())} of "
        f"{condition_mask.size} pixels; {len(run.call_seconds)} model calls, {per_call:.1f} ms each)"
    )
    return 0


COMMANDS = {
    "info": cmd_info,
    "sample": cmd_sample,
    "parity": cmd_parity,
    "bench": cmd_bench,
    "customize": cmd_customize,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``edgediff-run``; returns the exit code."""
    args = parse_or_exit_code(build_parser(), argv)
    if isinstance(args, int):  # --help (0) or a usage error (2, already printed as one line)
        return args
    return run_guarded(COMMANDS[args.command], args, handled=(RuntimeStageError,))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
