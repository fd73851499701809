"""Q-VDiT's TQE branch in export (docs/methods.md 3.7): export module parity, ONNX with standard ops."""

import copy

import numpy as np
import pytest
import torch
from diffusers import LatteTransformer3DModel

from edgediff.methods.qvdit import QVDiTConfig, qvdit_recipe
from edgediff.quant import LayerQuant, QuantLinear, quant_layers, quantize_
from edgediff.quant.recipe import TQESpec
from edgediff_export.modules import ExportQuantLayer, StepInput


@pytest.mark.parametrize(
    "spec, shape",
    [
        (TQESpec(frames=3), (2 * 3, 4, 12)),
        (TQESpec(frames=3, layout="temporal", tokens=4), (2 * 4, 3, 12)),
        (TQESpec(frames=3, m=False), (2 * 3, 4, 12)),
    ],
)
def test_export_module_computes_the_tqe_branch(spec, shape):
    torch.manual_seed(0)
    q = LayerQuant(w_bits=4, a_bits=6, a_mode="dynamic_per_token", w_range="clip_grid", tqe=spec)
    layer = QuantLinear(torch.randn(10, 12), torch.randn(10), q)
    layer.init_weight_range()
    with torch.no_grad():
        layer.tqe.beta.normal_()
    exported = ExportQuantLayer(layer.fold(), "ort", StepInput()).eval()
    assert exported.tqe_alpha.shape == (12, 1) and exported.tqe_beta.shape == (10, 1)
    x = torch.randn(*shape)
    with torch.no_grad():
        ref, out = layer(x), exported(x)
        plain = ref - layer.tqe(x, layer.quantize_input(x))
    assert (ref - plain).abs().max() > 0.1  # the branch matters on this input
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def _latte_1layer() -> LatteTransformer3DModel:
    torch.manual_seed(0)
    return LatteTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=4,
        in_channels=1,
        out_channels=1,
        num_layers=1,
        sample_size=8,
        patch_size=2,
        norm_type="ada_norm_single",
        caption_channels=8,
        cross_attention_dim=8,
        video_length=4,
    ).eval()


@pytest.mark.slow
def test_tiny_latte_with_tqe_exports_with_standard_ops_and_matches_pytorch():
    import onnxruntime as ort

    from edgediff_export.to_onnx import export_unet

    q = _latte_1layer()
    quantize_(q, qvdit_recipe("W8A8", q, QVDiTConfig()))
    g = torch.Generator().manual_seed(3)
    for layer in quant_layers(q).values():
        layer.init_weight_range()
        with torch.no_grad():
            layer.tqe.beta.copy_(0.2 * torch.randn(layer.tqe.beta.shape, generator=g))
    plain = copy.deepcopy(q)
    for layer in quant_layers(plain).values():
        with torch.no_grad():
            layer.tqe.beta.zero_()
    ehs = torch.randn(2, 1, 8, generator=g)
    result = export_unet(q, (1, 4, 8, 8), extra_inputs={"encoder_hidden_states": ehs})
    domains = {n.domain for n in result.model.graph.node}
    assert domains <= {"", "ai.onnx"}, domains  # standard ops only
    ops = {n.op_type for n in result.model.graph.node}
    assert {"Softmax", "ReduceSum", "Abs", "Sqrt"} <= ops  # M is computed in the graph
    so = ort.SessionOptions()
    so.log_severity_level = 3
    session = ort.InferenceSession(result.model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    for batch in (2, 3):  # dynamic batch: the frame grouping follows the batch
        x = torch.randn(batch, 1, 4, 8, 8, generator=g)
        t = torch.randint(0, 1000, (batch,), generator=g)
        e = torch.randn(batch, 1, 8, generator=g)
        with torch.no_grad():
            ref = q(x, t, encoder_hidden_states=e).sample.numpy()
            ref_plain = plain(x, t, encoder_hidden_states=e).sample.numpy()
        feeds = {"sample": x.numpy(), "timestep": t.numpy(), "encoder_hidden_states": e.numpy()}
        out = session.run(None, feeds)[0]
        err = np.abs(out - ref).max()
        branch = np.abs(ref - ref_plain).max()
        assert branch > 0 and err < 0.05 * branch, (err, branch)
        assert err / np.abs(ref).max() < 0.01
