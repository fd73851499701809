"""The staged driver: stage plan, saved folders, skipping finished stages, resuming inside a stage."""

import json

import pytest
import torch
from diffusers import UNet2DModel

from edgediff.distill.rdd import RDDConfig
from edgediff.distill.run import Stage, StageBudget, distill, plan_stages, rdd_variant, train_stage
from edgediff.errors import EdgediffError
from edgediff.reference.data import load_digits16
from edgediff.reference.model import SCHEDULER_CONFIG, build_scheduler, load_pipeline_parts, save_pipeline
from edgediff.sampling import ddim_sample, seeded_noise
from tests.edgediff.distill.tiny import TINY16

TINY_BUDGET = StageBudget(iterations=3, batch_size=4, lr=1e-3)


def tiny_unet16(seed: int = 0) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(**TINY16)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "teacher"
    save_pipeline(tiny_unet16(), build_scheduler(), path)
    return path


def test_plan_pd_and_rdd_share_the_stages_above_rdd_from():
    pd = plan_stages("pd", 32, 1)
    rdd = plan_stages("rdd", 32, 1, rdd_from=8)
    assert [s.name for s in pd] == ["pd-32to16", "pd-16to8", "pd-8to4", "pd-4to2", "pd-2to1"]
    assert [s.name for s in rdd] == ["pd-32to16", "pd-16to8", "rdd-8to4", "rdd-4to2", "rdd-2to1"]
    variant = rdd_variant(RDDConfig(weight_pd=0.5, released_enqueue_reshape=True))
    tagged = plan_stages("rdd", 8, 2, variant=variant)
    assert [s.name for s in tagged] == ["rdd+pd0.5+released-8to4", "rdd+pd0.5+released-4to2"]
    assert rdd_variant(RDDConfig()) == ""


@pytest.mark.parametrize(
    "args, message",
    [
        (("pd", 12, 1), "power of two"),
        (("pd", 8, 8), "smaller"),
        (("pd", 4, 8), "smaller"),
        (("xx", 8, 1), "pd or rdd"),
    ],
)
def test_plan_rejects_bad_step_counts(args, message):
    with pytest.raises(EdgediffError, match=message):
        plan_stages(*args)


def test_two_stage_run_writes_loadable_folders_and_skips_finished_stages(tiny_model, tmp_path):
    out = tmp_path / "out"
    records = distill(tiny_model, "rdd", 4, 1, out, TINY_BUDGET, rdd_from=2, progress=False)
    assert [r["stage"] for r in records] == ["pd-4to2", "rdd-2to1"]
    for r in records:
        folder = out / r["stage"]
        meta = json.loads((folder / "distill.json").read_text())
        assert meta["num_steps"] == r["num_steps"] and meta["spacing"] == "trailing"
        assert meta["budget"]["iterations"] == 3 and meta["wall_seconds"] >= 0 and meta["final_loss"] > 0
        unet, sched = load_pipeline_parts(folder)
        assert sched.config.prediction_type == "v_prediction"
        images = ddim_sample(unet, dict(sched.config), seeded_noise(2, (1, 16, 16), 0), r["num_steps"]).images
        assert images.shape == (2, 1, 16, 16) and torch.isfinite(images).all()
    assert records[1]["teacher"] == str(out / "pd-4to2") and "rdd" in records[1]
    assert not (out / ".ckpt" / "pd-4to2").exists()
    # the 1-step student differs from the tiny teacher (it was trained)
    first, _ = load_pipeline_parts(tiny_model)
    last, _ = load_pipeline_parts(out / "rdd-2to1")
    assert any(not torch.equal(a, b) for a, b in zip(first.parameters(), last.parameters()))
    # a rerun skips both; a pd run reuses the shared pd-4to2 stage and trains only pd-2to1
    again = distill(tiny_model, "rdd", 4, 1, out, TINY_BUDGET, rdd_from=2, progress=False)
    assert all(r.get("skipped") for r in again)
    pd = distill(tiny_model, "pd", 4, 1, out, TINY_BUDGET, progress=False)
    assert [bool(r.get("skipped")) for r in pd] == [True, False]
    assert (out / "pd-2to1" / "distill.json").is_file()
    # a different budget for a finished stage is refused
    with pytest.raises(EdgediffError, match="budget"):
        distill(tiny_model, "pd", 4, 1, out, StageBudget(iterations=5, batch_size=4), progress=False)


def test_a_stage_resumes_from_its_checkpoint_exactly(tmp_path):
    teacher = tiny_unet16()
    images = load_digits16()[0][:64]
    stage = Stage("pd", 4, 2)
    const = dict(batch_size=4, lr=1e-3, schedule="constant")
    straight, _ = train_stage(
        teacher, SCHEDULER_CONFIG, stage, StageBudget(iterations=4, **const), progress=False, images=images
    )
    ckpt = tmp_path / "ckpt"
    train_stage(
        teacher, SCHEDULER_CONFIG, stage, StageBudget(iterations=2, **const),
        checkpoint_dir=ckpt, progress=False, images=images,
    )  # fmt: skip
    assert (ckpt / "checkpoint.pt").is_file()
    resumed, record = train_stage(
        teacher, SCHEDULER_CONFIG, stage, StageBudget(iterations=4, **const),
        checkpoint_dir=ckpt, progress=False, images=images,
    )  # fmt: skip
    assert record["resumed_at_step"] == 2
    for a, b in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b)


def test_non_v_prediction_model_is_refused(tmp_path):
    sched = build_scheduler()
    sched.register_to_config(prediction_type="epsilon")
    save_pipeline(tiny_unet16(), sched, tmp_path / "eps")
    with pytest.raises(EdgediffError, match="v_prediction"):
        distill(tmp_path / "eps", "pd", 4, 2, tmp_path / "out", TINY_BUDGET, progress=False)
