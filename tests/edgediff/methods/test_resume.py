"""Interrupted fine-tuning resumes from its checkpoint and ends where an uninterrupted run ends."""

import json
from dataclasses import replace

import pytest
import torch

from edgediff.errors import EdgediffError
from edgediff.methods.mpqdmv2 import MPQDMv2Config, run_mpqdmv2
from edgediff.train.loop import Checkpointing
from tests.edgediff.methods.tiny import BASE, SCHED, tiny_unet

# 3 trajectories of 3 steps = 9 updates; TRD window 2 and the MTRD queue carry state across updates
CFG = MPQDMv2Config(base=replace(BASE, trajectories=3), mtrd_queue=64, mtrd_anchors=16, mtrd_query=16)


class Interrupt:
    """`on_step` that raises KeyboardInterrupt before update `at` (as Ctrl-C would)."""

    def __init__(self, at: int):
        self.at = at

    def __call__(self, update: int, model) -> None:
        if update == self.at:
            raise KeyboardInterrupt


def _run(cfg=CFG, checkpoints=Checkpointing(), on_step=None):
    fp = tiny_unet()
    return run_mpqdmv2(fp, SCHED, "W4A8", cfg=cfg, progress=False, on_step=on_step, checkpoints=checkpoints)


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path):
    straight, _, rec_straight = _run()
    folder = tmp_path / "ckpt"
    every2 = Checkpointing(folder=folder, every=2)
    with pytest.raises(KeyboardInterrupt):
        _run(checkpoints=every2, on_step=Interrupt(5))  # last checkpoint: after update 4 (mid-trajectory)
    state = torch.load(folder / "checkpoint.pt", weights_only=False)
    assert state["step"] == 4 and state["extra"]["extra_loss"]["trd"]["last_step"] == 0
    resumed, _, rec = _run(checkpoints=replace(every2, resume=True))
    assert rec["resumed_at_update"] == 4 and rec_straight["resumed_at_update"] == 0
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)
    assert rec["loss_last_50"] == rec_straight["loss_last_50"]
    assert rec["mtrd_mean"] == rec_straight["mtrd_mean"] and rec["trd_mean"] == rec_straight["trd_mean"]


def test_resuming_without_a_checkpoint_starts_fresh_and_a_foreign_checkpoint_is_refused(tmp_path):
    folder = tmp_path / "ckpt"
    _, _, rec = _run(checkpoints=Checkpointing(folder=folder, every=3, resume=True))
    assert rec["resumed_at_update"] == 0 and (folder / "checkpoint.pt").is_file()
    other = replace(CFG, mtrd_weight=0.5)
    with pytest.raises(EdgediffError, match="another run"):
        _run(cfg=other, checkpoints=Checkpointing(folder=folder, every=3, resume=True))
    with pytest.raises(EdgediffError, match="another run"):  # same config, other bits
        fp = tiny_unet()
        run_mpqdmv2(fp, SCHED, "W3A8", cfg=CFG, progress=False, checkpoints=Checkpointing(folder, 3, True))


@pytest.mark.slow  # two quantize runs plus an interrupted one (~40 s on 2 busy cores)
def test_quantize_resume_continues_an_interrupted_run_and_saves_the_same_folder(tmp_path, monkeypatch):
    """`edgediff quantize --resume`: checkpoint in OUT.ckpt/, removed once OUT is saved."""
    from safetensors.torch import load_file

    from edgediff.methods.common import TrajectoryStream
    from edgediff.reference.model import build_scheduler, save_pipeline
    from edgediff_export.cli import main

    model = tmp_path / "fp"
    save_pipeline(tiny_unet(), build_scheduler(), model)
    args = ["quantize", "--model", str(model), "--method", "efficientdm", "--bits", "W4A8"]
    args += ["--steps", "2", "--updates", "10", "--batch", "2", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "straight")]) == 0
    out = tmp_path / "q"
    real_next, calls = TrajectoryStream.next, []

    def interrupted(self):
        calls.append(1)
        if len(calls) == 8:  # inside update 8, after 7 checkpointed updates
            raise KeyboardInterrupt
        return real_next(self)

    monkeypatch.setattr(TrajectoryStream, "next", interrupted)
    assert main([*args, "--out", str(out)]) == 130  # Ctrl-C: "error: interrupted", exit 130
    assert not out.exists() and (tmp_path / "q.ckpt" / "checkpoint.pt").is_file()
    monkeypatch.setattr(TrajectoryStream, "next", real_next)
    assert main([*args, "--out", str(out), "--resume"]) == 0
    assert not (tmp_path / "q.ckpt").exists()
    meta = json.loads((out / "edgediff_meta.json").read_text())
    assert meta["training"]["resumed_at_update"] == 7  # checkpoints every tenth of the 10 updates
    a, b = load_file(tmp_path / "straight" / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
