"""`edgediff eval` must tell a good model from a bad one."""

import json

import pytest
import torch

from edgediff.reference.evaluate import evaluate
from edgediff.reference.model import build_scheduler, build_unet, load_pipeline_parts, save_pipeline

SAMPLES, STEPS = 200, 10


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    unet, scheduler = load_pipeline_parts("reference")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * p.abs().mean() * 0.5)
    save_pipeline(unet, scheduler, root / "perturbed")
    save_pipeline(build_unet(seed=1), build_scheduler(), root / "untrained")
    return root


@pytest.fixture(scope="module")
def good_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("good")
    return evaluate(
        "reference", SAMPLES, STEPS, seed=0, json_out=out / "r.json", grid_out=out / "g.png", progress=False
    ), out


def test_report_fields_and_files(good_report):
    report, out = good_report
    written = json.loads((out / "r.json").read_text())
    assert written["samples"] == SAMPLES and written["steps"] == STEPS
    for key in ("fd", "confidence", "class_entropy"):
        assert key in written
    assert "paired_psnr" not in written  # the FP reference has no FP source to compare with
    assert (out / "g.png").stat().st_size > 100


def test_bundled_model_scores_far_better_than_bad_models(good_report, bad_models):
    good, _ = good_report
    perturbed = evaluate(bad_models / "perturbed", SAMPLES, STEPS, seed=0, progress=False)
    untrained = evaluate(bad_models / "untrained", SAMPLES, STEPS, seed=0, progress=False)
    assert good["confidence"] > 0.9
    assert good["class_entropy"] > 2.0  # close to log(10) = 2.30: all classes appear
    assert perturbed["fd"] > 3 * good["fd"]
    assert untrained["fd"] > 5 * good["fd"]
    assert untrained["confidence"] < good["confidence"]
