"""The quantization methods on a CUDA GPU match their CPU run (excluded by default: -m gpu).

Each method runs on the tiny UNet twice from the same FP weights and seed, once on the CPU and
once on CUDA (TF32 off): the searched bit vectors and residual channels must be identical, every
parameter of the CUDA model must live on the GPU, and the outputs of the two models must agree
to within 2 % in norm (float rounding over calibration and a few updates can flip single
quantization codes, so an elementwise tolerance would be wrong).
On a CUDA machine: ``python -m pytest -m gpu tests/edgediff/methods/test_methods_gpu.py``.
"""

from __future__ import annotations

import copy

import pytest
import torch

from edgediff.methods.efficientdm import run_efficientdm
from edgediff.methods.mpqdm import MPQDMConfig, run_mpqdm
from edgediff.methods.mpqdmv2 import MPQDMv2Config, run_mpqdmv2
from edgediff.quant import quant_layers, set_step

from .tiny import BASE, SCHED, tiny_unet

pytestmark = pytest.mark.gpu

RUNS = {
    "efficientdm": lambda fp: run_efficientdm(fp, SCHED, "W4A8", cfg=BASE, progress=False),
    "mpqdm-omq-trd": lambda fp: run_mpqdm(fp, SCHED, "W3A4", cfg=MPQDMConfig(base=BASE), progress=False),
    "mpqdm-random": lambda fp: run_mpqdm(
        fp, SCHED, "W3A4", cfg=MPQDMConfig(base=BASE, selection="random", trd=False), progress=False
    ),
    "mpqdmv2-full": lambda fp: run_mpqdmv2(fp, SCHED, "W2A4", cfg=MPQDMv2Config(base=BASE), progress=False),
    "mpqdmv2-searched-balanced": lambda fp: run_mpqdmv2(
        fp, SCHED, "W3A4", cfg=MPQDMv2Config(base=BASE, omq=True, residual_balance=True), progress=False
    ),
}


@pytest.fixture(scope="module", autouse=True)
def cuda_fp32():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def _layer_state(model) -> dict[str, tuple[list[int], list[bool]]]:
    out = {}
    for name, layer in quant_layers(model).items():
        mask = layer.residual.mask.tolist() if layer.residual is not None else []
        out[name] = (layer.weight_quant.bits.tolist(), mask)
    return out


@pytest.mark.parametrize("method", sorted(RUNS))
def test_method_on_cuda_matches_cpu(method):
    fp = tiny_unet()
    torch.manual_seed(0)  # LoRA init draws from the global RNG before the method seeds itself
    cpu_model, _, _ = RUNS[method](copy.deepcopy(fp))
    torch.manual_seed(0)
    gpu_model, _, _ = RUNS[method](copy.deepcopy(fp).cuda())
    assert all(p.device.type == "cuda" for p in gpu_model.parameters())
    assert all(b.device.type == "cuda" for b in gpu_model.buffers())
    assert _layer_state(gpu_model) == _layer_state(cpu_model)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10, 500])
    with torch.no_grad():
        for step in range(BASE.num_steps):
            set_step(cpu_model, step)
            set_step(gpu_model, step)
            ref = cpu_model(x, t).sample
            got = gpu_model(x.cuda(), t.cuda()).sample.cpu()
            # a rounding flip moves one activation by a 4-bit step: compare in norm, not elementwise
            assert float((got - ref).norm() / ref.norm()) < 2e-2, f"step {step}"
