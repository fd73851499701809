"""Worker of the multi-process tests: one fine-tuning or PD stage on a tiny model, result to a file.

Run as `python -m tests.edgediff.train.mp_worker TASK OUT` (one process) or under
`accelerate launch --num_processes 2 --cpu -m tests.edgediff.train.mp_worker TASK OUT`.
The main process writes `{"state": state_dict, "record": ...}` to OUT with torch.save.
"""

from __future__ import annotations

import sys
from dataclasses import replace

import torch

# global batch 4 (2 per process under 2 processes), 2 trajectories of 3 steps = 6 updates
GLOBAL_BATCH = 4


def run(task: str) -> tuple[dict, dict]:
    if task == "mpqdm":  # EfficientDM task loss + TRD (target mode) on OMQ-searched W4A8
        from edgediff.methods.mpqdm import MPQDMConfig, run_mpqdm
        from tests.edgediff.methods.tiny import BASE, SCHED, tiny_unet

        cfg = MPQDMConfig(base=replace(BASE, trajectories=2, batch_size=GLOBAL_BATCH))
        model, _, record = run_mpqdm(tiny_unet(), SCHED, "W4A8", cfg=cfg, progress=False)
        return model.state_dict(), record
    if task == "pd":  # one progressive-distillation stage, 4 -> 2 steps
        from edgediff.distill.run import Stage, StageBudget, train_stage
        from edgediff.reference.data import load_digits16
        from edgediff.reference.model import SCHEDULER_CONFIG
        from tests.edgediff.distill.test_run import tiny_unet16

        budget = StageBudget(iterations=6, batch_size=GLOBAL_BATCH, lr=1e-3)
        student, record = train_stage(
            tiny_unet16(), SCHEDULER_CONFIG, Stage("pd", 4, 2), budget, progress=False,
            images=load_digits16()[0][:64],
        )  # fmt: skip
        return student.state_dict(), record
    raise SystemExit(f"unknown task {task!r}: use mpqdm or pd")


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    task, out = argv
    state, record = run(task)
    from edgediff.train.loop import is_main_process

    if is_main_process():
        torch.save({"state": {k: v.cpu() for k, v in state.items()}, "record": record}, out)


if __name__ == "__main__":
    main(sys.argv[1:])
