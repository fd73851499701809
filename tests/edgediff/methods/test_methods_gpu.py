"""The quantization methods on a CUDA GPU agree with their CPU run (excluded by default: -m gpu).

Two checks per method on the tiny UNet, from the same FP weights and seeds, TF32 off:
* before fine-tuning (copy, quantize, calibrate, split search, OOLRI): the searched bit vectors,
  residual channels and integer state are identical, the float state (scales, δ, α, LoRA ΔW)
  agrees up to one step of the range-search grid, and the unquantized forward path to float noise;
* the whole method: every parameter and buffer of the CUDA model lives on the GPU, the searched
  layout is identical, and its quantized output is as close to the FP output as the CPU model's.
  Quantized outputs are not compared with each other: rounding flips single low-bit codes, the
  flips compound through the layers and through the fine-tuning gradients (measured on an H100:
  4-22 % relative L2 between the two quantized outputs of this random tiny UNet).
On a CUDA machine: ``python -m pytest -m gpu tests/edgediff/methods/test_methods_gpu.py``.
"""

from __future__ import annotations

import copy

import pytest
import torch

from edgediff.methods.efficientdm import run_efficientdm
from edgediff.methods.mpqdm import MPQDMConfig, mpqdm_recipe, prepare, run_mpqdm
from edgediff.methods.mpqdmv2 import MPQDMv2Config, apply_oolri, mpqdmv2_recipe, run_mpqdmv2
from edgediff.quant import quant_disabled, quant_layers

from .tiny import BASE, SCHED, tiny_unet

pytestmark = pytest.mark.gpu

V2 = MPQDMv2Config(base=BASE)
V2_SEARCHED = MPQDMv2Config(base=BASE, omq=True, residual_balance=True)
RUNS = {
    "efficientdm": lambda fp: run_efficientdm(fp, SCHED, "W4A8", cfg=BASE, progress=False),
    "mpqdm-omq-trd": lambda fp: run_mpqdm(fp, SCHED, "W3A4", cfg=MPQDMConfig(base=BASE), progress=False),
    "mpqdm-random": lambda fp: run_mpqdm(
        fp, SCHED, "W3A4", cfg=MPQDMConfig(base=BASE, selection="random", trd=False), progress=False
    ),
    "mpqdmv2-full": lambda fp: run_mpqdmv2(fp, SCHED, "W2A4", cfg=V2, progress=False),
    "mpqdmv2-searched-balanced": lambda fp: run_mpqdmv2(fp, SCHED, "W3A4", cfg=V2_SEARCHED, progress=False),
}


def _prepare_v2(fp, bits: str, cfg: MPQDMv2Config):
    model, *_ = prepare(
        fp,
        SCHED,
        bits,
        mpqdmv2_recipe(bits, fp, cfg),
        cfg,
        salient="residual",
        balance=cfg.residual_balance,
        progress=False,
    )
    apply_oolri(model)
    return model


def _prepare_mpqdm(fp):
    cfg = MPQDMConfig(base=BASE)
    return prepare(fp, SCHED, "W3A4", mpqdm_recipe("W3A4", fp, cfg), cfg, progress=False)[0]


PREPARES = {
    "mpqdm-omq": _prepare_mpqdm,
    "mpqdmv2-fixed-fraction": lambda fp: _prepare_v2(fp, "W2A4", V2),
    "mpqdmv2-searched-balanced": lambda fp: _prepare_v2(fp, "W3A4", V2_SEARCHED),
}


@pytest.fixture(scope="module", autouse=True)
def cuda_fp32():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def _both(build, fp):
    """`build` run on a CPU copy and on a CUDA copy of `fp`, the global RNG seeded alike
    (LoRA init draws from it before the methods seed themselves)."""
    torch.manual_seed(0)
    cpu_model = build(copy.deepcopy(fp))
    torch.manual_seed(0)
    gpu_model = build(copy.deepcopy(fp).cuda())
    return cpu_model, gpu_model


def _layout(model) -> dict[str, tuple[list[int], list[bool]]]:
    out = {}
    for name, layer in quant_layers(model).items():
        mask = layer.residual.mask.tolist() if layer.residual is not None else []
        out[name] = (layer.weight_quant.bits.tolist(), mask)
    return out


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().cpu(), b.detach().cpu()
    return float((a - b).norm() / (b.norm() + 1e-12))


def _state_gaps(cpu_model, gpu_model) -> tuple[float, float]:
    """Largest relative L2 gap over float state (LoRA compared as ΔW: SVD factor signs are free)
    and largest fraction of differing entries over integer state."""
    cpu, gpu = cpu_model.state_dict(), gpu_model.state_dict()
    assert cpu.keys() == gpu.keys()
    float_gap = int_gap = 0.0
    for key, c in cpu.items():
        if ".lora." in key:
            continue
        if c.is_floating_point():
            float_gap = max(float_gap, _rel(gpu[key], c))
        elif c.numel():
            int_gap = max(int_gap, float((gpu[key].cpu() != c).float().mean()))
    layers_c, layers_g = quant_layers(cpu_model), quant_layers(gpu_model)
    for name, layer in layers_c.items():
        if layer.lora is not None:
            float_gap = max(float_gap, _rel(layers_g[name].lora.delta(), layer.lora.delta()))
    return float_gap, int_gap


def _inputs():
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    return x, torch.tensor([10, 500])


@pytest.mark.parametrize("name", sorted(PREPARES))
def test_calibration_search_and_oolri_on_cuda_match_cpu(name):
    fp = tiny_unet()
    cpu_model, gpu_model = _both(PREPARES[name], fp)
    assert _layout(gpu_model) == _layout(cpu_model)
    float_gap, int_gap = _state_gaps(cpu_model, gpu_model)
    x, t = _inputs()
    with torch.no_grad(), quant_disabled(cpu_model), quant_disabled(gpu_model):
        path_gap = _rel(gpu_model(x.cuda(), t.cuda()).sample, cpu_model(x, t).sample)
    print(f"{name}: float state gap {float_gap:.1e}, int state gap {int_gap:.1e}, FP path gap {path_gap:.1e}")
    # A near tie in the Lp range search (ratios 1 - 0.01 i) can pick the neighbouring ratio on
    # one device: that scale moves by 1/0.99, a 1.01e-2 gap (measured on an H100, the integer
    # state identical and the FP path within 6e-6). Anything beyond one grid step fails.
    assert float_gap < 1.5e-2 and int_gap < 1e-2 and path_gap < 1e-4


@pytest.mark.parametrize("method", sorted(RUNS))
def test_method_on_cuda_is_placed_and_as_good_as_on_cpu(method):
    fp = tiny_unet()
    (cpu_model, _, _), (gpu_model, _, _) = _both(RUNS[method], fp)
    assert all(p.device.type == "cuda" for p in gpu_model.parameters())
    assert all(b.device.type == "cuda" for b in gpu_model.buffers())
    assert _layout(gpu_model) == _layout(cpu_model)
    x, t = _inputs()
    with torch.no_grad():
        target = fp(x, t).sample
        cpu_err = _rel(cpu_model(x, t).sample, target)
        gpu_err = _rel(gpu_model(x.cuda(), t.cuda()).sample, target)
    print(f"{method}: relative error vs FP, CPU {cpu_err:.3f}, CUDA {gpu_err:.3f}")
    assert torch.isfinite(torch.tensor(gpu_err)) and gpu_err < 1.5 * cpu_err + 0.02
