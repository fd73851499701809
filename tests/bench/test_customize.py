"""bench.customize: the cases' exact masks, the baselines' image operations, the metrics and the verdict."""

import math

import pytest
import torch

from bench.customize import (
    ABLATIONS,
    Case,
    Settings,
    copy_paste,
    make_cases,
    schedule_for,
    score,
    sdedit,
    verdict,
)
from edgediff.customize.schedule import PARTS, ControlSchedule, Mode, Task
from edgediff.reference.canvas32.data import DigitPool, slot_mask


@pytest.fixture(scope="module")
def pool():
    return DigitPool.split("val")


def test_cases_are_seeded_and_their_masks_exact(pool):
    cases = make_cases(3, 2, pool)
    again = make_cases(3, 2, pool)
    assert [c.task for c in cases] == [Task.EDIT] * 2 + [Task.GENERATE] * 2
    assert all(torch.equal(a.subject, b.subject) for a, b in zip(cases, again))
    assert not torch.equal(make_cases(4, 2, pool)[0].subject, cases[0].subject)
    for c in cases:
        other = 1 - c.slot
        assert c.subject_labels[c.slot] == c.labels[c.slot]  # the subject's digit is what slot s must show
        assert int(c.subject_mask.sum()) <= 256 and not (c.subject_mask & ~slot_mask(c.slot)).any()
        assert not (c.condition_mask & ~slot_mask(c.slot)).any()
        # the gallery digits sit exactly under M_S, and none is the subject's digit
        assert c.gallery.shape == (9, 1, 32, 32)
        assert bool((c.gallery[:, :, ~c.subject_mask] == -1).all())
        assert not any(torch.equal(g[:, c.subject_mask], c.subject[:, c.subject_mask]) for g in c.gallery)
        if c.task is Task.EDIT:
            assert c.condition_labels[other] == c.labels[other]
            assert c.condition_labels[c.slot] != c.labels[c.slot]
            assert bool(c.condition[:, c.condition_mask].max() > 0)  # the old digit lies inside M_C
        else:
            assert c.condition is None and torch.equal(c.condition_mask, slot_mask(c.slot))


def test_copy_paste_erases_the_region_then_pastes_the_subject():
    base, subject = torch.full((1, 4, 4), 0.5), torch.full((1, 4, 4), 0.9)
    m_c = torch.zeros(4, 4, dtype=torch.bool)
    m_c[:, 2:] = True
    m_s = torch.zeros(4, 4, dtype=torch.bool)
    m_s[1, 3] = m_s[2, 1] = True
    out = copy_paste(base, subject, m_s, m_c)
    expected = torch.tensor([[0.5, 0.5, -1, -1], [0.5, 0.5, -1, 0.9], [0.5, 0.9, -1, -1], [0.5, 0.5, -1, -1]])
    assert torch.equal(out[0], expected)


def test_sdedit_strength_zero_is_the_image_and_otherwise_edits_deterministically():
    from tests.edgediff.customize.tiny_canvas import loaded_canvas

    torch.set_num_threads(1)
    model = loaded_canvas()
    image = torch.rand(1, 16, 16) * 2 - 1
    from edgediff.models.conditioning import label_conditioning

    cond = label_conditioning(model, torch.tensor([[3, 5]]))
    assert torch.equal(sdedit(model, image, cond, Settings(4, 2.0, 0.0), 0), image)
    a, b = (sdedit(model, image, cond, Settings(4, 2.0, 0.5), 0) for _ in range(2))
    assert torch.equal(a, b) and (a - image).abs().max() > 1e-2


def test_ablation_schedules():
    def modes(variant):
        schedule = schedule_for(variant, Task.EDIT, 10)
        return {schedule.mode(i, p) for i in range(10) for p in PARTS}

    assert schedule_for("mca-ctrl", Task.EDIT, 10) == ControlSchedule.for_task(Task.EDIT, 10)
    assert modes("mca-ctrl") == {Mode.SAGI, Mode.SALQ, Mode.PLAIN}
    assert Mode.SAGI not in modes("no-sagi") and Mode.SALQ in modes("no-sagi")
    assert Mode.SALQ not in modes("no-salq") and Mode.SAGI in modes("no-salq")
    assert schedule_for("reversed-order", Task.EDIT, 10).mode(0, "up") is Mode.SALQ
    assert modes("no-control") == {Mode.PLAIN} and modes("sagi-all-steps") == {Mode.SAGI}
    required = {"no-sagi", "no-salq", "reversed-order", "localized-masks", "localized-no-dilation"}
    assert required <= set(ABLATIONS)


class _Probe(torch.nn.Module):
    """A stand-in slot classifier: features = the flattened image; slot s reads class 3 when the
    pixel (0, s) is bright, else 0."""

    def features(self, x):
        return x.flatten(1)

    def forward(self, x):
        logits = torch.zeros(x.shape[0], 2, 11)
        for s in range(2):
            bright = x[:, 0, 0, s] > 0
            logits[bright, s, 3] = 1.0
            logits[~bright, s, 0] = 1.0
        return logits


def _case(subject, m_s, m_c, gallery, labels=(3, 0), slot=0):
    return Case(Task.EDIT, slot, subject, m_s, labels, labels, m_c, None, labels, 0, gallery, subject)


def test_score_on_a_hand_case():
    m = torch.zeros(4, 4, dtype=torch.bool)
    m[:2, :2] = True
    subject = torch.full((1, 4, 4), -1.0)
    subject[0, 0, 0], subject[0, 1, 1] = 1.0, 0.5
    gallery = torch.full((2, 1, 4, 4), -1.0)
    gallery[:, 0, 0, 1] = 1.0  # other "digits": a different pixel set
    condition = torch.zeros(1, 4, 4)
    out = torch.where(m, subject, condition)  # subject inside M_C, condition outside
    out[0, 3, 3] = 0.2  # one background pixel off by 0.2: MSE 0.04 / 12 pixels
    r = score(_Probe(), out[None], [_case(subject, m, m, gallery)], condition[None])
    assert r["fidelity"] == pytest.approx(1.0)
    assert r["identification"] == 1.0
    assert r["background_psnr"] == pytest.approx(10 * math.log10(4 / (0.04 / 12)))
    assert r["edited_slot_accuracy"] == 1.0 and r["other_slot_accuracy"] == 1.0
    # the output shows a gallery digit instead: not identified, slot 0 read as class 0 (pixel (0,0) dark)
    wrong = torch.where(m, gallery[0], condition)
    r = score(_Probe(), wrong[None], [_case(subject, m, m, gallery)], condition[None])
    assert r["identification"] == 0.0 and r["fidelity"] < 0.9
    assert r["edited_slot_accuracy"] == 0.0 and math.isinf(r["background_psnr"])


def _seed(fid, psnr):
    return {
        "tasks": {
            "edit": {
                m: {"fidelity": f, "identification": f, "background_psnr": p}
                for m, f, p in zip(("mca-ctrl", "ddim-inversion", "copy-paste+sdedit"), fid, psnr)
            }
        }
    }


def test_verdict_per_seed_and_beyond_the_spread():
    seeds = [_seed((0.9, 0.8, 0.85), (math.inf, 20, 30)), _seed((0.86, 0.84, 0.88), (math.inf, 22, 31))]
    v = verdict(seeds)
    inv, sde = v["edit: mca-ctrl vs ddim-inversion"], v["edit: mca-ctrl vs copy-paste+sdedit"]
    assert inv["fidelity_higher_every_seed"] and inv["fidelity_higher_beyond_seed_spread"]
    assert sde["fidelity_higher_every_seed"] is False  # 0.86 < 0.88 on the second seed
    v2 = verdict([_seed((0.9, 0.85, 0.85), (25, 20, 30)), _seed((0.83, 0.82, 0.8), (25, 26, 30))])
    inv2 = v2["edit: mca-ctrl vs ddim-inversion"]
    assert inv2["fidelity_higher_every_seed"] and not inv2["fidelity_higher_beyond_seed_spread"]
    assert not inv2["background_not_lower_every_seed"]


@pytest.mark.parametrize("argv", [["--cases", "0"], ["--steps", "0"], ["--sdedit-strength", "1.5"]])
def test_bad_arguments_stop_before_any_work(argv, capsys):
    from bench.customize import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and "must be" in capsys.readouterr().err
