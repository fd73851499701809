"""Two CPU processes (gloo, launched with torchrun) train to the one-process result on the same global batch.

Tolerances: every process draws the same global batch and trains on its half; DDP averages the
two half-batch gradients, which equals the one-process gradient except for the order of the
float sums (~1e-7 relative). Adam divides by sqrt(v), so on parameters whose gradient is near
zero that noise can move an update by up to the learning rate; the PD stage (no quantizer)
therefore matches to atol 1e-4 after 6 updates at lr 1e-3 (measured ~6e-6) and its final loss
to rtol 1e-5. The fake-quantized MPQ-DM run also rounds activations: a value that differs by
float noise between the batch-2 and batch-4 convolutions can fall on the other side of a
rounding boundary and move one quantization step, so its losses match to rtol 1e-3 (measured
1.7e-4) and its parameters to atol 0.25 x lr x updates = 1.5e-3 (measured 4e-4). Both bounds
are far below what a wrong split gives (a learning-rate schedule stepped once per process, or
processes drawing different batches, change the result by the order of lr x updates).
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(task: str, out: Path, processes: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "yes"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "export"), str(ROOT / "runtime")])
    worker = ["-m", "tests.edgediff.train.mp_worker", task, str(out)]
    if processes == 1:
        cmd = [sys.executable, *worker]
    else:
        port = f"--master_port={_free_port()}"
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", port, *worker]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out, weights_only=False)


def _max_param_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    for k in a:
        if not a[k].is_floating_point():
            assert torch.equal(a[k], b[k]), k  # bit vectors, zero points, masks
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


@pytest.mark.slow  # two launches of two fresh interpreters (~1-2 min on 2 cores)
def test_two_process_pd_stage_equals_one_process(tmp_path):
    one, two = _run("pd", tmp_path / "one.pt", 1), _run("pd", tmp_path / "two.pt", 2)
    assert _max_param_diff(one["state"], two["state"]) < 1e-4
    assert two["record"]["final_loss"] == pytest.approx(one["record"]["final_loss"], rel=1e-5)


@pytest.mark.slow
def test_two_process_mpqdm_finetune_equals_one_process(tmp_path):
    one, two = _run("mpqdm", tmp_path / "one.pt", 1), _run("mpqdm", tmp_path / "two.pt", 2)
    assert one["record"]["processes"] == 1 and two["record"]["processes"] == 2
    updates, lr = one["record"]["updates"], one["record"]["config"]["lora_lr"]
    assert _max_param_diff(one["state"], two["state"]) < 0.25 * lr * updates
    for key in ("loss_first_50", "loss_last_50"):
        assert two["record"][key] == pytest.approx(one["record"][key], rel=1e-3)
