"""MPQ-DMv2 checks (docs/methods.md 2.1, 2.3): FZ-RMQ residual, OOLRI SVD init, MTRD queue loss."""

import pytest
import torch
from torch import nn

from edgediff.errors import EdgediffError
from edgediff.methods.mpqdmv2 import MPQDMv2Config, run_mpqdmv2, v2_param_groups
from edgediff.methods.mtrd import MTRDLoss
from edgediff.methods.oolri import oolri_init, svd_factors
from edgediff.quant import (
    LayerQuant,
    LoRASpec,
    QuantConv2d,
    QuantLinear,
    ResidualSpec,
    quant_layers,
)
from edgediff.quant.branches import lora_delta

from .tiny import BASE, SCHED, assert_round_trip_bit_exact, tiny_unet


def _layer(kind: str, lq: LayerQuant, seed: int = 0):
    torch.manual_seed(seed)
    if kind == "conv":
        return QuantConv2d.from_float(nn.Conv2d(16, 24, 3, padding=1), lq)
    return QuantLinear.from_float(nn.Linear(32, 40), lq)


def _input(kind: str) -> torch.Tensor:
    torch.manual_seed(7)
    return torch.randn(8, 16, 8, 8) if kind == "conv" else torch.randn(64, 32)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_binary_residual_never_increases_channel_error(bits):
    layer = _layer("conv", LayerQuant(w_bits=bits, a_bits=None, residual=ResidualSpec(fraction=1.0)))
    layer.init_weight_range("lp")
    layer.init_residual()
    wt = layer.effective_weight().detach()
    plain = (wt - layer.weight_quant.quantize(wt)).pow(2).reshape(24, -1).sum(1)
    with_res = (wt - layer.quantized_weight().detach()).pow(2).reshape(24, -1).sum(1)
    assert bool((with_res <= plain + 1e-9).all()) and bool((with_res < plain).any())


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_svd_factors_are_the_best_rank_r_approximation_per_tap(kind):
    torch.manual_seed(0)
    err = torch.randn(24, 16, 3, 3) if kind == "conv" else torch.randn(40, 32)
    a, b = svd_factors(err, 4)
    approx = lora_delta(a, b)
    mats = err if kind == "linear" else err[:, :, 1, 2]
    got = approx if kind == "linear" else approx[:, :, 1, 2]
    s = torch.linalg.svdvals(mats)
    torch.testing.assert_close((mats - got).pow(2).sum(), s[4:].pow(2).sum(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["conv", "linear"])
@pytest.mark.parametrize("iters", [1, 3])
def test_svd_init_reduces_initial_output_error_vs_zero_init(kind, iters):
    lq = LayerQuant(
        w_bits=2, a_bits=None, lora=LoRASpec(rank=4, mode="additive"), residual=ResidualSpec(0.25)
    )
    x = _input(kind)
    ref_layer = _layer(kind, lq)
    ref_layer.set_quant_enabled(weights=False)
    with torch.no_grad():
        y_fp = ref_layer(x)

    def output_error(layer) -> float:
        with torch.no_grad():
            return float((layer(x) - y_fp).pow(2).mean())

    zero = _layer(kind, lq)
    zero.init_weight_range("lp")
    zero.init_residual()
    torch.nn.init.zeros_(zero.lora.B)
    svd = _layer(kind, lq)
    svd.init_weight_range("lp")
    svd.init_residual()
    report = oolri_init(svd, iters)
    assert report["error_after"] < report["error_before"]
    assert output_error(svd) < output_error(zero)


def test_oolri_refuses_a_merged_lora():
    layer = _layer("linear", LayerQuant(w_bits=2, a_bits=None, lora=LoRASpec(4, "merged")))
    with pytest.raises(EdgediffError, match="additive"):
        oolri_init(layer)
    with pytest.raises(EdgediffError, match="additive"):
        MPQDMv2Config(lora_init="svd", lora_mode="merged")


def test_mtrd_zero_when_student_equals_teacher_and_gradient_otherwise():
    torch.manual_seed(0)
    teacher = torch.randn(2, 8, 4, 4)
    loss = MTRDLoss(8, queue_size=64, enqueue=16, anchors=32, query=20)
    for t in (900, 700):  # fill part of the queue with teacher pixels first
        loss(teacher, teacher.clone(), t)
    same = loss(teacher, teacher.clone().requires_grad_(True), 500)
    assert abs(float(same.detach())) < 1e-7
    student = (teacher + 0.5 * torch.randn_like(teacher)).requires_grad_(True)
    diff = loss(teacher, student, 300)
    assert float(diff.detach()) > 0
    diff.backward()
    assert student.grad is not None and float(student.grad.abs().sum()) > 0


@pytest.mark.parametrize("time_mode", ["none", "window", "weight"])
def test_mtrd_queue_wraps_and_keeps_timesteps(time_mode):
    loss = MTRDLoss(4, queue_size=10, enqueue=4, anchors=6, query=8, time_mode=time_mode, time_window=50)
    feat = torch.randn(1, 4, 2, 2)
    for i, t in enumerate((900, 800, 700)):  # 12 pushes into 10 rows: wraps once
        out = loss(feat, feat + 0.1, t)
        assert torch.isfinite(out)
        assert int(loss.queue.filled) == min(10, 4 * (i + 1))
    assert int(loss.queue.ptr) == 2
    assert loss.queue.timesteps.tolist() == [700, 700, 900, 900] + [800] * 4 + [700, 700]


def test_residual_alpha_gets_a_gradient_and_changes_during_fine_tuning():
    fp = tiny_unet()
    seen: dict[int, dict[str, torch.Tensor]] = {}
    grads: dict[str, torch.Tensor] = {}

    def probe(update, model):
        alphas = {n: p for n, p in model.named_parameters() if n.endswith("residual.alpha")}
        seen[update] = {n: p.detach().clone() for n, p in alphas.items()}
        if update == 1:  # the gradient of update 0 is still on the parameters
            grads.update({n: p.grad.detach().clone() for n, p in alphas.items() if p.grad is not None})

    cfg = MPQDMv2Config(base=BASE, mtrd=False, trd=False)
    model, _, _ = run_mpqdmv2(fp, SCHED, "W2A4", cfg=cfg, progress=False, on_step=probe)
    groups = {g["name"]: g for g in v2_param_groups(model, cfg)}
    assert "alpha" in groups and all(p.requires_grad for p in groups["alpha"]["params"])
    first, last = seen[0], seen[BASE.updates]
    masks = {n: m for n, m in model.state_dict().items() if n.endswith("residual.mask")}
    changed = 0
    for name, before in first.items():
        mask = masks[name.replace("alpha", "mask")]
        assert torch.equal(last[name][~mask], before[~mask])  # unused channels stay at 0
        assert float(grads[name][mask].abs().sum()) > 0, name
        changed += int(not torch.equal(last[name][mask], before[mask]))
    assert changed == len(first) > 0


@pytest.mark.parametrize(
    "opts",
    [
        dict(),  # FZ-RMQ (fixed 10 %) + OOLRI + TRD + MTRD
        dict(omq=True, omq_range="fixed", residual_balance=True, mtrd_time="window"),
        dict(residual=False, omq=True, lora_init="zero", lora_mode="merged", mtrd=False),
    ],
)
def test_mpqdmv2_save_load_round_trip_is_bit_exact(tmp_path, opts):
    fp = tiny_unet()
    cfg = MPQDMv2Config(base=BASE, **opts)
    model, recipe, record = run_mpqdmv2(fp, SCHED, "W2A4", cfg=cfg, progress=False)
    layers = quant_layers(model)
    if cfg.residual:
        assert record["residual_channels"] > 0
        assert any(layer.residual is not None and layer.residual.mask.any() for layer in layers.values())
    if cfg.lora_init == "svd":
        assert record["oolri"]["weight_error_after"] < record["oolri"]["weight_error_before"]
        assert "mtrd_mean" in record
    if cfg.residual and cfg.residual_balance:
        for name, s in record["split"].items():
            bits = layers[name].weight_quant.bits
            n_res = int(layers[name].residual.mask.sum()) if layers[name].residual is not None else 0
            assert n_res == s["k"] and int((bits == 1).sum()) == s["k"]
    assert_round_trip_bit_exact(model, recipe, fp, tmp_path / "q", "mpqdmv2", torch.tensor([50, 950]))
