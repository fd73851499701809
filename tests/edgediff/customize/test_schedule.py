"""The step x layer schedule (Eq. 12) and the layer order it is applied to."""

import pytest

from edgediff.customize.attention import Controller, MCASelfAttnProcessor, self_attention_layers
from edgediff.customize.errors import CustomizeError
from edgediff.customize.schedule import PARTS, ControlSchedule, Mode, Task

from ..models.tiny import cond_unet


def test_switches_at_configured_step_and_layers():
    s = ControlSchedule(sagi_end=2, salq_end=4, sagi_parts=PARTS, salq_parts=("up",))
    table = {(i, p): s.mode(i, p) for i in range(6) for p in PARTS}
    for p in PARTS:
        assert table[0, p] is table[1, p] is Mode.SAGI
        assert table[4, p] is table[5, p] is Mode.PLAIN
    assert table[2, "up"] is table[3, "up"] is Mode.SALQ
    for p in ("down", "mid"):
        assert table[2, p] is table[3, p] is Mode.PLAIN
    assert [s.controls(i) for i in range(6)] == [True, True, True, True, False, False]
    assert not any(ControlSchedule.off().controls(i) for i in range(10))


def test_task_defaults():
    edit = ControlSchedule.for_task(Task.EDIT, 50)
    assert (edit.sagi_end, edit.salq_end, edit.salq_parts) == (20, 48, ("up",))
    gen = ControlSchedule.for_task(Task.GENERATE, 50)
    assert (gen.sagi_end, gen.salq_end, gen.salq_parts) == (35, 48, PARTS)


def test_bad_schedule_is_one_line_error():
    with pytest.raises(CustomizeError, match="sagi_end <= salq_end"):
        ControlSchedule(5, 3)
    with pytest.raises(CustomizeError, match="unknown UNet part"):
        ControlSchedule(1, 2, salq_parts=("decoder",))


def test_layers_in_unet_order_and_parts():
    names = self_attention_layers(cond_unet())
    parts = [n.split(".")[0] for n in names]
    assert parts == sorted(parts, key=["down_blocks", "mid_block", "up_blocks"].index)
    assert {"down_blocks", "mid_block", "up_blocks"} == set(parts)


def test_controller_mode_follows_step():
    import torch

    c = Controller(ControlSchedule(1, 3), sample_hw=(4, 4))
    assert c.mode("up") is Mode.PLAIN  # no masks yet: nothing to control
    c.set_masks(torch.ones(4, 4, dtype=torch.bool), torch.ones(4, 4, dtype=torch.bool))
    modes = []
    for step in range(4):
        c.step = step
        modes.append((c.mode("down"), c.mode("up")))
    assert modes == [
        (Mode.SAGI, Mode.SAGI),
        (Mode.PLAIN, Mode.SALQ),
        (Mode.PLAIN, Mode.SALQ),
        (Mode.PLAIN, Mode.PLAIN),
    ]
    assert MCASelfAttnProcessor(c, "down", None).part == "down"


def test_reversed_order_swaps_the_phases_and_keeps_their_lengths():
    s = ControlSchedule(sagi_end=2, salq_end=5, sagi_parts=PARTS, salq_parts=("up",))
    r = s.reversed()
    assert r.salq_first and r.reversed() == s
    # SALQ (3 steps, decoder only) first, then SAGI (2 steps, all parts), nothing from step 5 on
    assert [r.mode(i, "up") for i in range(6)] == [Mode.SALQ] * 3 + [Mode.SAGI] * 2 + [Mode.PLAIN]
    assert [r.mode(i, "down") for i in range(6)] == [Mode.PLAIN] * 3 + [Mode.SAGI] * 2 + [Mode.PLAIN]
    assert [r.controls(i) for i in range(6)] == [True] * 5 + [False]


def test_empty_parts_switch_a_phase_off():
    no_sagi = ControlSchedule(2, 4, sagi_parts=(), salq_parts=PARTS)
    assert [no_sagi.mode(i, "mid") for i in range(5)] == [Mode.PLAIN] * 2 + [Mode.SALQ] * 2 + [Mode.PLAIN]
    no_salq = ControlSchedule(2, 4, sagi_parts=PARTS, salq_parts=())
    assert [no_salq.controls(i) for i in range(5)] == [True, True, False, False, False]
