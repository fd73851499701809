"""Every subcommand of `edgediff` and `edgediff-run` against bad input.

Each case checks the one error contract (docs/design.md section 6): exactly one line on stderr
starting with `error:`, a non-zero exit (2 for errors, 130 for interrupts), no traceback, no
partial output next to the requested output, and every input file unchanged (sha256 before and
after). Commands run in-process (`main([...])`); a few subprocesses check import-time behaviour.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgediff.methods import quantize_model
from edgediff.reference.model import build_scheduler, save_pipeline
from edgediff_export.bundle import ExportOptions, export_bundle
from edgediff_export.cli import main as edgediff_main
from edgediff_runtime.cli import main as run_main
from tests.export.helpers import tiny_unet

STEPS = 2
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def art(tmp_path_factory) -> Path:
    """A tiny FP pipeline, two W8A8 ptq folders from it (different seeds) and the bundle of the first."""
    root = tmp_path_factory.mktemp("bad-inputs")
    save_pipeline(tiny_unet(), build_scheduler(), root / "fp")
    quantize_model(root / "fp", "ptq", "W8A8", root / "q", num_steps=STEPS, progress=False)
    quantize_model(root / "fp", "ptq", "W8A8", root / "q-other", num_steps=STEPS, seed=1, progress=False)
    quantize_model(root / "fp", "ptq", "W4A8", root / "q4", num_steps=STEPS, progress=False)
    export_bundle(
        root / "q", root / "q.edgediff", ExportOptions(steps=STEPS, golden_samples=2), progress=False
    )
    (root / "a-file").write_text("a regular file: nothing can be created below it\n")
    return root


def tree_hash(path: Path) -> dict[str, str]:
    """sha256 of every file below `path` (or of `path` itself), keyed by relative path."""
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {
        str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(path.rglob("*"))
        if f.is_file()
    }


def listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def check(main, argv, capsys, needle: str, *, inputs=(), out: Path | None = None, code: int = 2) -> str:
    """Run `main(argv)`; assert the one-line error contract; return the error line."""
    before = {p: tree_hash(p) for p in inputs}
    watch = out.parent if out is not None else None
    seen = listing(watch) if watch is not None else set()
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    err = captured.err
    assert rc == code, (rc, err)
    assert "Traceback" not in err and "Traceback" not in captured.out
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert needle in err, err
    for p in inputs:
        assert tree_hash(p) == before[p], f"{p} changed"
    if watch is not None:
        assert listing(watch) == seen, f"partial output in {watch}: {listing(watch) - seen}"
    return err


def copy_of(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------- usage errors (both CLIs) ----

USAGE = [
    (edgediff_main, [], "the following arguments are required: cmd"),
    (edgediff_main, ["bogus"], "invalid choice: 'bogus'"),
    (
        edgediff_main,
        ["quantize", "--model", "reference", "--method", "ptq", "--bits", "bogus", "--out", "o"],
        "unknown bit setting 'bogus'",
    ),
    (
        edgediff_main,
        ["quantize", "--model", "reference", "--method", "nope", "--bits", "W8A8", "--out", "o"],
        "argument --method: invalid choice",
    ),
    (
        edgediff_main,
        ["quantize", "--model", "reference", "--method", "ptq", "--bits", "W8A8"],
        "the following arguments are required: --out",
    ),
    (
        edgediff_main,
        ["quantize", "--model", "reference", "--method", "ptq", "--bits", "W9A8", "--out", "o"],
        "unknown bit setting 'W9A8'",
    ),
    (
        edgediff_main,
        ["quantize", "--model", "r", "--method", "ptq", "--bits", "W8A8", "--out", "o", "--steps", "0"],
        "--steps must be at least 1",
    ),
    (edgediff_main, ["eval", "--model", "reference", "--samples", "0"], "--samples must be at least 1"),
    (edgediff_main, ["reference", "train", "--out", "o", "--steps", "-3"], "--steps must be at least 1"),
    (edgediff_main, ["reference", "train-classifier"], "the following arguments are required: --out"),
    (
        edgediff_main,
        ["distill", "--model", "reference", "--method", "pd", "--out", "o", "--from-steps", "12"],
        "--from-steps must be a power of two",
    ),
    (edgediff_main, ["demo", "--samples", "zero"], "--samples must be an integer"),
    (edgediff_main, ["export"], "the following arguments are required: export_cmd"),
    (edgediff_main, ["export", "onnx", "q"], "the following arguments are required: --out"),
    (edgediff_main, ["export", "onnx", "q", "--out", "b", "--placement", "gpu"], "argument --placement"),
    (edgediff_main, ["export", "lint", "m.onnx"], "the following arguments are required: --device"),
    (edgediff_main, ["export", "validate", "q", "b", "--min-sqnr", "high"], "argument --min-sqnr"),
    (edgediff_main, ["devices", "list", "--all"], "unrecognized arguments: --all"),
    (edgediff_main, ["devices"], "the following arguments are required: dev_cmd"),
    (run_main, [], "the following arguments are required: COMMAND"),
    (run_main, ["sample", "b"], "the following arguments are required: --out"),
    (run_main, ["bench", "b", "--batch", "two"], "argument --batch: invalid int value"),
    (run_main, ["parity", "b", "--backend", "tpu"], "argument --backend: invalid choice"),
    (run_main, ["info"], "the following arguments are required: bundle"),
]


@pytest.mark.parametrize("main, argv, needle", USAGE, ids=[" ".join(a[1][:3]) or "-" for a in USAGE])
def test_usage_errors_are_one_line(main, argv, needle, capsys):
    err = check(main, argv, capsys, needle)
    assert "usage:" not in err and "see `" in err


# ------------------------------------------------- tampered quantized folders (every loader) ----


def _write_json(path: Path, edit) -> None:
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d, indent=2))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _other_recipe(art: Path):
    return lambda p: p.write_bytes((art / "q4" / "recipe.json").read_bytes())


QFOLDER = [
    ("recipe.json", lambda p: p.write_text("{not json"), "corrupt recipe.json"),
    ("recipe.json", _truncate, "corrupt recipe.json"),
    ("recipe.json", "other-bits", "recipe and weights come from different models"),
    (
        "recipe.json",
        lambda p: _write_json(p, lambda d: d["rules"][-1]["quant"].update(w_bits=11)),
        "invalid recipe.json",
    ),
    ("model.safetensors", _truncate, "corrupt model.safetensors"),
    ("model.safetensors", lambda p: p.write_bytes(b"\0" * 64), "corrupt model.safetensors"),
    ("model.safetensors", lambda p: p.unlink(), "missing model.safetensors"),
    ("edgediff_meta.json", lambda p: p.write_text("[1, 2"), "corrupt edgediff_meta.json"),
    ("edgediff_meta.json", lambda p: _write_json(p, lambda d: d.update(bits="W2A4")), "says W2A4"),
    ("edgediff_meta.json", lambda p: _write_json(p, lambda d: d.update(method="mpqdmv2")), "was edited"),
    (
        "edgediff_meta.json",
        lambda p: _write_json(p, lambda d: d.update(bits="W8A8-ish")),
        "unknown bit setting",
    ),
    (
        "unet_config.json",
        lambda p: _write_json(p, lambda d: d.update(_class_name="NotAModel")),
        "names no diffusers model class",
    ),
]


@pytest.mark.parametrize("name, damage, needle", QFOLDER, ids=[f"{c[0]}-{c[2][:24]}" for c in QFOLDER])
def test_tampered_quantized_folder_export(art, tmp_path, capsys, name, damage, needle):
    folder = copy_of(art / "q", tmp_path / "q")
    (_other_recipe(art) if damage == "other-bits" else damage)(folder / name)
    out = tmp_path / "out" / "b.edgediff"
    out.parent.mkdir()
    check(
        edgediff_main,
        ["export", "onnx", folder, "--out", out, "--steps", STEPS],
        capsys,
        needle,
        inputs=[folder],
        out=out,
    )


def test_tampered_quantized_folder_eval(art, tmp_path, capsys):
    folder = copy_of(art / "q", tmp_path / "q")
    (folder / "recipe.json").write_bytes((art / "q4" / "recipe.json").read_bytes())
    check(
        edgediff_main,
        ["eval", "--model", folder, "--samples", 2, "--steps", 1, "--json", tmp_path / "r.json"],
        capsys,
        "recipe and weights come from different models",
        inputs=[folder],
        out=tmp_path / "r.json",
    )


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # a weight value changes; the safetensors header stays valid
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "name, damage, needle",
    [
        ("model.safetensors", _flip_last_byte, "is not the quantized folder"),
        ("edgediff_meta.json", lambda p: _write_json(p, lambda d: d.update(bits="W2A4")), "says W2A4"),
    ],
)
def test_tampered_quantized_folder_validate(art, tmp_path, capsys, name, damage, needle):
    folder = copy_of(art / "q", tmp_path / "q")
    damage(folder / name)
    check(
        edgediff_main,
        ["export", "validate", folder, art / "q.edgediff"],
        capsys,
        needle,
        inputs=[folder, art / "q.edgediff"],
    )


# --------------------------------------------------------------------- wrong folder kinds ----


def test_wrong_folder_kinds(art, tmp_path, capsys):
    inputs = [art / "q", art / "fp", art / "q.edgediff"]
    out = tmp_path / "b.edgediff"
    check(
        edgediff_main,
        ["export", "onnx", art / "q.edgediff", "--out", out],
        capsys,
        "not a quantized folder",
        inputs=inputs,
        out=out,
    )
    check(
        edgediff_main,
        ["export", "onnx", tmp_path / "absent", "--out", out],
        capsys,
        "model folder not found",
        out=out,
    )
    check(
        edgediff_main,
        ["export", "validate", art / "fp", art / "q.edgediff"],
        capsys,
        "is not a quantized folder",
        inputs=inputs,
    )
    check(
        edgediff_main,
        ["export", "validate", art / "q", art / "q"],
        capsys,
        "not an edgediff bundle",
        inputs=inputs,
    )
    check(
        edgediff_main,
        ["export", "lint", art / "q.edgediff" / "manifest.json", "--device", "x86-cpu"],
        capsys,
        "cannot read",
        inputs=inputs,
    )
    check(
        edgediff_main,
        ["export", "lint", art / "q", "--device", "x86-cpu"],
        capsys,
        "ONNX file not found",
        inputs=inputs,
    )
    check(run_main, ["info", art / "q"], capsys, "not an edgediff bundle", inputs=inputs)
    check(
        run_main,
        ["sample", art / "fp", "--out", tmp_path / "g.png"],
        capsys,
        "not an edgediff bundle",
        inputs=inputs,
        out=tmp_path / "g.png",
    )
    check(edgediff_main, ["devices", "show", "no-such-device"], capsys, "no-such-device")


def test_validate_refuses_a_folder_that_is_not_the_bundles_source(art, capsys):
    check(
        edgediff_main,
        ["export", "validate", art / "q-other", art / "q.edgediff"],
        capsys,
        "is not the quantized folder",
        inputs=[art / "q-other", art / "q.edgediff"],
    )


# ------------------------------------------------------------------------ tampered bundles ----

BUNDLE = [
    ("manifest.json", lambda p: p.write_text("{broken"), "is not valid JSON"),
    ("manifest.json", _truncate, "is not valid JSON"),
    ("manifest.json", lambda p: _write_json(p, lambda d: d.update(schema_version=999)), "schema"),
    ("model.onnx", _truncate, "model.onnx"),
    ("model.onnx", lambda p: p.unlink(), "model.onnx is missing"),
    ("reference/golden.npz", lambda p: p.write_bytes(b"PK\3\4 garbage"), "golden.npz"),
]


@pytest.mark.parametrize("name, damage, needle", BUNDLE, ids=[f"{c[0]}-{i}" for i, c in enumerate(BUNDLE)])
@pytest.mark.parametrize("command", ["parity", "sample", "bench", "info"])
def test_tampered_bundle(art, tmp_path, capsys, name, damage, needle, command):
    if command == "info" and name == "reference/golden.npz":
        pytest.skip("info reads the manifest only; golden references are not its input")
    bundle = copy_of(art / "q.edgediff", tmp_path / "b.edgediff")
    damage(bundle / name)
    argv = {
        "parity": ["parity", bundle, "--json", tmp_path / "r.json"],
        "sample": ["sample", bundle, "--out", tmp_path / "g.png", "--num", 1],
        "bench": [
            "bench",
            bundle,
            "--iters",
            1,
            "--warmup",
            0,
            "--image-runs",
            0,
            "--json",
            tmp_path / "r.json",
        ],
        "info": ["info", bundle],
    }[command]
    if command in ("sample", "bench", "info") and name == "reference/golden.npz":
        needle = "golden"
    check(run_main, argv, capsys, needle, inputs=[bundle], out=tmp_path / "r.json")


# ------------------------------------------------------------------- numbers out of range ----


def test_numbers_out_of_range(art, tmp_path, capsys):
    b, q = art / "q.edgediff", art / "q"
    inputs = [b, q]
    out = tmp_path / "o.edgediff"
    check(
        edgediff_main,
        ["export", "onnx", q, "--out", out, "--steps", 0],
        capsys,
        "--steps must be at least 1",
        inputs=inputs,
        out=out,
    )
    check(
        edgediff_main,
        ["export", "onnx", q, "--out", out, "--golden-samples", 0],
        capsys,
        "--golden-samples must be at least 1",
        inputs=inputs,
        out=out,
    )
    check(
        edgediff_main,
        ["export", "onnx", q, "--out", out, "--opset", 99],
        capsys,
        "opset 99",
        inputs=inputs,
        out=out,
    )
    check(
        edgediff_main,
        ["export", "validate", q, b, "--max-steps", 0],
        capsys,
        "--max-steps must be at least 1",
        inputs=inputs,
    )
    check(
        run_main,
        ["sample", b, "--num", 0, "--out", tmp_path / "g.png"],
        capsys,
        "--num must be >= 1",
        inputs=inputs,
        out=tmp_path / "g.png",
    )
    check(
        run_main,
        ["sample", b, "--steps", -1, "--out", tmp_path / "g.png"],
        capsys,
        "steps must be >= 1",
        inputs=inputs,
        out=tmp_path / "g.png",
    )
    check(
        run_main,
        ["sample", b, "--scale", 0, "--out", tmp_path / "g.png"],
        capsys,
        "--scale must be >= 1",
        inputs=inputs,
        out=tmp_path / "g.png",
    )
    check(run_main, ["bench", b, "--iters", 0], capsys, "--iters must be", inputs=inputs)
    check(run_main, ["parity", b, "--threads", 0], capsys, "--threads must be >= 1", inputs=inputs)


# ------------------------------------------------------------------------ unwritable outputs ----


def test_unwritable_outputs_fail_before_any_work(art, tmp_path, capsys, monkeypatch):
    """As root chmod does not stop writes: use a path below a regular file and /proc."""
    import edgediff.methods
    import edgediff.reference.evaluate
    import edgediff_export.bundle

    def no_work(*a, **k):
        raise AssertionError("the work started before the output location was checked")

    monkeypatch.setattr(edgediff.methods, "quantize_model", no_work)
    monkeypatch.setattr(edgediff.reference.evaluate, "evaluate", no_work)
    monkeypatch.setattr(edgediff_export.bundle, "export_bundle", no_work)
    blocked = art / "a-file" / "sub"
    inputs = [art / "q", art / "q.edgediff", art / "a-file"]
    for target in (blocked, Path("/proc/edgediff-test")):
        check(
            edgediff_main,
            ["quantize", "--model", art / "fp", "--method", "ptq", "--bits", "W8A8", "--out", target / "q"],
            capsys,
            "choose another location",
            inputs=inputs,
        )
        check(
            edgediff_main,
            ["eval", "--model", art / "q", "--json", target / "r.json"],
            capsys,
            "--json",
            inputs=inputs,
        )
        check(
            edgediff_main,
            ["export", "onnx", art / "q", "--out", target / "b.edgediff"],
            capsys,
            "choose another location",
            inputs=inputs,
        )
        check(
            edgediff_main,
            ["reference", "train", "--out", target / "m"],
            capsys,
            "choose another location",
            inputs=inputs,
        )
        check(
            edgediff_main,
            ["reference", "train-classifier", "--out", target / "c"],
            capsys,
            "choose another location",
            inputs=inputs,
        )
        check(
            edgediff_main,
            ["distill", "--model", art / "fp", "--method", "pd", "--out", target / "d"],
            capsys,
            "choose another location",
            inputs=inputs,
        )
        check(
            edgediff_main,
            ["demo", "--out", target / "demo"],
            capsys,
            "choose another location",
            inputs=inputs,
        )
        check(
            edgediff_main,
            ["export", "validate", art / "q", art / "q.edgediff", "--json", target / "v.json"],
            capsys,
            "--json",
            inputs=inputs,
        )
        check(
            run_main,
            ["sample", art / "q.edgediff", "--out", target / "g.png"],
            capsys,
            "--out",
            inputs=inputs,
        )
        check(
            run_main,
            ["parity", art / "q.edgediff", "--plot", target / "p.png"],
            capsys,
            "--plot",
            inputs=inputs,
        )
        check(
            run_main,
            ["bench", art / "q.edgediff", "--json", target / "b.json"],
            capsys,
            "--json",
            inputs=inputs,
        )


def test_output_probe_creates_a_real_file(art, tmp_path, capsys, monkeypatch):
    """A full disk (ENOSPC) or read-only mount (EROFS) is found by the probe, which os.access misses."""
    import errno
    import tempfile

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tempfile, "mkstemp", full)
    err = check(
        edgediff_main,
        ["export", "onnx", art / "q", "--out", tmp_path / "b.edgediff"],
        capsys,
        "No space left on device",
        inputs=[art / "q"],
        out=tmp_path / "b.edgediff",
    )
    assert str(tmp_path) in err
    check(
        run_main,
        ["sample", art / "q.edgediff", "--out", tmp_path / "g.png"],
        capsys,
        "No space left on device",
        inputs=[art / "q.edgediff"],
        out=tmp_path / "g.png",
    )


def test_disk_full_while_writing_is_one_line_and_leaves_nothing(art, tmp_path, capsys, monkeypatch):
    import errno

    import edgediff_export.passes.external_data as ext

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "b.edgediff" / "model.onnx"))

    monkeypatch.setattr(ext, "save_model", full)
    out = tmp_path / "b.edgediff"
    err = check(
        edgediff_main,
        ["export", "onnx", art / "q", "--out", out, "--steps", STEPS, "--golden-samples", 1],
        capsys,
        "No space left on device (ENOSPC)",
        inputs=[art / "q"],
        out=out,
    )
    assert "model.onnx" in err and "free some space" in err


def test_read_only_file_system_while_writing(art, tmp_path, capsys, monkeypatch):
    import errno

    import edgediff_runtime.imaging as imaging

    def rofs(path, data):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(imaging, "write_bytes", rofs)
    check(
        run_main,
        ["sample", art / "q.edgediff", "--out", tmp_path / "g.png", "--num", 1],
        capsys,
        "(EROFS)",
        inputs=[art / "q.edgediff"],
        out=tmp_path / "g.png",
    )


# ------------------------------------------------------------------------------ interrupts ----


def test_interrupts_are_one_line_exit_130_and_leave_nothing(art, tmp_path, capsys, monkeypatch):
    import edgediff_export.bundle
    import edgediff_runtime.pipeline

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(edgediff_export.bundle, "record_golden", interrupt)
    out = tmp_path / "b.edgediff"
    check(
        edgediff_main,
        ["export", "onnx", art / "q", "--out", out, "--steps", STEPS],
        capsys,
        "interrupted",
        inputs=[art / "q"],
        out=out,
        code=130,
    )
    monkeypatch.setattr(edgediff_runtime.pipeline, "sample", interrupt)
    check(
        run_main,
        ["sample", art / "q.edgediff", "--out", tmp_path / "g.png"],
        capsys,
        "interrupted",
        inputs=[art / "q.edgediff"],
        out=tmp_path / "g.png",
        code=130,
    )


# --------------------------------------------------------------- import-time (subprocesses) ----


def _subprocess(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(REPO / p) for p in ("", "export", "runtime"))}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (
            ["quantize", "--model", "reference", "--method", "ptq", "--bits", "bogus", "--out", "o"],
            "unknown bit setting",
        ),
        (["eval", "--model", "reference", "--steps", "0"], "--steps must be at least 1"),
        (["export", "onnx", "q", "--out", "b", "--residual", "maybe"], "argument --residual"),
    ],
)
def test_argument_errors_come_before_torch_is_imported(argv, needle):
    res = _subprocess(
        "import sys\nfrom edgediff_export.cli import main\n"
        f"rc = main({argv!r})\n"
        "print('torch imported' if 'torch' in sys.modules else 'torch not imported')\nsys.exit(rc)\n"
    )
    assert res.returncode == 2
    assert res.stdout.strip() == "torch not imported"
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.stderr


def test_console_entry_points_exit_2_with_one_line():
    for module in ("edgediff_export.cli", "edgediff_runtime.cli"):
        res = subprocess.run(
            [sys.executable, "-m", module, "nope"],
            capture_output=True,
            text=True,
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join(str(REPO / p) for p in ("", "export", "runtime")),
            },
        )
        assert res.returncode == 2 and res.stderr.count("\n") == 1 and "invalid choice" in res.stderr
