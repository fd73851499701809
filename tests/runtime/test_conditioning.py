"""Conditioning feeds, learned-sigma split, video latents and GIF output of the run stage (numpy only)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from edgediff_runtime.bundle import Bundle, load_bundle
from edgediff_runtime.conditioning import (
    ConditioningSpec,
    build_conditioning,
    gather_labels,
    load_cond_file,
    parse_labels,
)
from edgediff_runtime.errors import RuntimeStageError
from edgediff_runtime.imaging import save_gif, video_paths
from edgediff_runtime.manifest import Manifest, ModelSpec, TensorSpec
from edgediff_runtime.parity import format_report
from edgediff_runtime.pipeline import Guidance, sample

TABLE = ConditioningSpec(
    kind="label_table",
    input="encoder_hidden_states",
    shape=[2, 3],
    slots=2,
    classes=4,
    labels_json="conditioning/labels.json",
    label_embeddings="conditioning/label_embeddings.safetensors",
)
DIT = ConditioningSpec(kind="class_labels", input="class_labels", shape=[], classes=10, null_label=10)
EMB = ConditioningSpec(kind="embeddings", input="encoder_hidden_states", shape=[5, 3])


def _table() -> np.ndarray:
    # (slots=2, classes+2=6, dim=3): value = 100 * slot + 10 * row + component
    s, r, d = np.meshgrid(np.arange(2), np.arange(6), np.arange(3), indexing="ij")
    return (100 * s + 10 * r + d).astype(np.float32)


@pytest.fixture
def table_root(tmp_path: Path) -> Path:
    from safetensors.numpy import save_file

    (tmp_path / "conditioning").mkdir()
    save_file({"embeddings": _table()}, str(tmp_path / TABLE.label_embeddings))
    (tmp_path / TABLE.labels_json).write_text(json.dumps({"slots": 2, "classes": 4, "empty": 4, "null": 5}))
    return tmp_path


def test_gather_takes_row_label_of_each_slot():
    out = gather_labels(_table(), np.array([[3, 4], [0, 5]]))
    # sample 0: slot 0 row 3, slot 1 row 4 (empty); sample 1: slot 0 row 0, slot 1 row 5 (null)
    np.testing.assert_array_equal(out[0], [[30, 31, 32], [140, 141, 142]])
    np.testing.assert_array_equal(out[1], [[0, 1, 2], [150, 151, 152]])


def test_parse_labels_per_slot_with_empty_slot():
    np.testing.assert_array_equal(parse_labels("3,-", TABLE), [3, 4])
    np.testing.assert_array_equal(parse_labels("7", DIT), [7])
    with pytest.raises(RuntimeStageError, match="out of range"):
        parse_labels("4,1", TABLE)
    with pytest.raises(RuntimeStageError, match="needs 2 comma-separated"):
        parse_labels("1", TABLE)
    with pytest.raises(RuntimeStageError, match="not a label"):
        parse_labels("-", DIT)  # a class-label model has no empty slot
    with pytest.raises(RuntimeStageError, match="--cond FILE"):
        parse_labels("1", EMB)


def test_label_feeds_and_null_with_guidance(table_root: Path):
    feeds = build_conditioning(table_root, TABLE, 3, labels="2,-", guidance=4.0)
    cond, null = feeds.cond["encoder_hidden_states"], feeds.null["encoder_hidden_states"]
    assert cond.shape == (3, 2, 3) and feeds.guidance_scale == 4.0
    np.testing.assert_array_equal(cond[1], [[20, 21, 22], [140, 141, 142]])
    np.testing.assert_array_equal(null[2], [[50, 51, 52], [150, 151, 152]])
    # guidance 1 (or none and no manifest default): conditional only, no null half
    assert build_conditioning(table_root, TABLE, 1, labels="0,0", guidance=1.0).null is None
    assert build_conditioning(table_root, TABLE, 1, labels="0,0").guidance_scale is None
    assert build_conditioning(table_root, TABLE, 1, labels="0,0", default_guidance=2.5).guidance_scale == 2.5


def test_class_labels_and_guidance_needs_null(tmp_path: Path):
    feeds = build_conditioning(tmp_path, DIT, 2, labels="7", guidance=3.0)
    np.testing.assert_array_equal(feeds.cond["class_labels"], [7, 7])
    np.testing.assert_array_equal(feeds.null["class_labels"], [10, 10])
    no_null = dataclasses.replace(DIT, null_label=None)
    with pytest.raises(RuntimeStageError, match="needs a null condition"):
        build_conditioning(tmp_path, no_null, 2, labels="7", guidance=3.0)
    with pytest.raises(RuntimeStageError, match="needs a null condition"):
        build_conditioning(tmp_path, EMB, 2, cond_file=_npy(tmp_path, np.zeros((5, 3))), guidance=2.0)


def _npy(folder: Path, value: np.ndarray, name: str = "c.npy") -> Path:
    np.save(folder / name, np.asarray(value, np.float32))
    return folder / name


def test_cond_file_shapes(tmp_path: Path):
    from safetensors.numpy import save_file

    one = build_conditioning(tmp_path, EMB, 3, cond_file=_npy(tmp_path, np.ones((5, 3))))
    assert one.cond["encoder_hidden_states"].shape == (3, 5, 3)
    per = np.arange(3 * 5 * 3, dtype=np.float32).reshape(3, 5, 3)
    got = build_conditioning(tmp_path, EMB, 3, cond_file=_npy(tmp_path, per)).cond["encoder_hidden_states"]
    np.testing.assert_array_equal(got, per)
    save_file({"encoder_hidden_states": per}, str(tmp_path / "c.safetensors"))
    np.testing.assert_array_equal(load_cond_file(tmp_path / "c.safetensors", "encoder_hidden_states"), per)
    with pytest.raises(RuntimeStageError, match="embedding width 4 but the model takes 3"):
        build_conditioning(tmp_path, EMB, 3, cond_file=_npy(tmp_path, np.ones((5, 4))))
    with pytest.raises(RuntimeStageError, match=r"has shape \[2, 5, 3\]"):
        build_conditioning(tmp_path, EMB, 3, cond_file=_npy(tmp_path, np.ones((2, 5, 3))))
    with pytest.raises(RuntimeStageError, match="must be a .npy or .safetensors"):
        (tmp_path / "c.txt").write_text("1")
        build_conditioning(tmp_path, EMB, 3, cond_file=tmp_path / "c.txt")


def test_unconditional_bundle_refuses_conditioning_flags(tmp_path: Path):
    assert build_conditioning(tmp_path, None, 2).cond == {}
    with pytest.raises(RuntimeStageError, match="unconditional"):
        build_conditioning(tmp_path, None, 2, labels="1")
    with pytest.raises(RuntimeStageError, match="pass --labels 0,0"):
        build_conditioning(tmp_path, TABLE, 2)


def test_old_manifest_loads_as_unconditional_image_model(tiny_bundle: Path):
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    manifest.pop("conditioning", None)
    manifest["model"].pop("layout", None)
    manifest["model"].pop("learned_sigma", None)
    m = Manifest.from_dict(manifest)
    assert m.conditioning is None and m.model.layout == "BCHW" and not m.model.learned_sigma


class _Echo:
    """A backend whose output is `2 * sample` stacked with a variance half, `cond` added per row."""

    def __init__(self, learned_sigma: bool):
        self.learned_sigma = learned_sigma
        self.calls: list[dict] = []

    def run(self, feeds):
        self.calls.append(feeds)
        x = feeds["sample"]
        shift = feeds["class_labels"].astype(np.float32).reshape(-1, *([1] * (x.ndim - 1)))
        eps = 0.01 * x + 0.001 * shift
        out = np.concatenate([eps, np.full_like(x, 1e6)], axis=1) if self.learned_sigma else eps
        return {"out": out}


def _bundle(tiny_bundle: Path, shape: list[int], layout: str, learned_sigma: bool) -> Bundle:
    m = load_bundle(tiny_bundle, verify=False).manifest
    c = shape[0]
    out_shape = ["batch", 2 * c if learned_sigma else c, *shape[1:]]
    model = ModelSpec(
        family="Test",
        inputs=[
            TensorSpec("sample", "float32", ["batch", *shape]),
            TensorSpec("timestep", "int64", ["batch"]),
            TensorSpec("class_labels", "int64", ["batch"]),
        ],
        outputs=[TensorSpec("out", "float32", out_shape)],
        sample_shape=shape,
        layout=layout,
        learned_sigma=learned_sigma,
    )
    # no step input, so no per-step table either (the manifest check refuses one without the other)
    quant = dataclasses.replace(m.quant, step_table=None)
    manifest = dataclasses.replace(m, model=model, conditioning=DIT, quant=quant)
    manifest.check()
    return Bundle(root=tiny_bundle, manifest=manifest)


@pytest.mark.parametrize("learned_sigma", [False, True])
def test_video_latents_learned_sigma_and_batched_guidance(tiny_bundle: Path, learned_sigma: bool):
    shape = [2, 3, 4, 4]  # C, F, H, W
    bundle = _bundle(tiny_bundle, shape, "BCFHW", learned_sigma)
    noise = np.random.default_rng(0).standard_normal((2, *shape), dtype=np.float32)
    cond = {"class_labels": np.array([3, 3])}
    null = {"class_labels": np.array([10, 10])}
    backend = _Echo(learned_sigma)
    guided = sample(bundle, backend, noise, 2, guidance=Guidance(scale=3.0, uncond=null, cond=cond))
    # one model call per step, [null; cond] in one batch
    assert len(backend.calls) == 2 and backend.calls[0]["sample"].shape == (4, *shape)
    np.testing.assert_array_equal(backend.calls[0]["class_labels"], [10, 10, 3, 3])
    # u + w (c - u) of the echo model equals the echo model at label 10 + 3 (3 - 10) = -11
    plain = sample(bundle, _Echo(learned_sigma), noise, 2, extra_feeds={"class_labels": np.array([-11, -11])})
    np.testing.assert_allclose(guided.final, plain.final, rtol=0, atol=1e-6)
    assert guided.final.shape == noise.shape


def test_wrong_rank_noise_for_video_is_refused(tiny_bundle: Path):
    bundle = _bundle(tiny_bundle, [2, 3, 4, 4], "BCFHW", False)
    with pytest.raises(RuntimeStageError, match="noise must have shape"):
        sample(bundle, _Echo(False), np.zeros((1, 2, 4, 4), np.float32), 1)


def test_gif_per_sample(tmp_path: Path):
    from PIL import Image

    video = np.linspace(-1, 1, 3 * 4 * 5 * 6, dtype=np.float32).reshape(3, 4, 5, 6)  # C, F, H, W
    paths = video_paths(tmp_path / "v.gif", 2)
    assert [Path(p).name for p in paths] == ["v_0.gif", "v_1.gif"]
    save_gif(paths[0], video, scale=2)
    with Image.open(paths[0]) as img:
        assert img.n_frames == 4 and img.size == (12, 10)


def test_parity_report_shows_export_bound_warning():
    report = {
        "bundle": "b",
        "backend": "ort",
        "sampler": {"kind": "ddim", "steps": 1},
        "batch": 1,
        "level2": {"latent_max_abs": 1.0, "latent_psnr_min": -34.0, "final_max_abs": 1.0, "final_psnr": 1.0},
        "level3": None,
        "checks": [],
        "passed": False,
        "tolerance_source": "t",
        "export_bounds": {"within": False, "message": "export error past the bound"},
    }
    assert "WARNING: export error past the bound" in format_report(report)
