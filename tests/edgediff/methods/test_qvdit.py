"""Q-VDiT (docs/methods.md 3): TMD formula and frame split, recipe, fine-tuning on a tiny Latte, CLI."""

import json
import math

import pytest
import torch

from edgediff.errors import EdgediffError
from edgediff.methods.efficientdm import EfficientDMConfig, finetune
from edgediff.methods.qvdit import (
    BlockTMD,
    QVDiTConfig,
    TMDLoss,
    frame_features,
    param_groups,
    prepare,
    qvdit_recipe,
    run_qvdit,
    temporal_kl,
)
from edgediff.models.call import denoise
from edgediff.models.conditioning import Conditioning
from edgediff.quant import quant_disabled, quant_layers, quantize_
from edgediff_export.cli import main

from ..models.tiny import DDPM_SCHEDULER, cond_file, dit, latte, save_pipeline_folder

SMALL = EfficientDMConfig(num_steps=4, trajectories=2, batch_size=2, calib_samples=2, seed=0)


# ---------------------------------------------------------------- TMD


def test_frame_split_moves_frames_first():
    b, c, f, h, w = 2, 3, 4, 2, 2
    s = torch.arange(f, dtype=torch.float32).reshape(1, 1, f, 1, 1).expand(b, c, f, h, w).clone()
    blocks = frame_features(s)
    assert blocks.shape == (b, f, c * h * w)
    # every frame block holds only that frame's values (a bare reshape mixes frames)
    assert torch.equal(blocks, torch.arange(f, dtype=torch.float32).reshape(1, f, 1).expand(b, f, c * h * w))
    assert not torch.equal(frame_features(s, released_split=True), blocks)


def test_temporal_kl_is_teacher_first_and_hand_computed():
    # FP frames orthogonal: T = I, D_i = softmax((1, 0)); quantized frames equal: D_i = (1/2, 1/2)
    fp = torch.zeros(1, 2, 2, 1, 1)
    fp[0, 0, 0], fp[0, 1, 1] = 1.0, 1.0
    q = torch.zeros(1, 2, 2, 1, 1)
    q[0, 0, :] = 1.0
    p = math.e / (math.e + 1.0)
    kl_pq = p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)  # KL(D^FP || D^Q), one frame
    kl_qp = 0.5 * math.log(0.5 / p) + 0.5 * math.log(0.5 / (1 - p))
    assert abs(kl_pq - kl_qp) > 1e-3  # the two directions differ on this case
    got = temporal_kl(fp, q)
    assert float(got) == pytest.approx(2 * kl_pq, rel=1e-5)  # summed over the 2 frames
    loss = TMDLoss(weight=100.0)(q, fp)
    mse = float((fp - q).pow(2).mean())
    assert float(loss) == pytest.approx(mse + 100 * 2 * kl_pq, rel=1e-5)
    assert float(TMDLoss(weight=0.0)(q, fp)) == pytest.approx(mse)


def test_temporal_kl_is_zero_for_equal_outputs_and_trains_only_the_student():
    s = torch.randn(2, 3, 4, 2, 2)
    assert float(temporal_kl(s, s.clone())) == pytest.approx(0.0, abs=1e-6)
    fp = s.clone().requires_grad_(True)
    q = (s + 0.5 * torch.randn_like(s)).requires_grad_(True)
    temporal_kl(fp, q).backward()
    assert fp.grad is None and q.grad.abs().sum() > 0


# ---------------------------------------------------------------- recipe


def test_recipe_layouts_and_vidit_mlp8():
    model = latte()
    recipe = qvdit_recipe("W4A6", model, QVDiTConfig(vidit_mlp8=True))
    quantize_(model, recipe)
    layers = quant_layers(model)
    assert "proj_out" not in layers and "pos_embed.proj" not in layers  # FP edges
    spatial = layers["transformer_blocks.0.attn1.to_q"]
    temporal = layers["temporal_transformer_blocks.1.attn1.to_v"]
    assert (spatial.tqe.layout, spatial.tqe.frames) == ("spatial", 8)
    assert (temporal.tqe.layout, temporal.tqe.tokens) == ("temporal", 64)
    assert spatial.config.w_range == "clip_grid" and spatial.act_quant.mode == "dynamic_per_token"
    assert spatial.lora is not None and spatial.lora.rank == 32
    assert int(spatial.weight_quant.bits[0]) == 4 and spatial.act_quant.bits == 6
    for name in ("transformer_blocks.0.ff.net.2", "temporal_transformer_blocks.0.ff.net.0.proj"):
        assert int(layers[name].weight_quant.bits[0]) == 8 and layers[name].act_quant.bits == 8
    w6 = qvdit_recipe("W6A6", latte(), QVDiTConfig(vidit_mlp8=True))
    assert w6.match("transformer_blocks.0.ff.net.2")[1].w_bits == 6  # the rule needs <= 4-bit weights
    off = qvdit_recipe("W4A6", latte(), QVDiTConfig(tqe=False, lora=False))
    q = off.match("transformer_blocks.0.attn1.to_q")[1]
    assert q.tqe is None and q.lora is None


def test_non_video_models_are_refused():
    with pytest.raises(EdgediffError, match="video transformers"):
        qvdit_recipe("W4A6", dit())


# ---------------------------------------------------------------- fine-tuning


def _cond(n=2):
    return Conditioning(
        {"encoder_hidden_states": torch.randn(n, 3, 16, generator=torch.Generator().manual_seed(1))}
    )


def test_tiny_latte_finetune_reduces_the_loss_and_stays_finite():
    torch.manual_seed(0)
    fp = latte()
    cfg = QVDiTConfig(base=EfficientDMConfig(num_steps=4, trajectories=6, batch_size=2, calib_samples=2))
    cond = _cond()
    model = prepare(fp, DDPM_SCHEDULER, "W4A6", qvdit_recipe("W4A6", fp, cfg), cfg, False, cond)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 1, 8, 16, 16, generator=gen)
    t = torch.tensor([900, 300])
    loss_fn = TMDLoss(cfg.tmd_weight)
    with torch.no_grad():
        target = denoise(fp, x, t, cond.values)
        before = float(loss_fn(denoise(model, x, t, cond.values), target))
    groups = param_groups(model, cfg)
    assert {g["name"] for g in groups} == {"lora", "tqe", "w_scale"}
    record = finetune(
        model,
        fp,
        DDPM_SCHEDULER,
        cfg.base,
        progress=False,
        groups=groups,
        conditioning=cond,
        task_loss=loss_fn,
        schedule=cfg.schedule,
    )
    with torch.no_grad():
        out = denoise(model, x, t, cond.values)
    after = float(loss_fn(out, target))
    assert torch.isfinite(out).all() and math.isfinite(record["loss_last_50"])
    assert after < before, (before, after)
    betas = [layer.tqe.beta for layer in quant_layers(model).values()]
    assert any(b.abs().sum() > 0 for b in betas)  # the branches trained away from zero


def test_block_tmd_sees_both_models_and_trains_the_quantized_one():
    fp = latte()
    cfg = QVDiTConfig(base=SMALL)
    cond = _cond()
    model = prepare(fp, DDPM_SCHEDULER, "W4A6", qvdit_recipe("W4A6", fp, cfg), cfg, False, cond)
    terms = BlockTMD(model, fp, weight=100.0)
    try:
        x, t = torch.randn(2, 1, 8, 16, 16), torch.tensor([900, 300])
        with torch.no_grad():
            denoise(fp, x, t, cond.values)
        denoise(model, x, t, cond.values)
        assert len(terms.fp_taps) == 2 and terms.fp_taps[0].value.shape == (2 * 64, 8, 16)
        loss = terms(0, x, t)
        assert float(loss.detach()) > 0 and torch.isfinite(loss.detach())
        loss.backward()
        lora_b = quant_layers(model)["transformer_blocks.0.attn1.to_q"].lora.B
        assert lora_b.grad is not None and lora_b.grad.abs().sum() > 0
        # quantizers off (LoRA B = 0, TQE beta = 0): the model is the FP model, the term vanishes
        with torch.no_grad(), quant_disabled(model):
            denoise(model, x, t, cond.values)
            assert float(terms(0, x, t)) == pytest.approx(0.0, abs=1e-5)
    finally:
        terms.close()


def test_run_qvdit_ablation_switches_reach_the_model():
    fp = latte()
    cfg = QVDiTConfig(base=SMALL, tqe_m=False, tmd=False, lora=False, tmd_blocks=True)
    model, recipe, record = run_qvdit(
        fp, DDPM_SCHEDULER, "W4A6", cfg=cfg, progress=False, conditioning=_cond()
    )
    layer = quant_layers(model)["temporal_transformer_blocks.0.attn1.to_q"]
    assert layer.lora is None and layer.tqe is not None and layer.tqe.use_m is False
    assert record["method_config"]["tmd"] is False and record["updates"] == 8
    assert record["tmd_blocks_mean"] >= 0 and math.isfinite(record["tmd_blocks_mean"])
    assert math.isfinite(record["loss_last_50"])


# ---------------------------------------------------------------- CLI


def test_cli_quantize_qvdit_on_a_latte_folder(tmp_path, capsys):
    from edgediff.models.loading import load_model

    folder = save_pipeline_folder(latte(), tmp_path / "latte")
    cond = cond_file(
        tmp_path / "c.safetensors",
        {"encoder_hidden_states": torch.randn(1, 1, 16), "null.encoder_hidden_states": torch.zeros(1, 1, 16)},
    )
    out = tmp_path / "q"
    args = ["quantize", "--model", str(folder), "--method", "qvdit", "--bits", "W4A6", "--out", str(out)]
    small = ["--calib-samples", "2", "--steps", "2", "--updates", "4", "--batch", "2", "--device", "cpu"]
    rc = main([*args, *small, "--cond", str(cond), "--no-tqe-m", "--vidit-mlp8"])
    assert rc == 0, capsys.readouterr().err
    meta = json.loads((out / "edgediff_meta.json").read_text())
    assert meta["method"] == "qvdit" and meta["bits"] == "W4A6"
    assert meta["training"]["method_config"]["tqe_m"] is False
    assert meta["training"]["method_config"]["vidit_mlp8"] is True
    q = load_model(out)
    layers = quant_layers(q.unet)
    assert layers and all(layer.tqe is not None and not layer.tqe.use_m for layer in layers.values())
    x = torch.randn(1, 1, 8, 16, 16)
    y = denoise(q.unet, x, torch.tensor([500]), {"encoder_hidden_states": torch.randn(1, 1, 16)})
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_cli_qvdit_switch_on_another_method_is_one_line(tmp_path, capsys):
    args = ["quantize", "--model", "reference", "--bits", "W4A8", "--out", str(tmp_path / "q")]
    assert main([*args, "--method", "efficientdm", "--no-tmd"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "qvdit only" in err[0]
    assert main([*args, "--method", "qvdit"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "video transformers" in err[0]
