"""The ONNX export driver: FP and quantized UNets, per-step scales, binary residuals, other families."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgediff.quant import set_step
from edgediff_export.errors import ExportError
from edgediff_export.to_onnx import check_opset, export_unet
from tests.edgediff.quant.models import calib_for, cond_unet, dit
from tests.export.helpers import SHAPE, quantized, tiny_unet


def run_onnx(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return session.run(None, {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in feeds.items()})[
        0
    ]


def close_to_fake_quant(
    out: np.ndarray, ref: np.ndarray, max_rel: float = 0.05, mean_rel: float = 0.01
) -> bool:
    """ONNX vs PyTorch fake-quant: equal up to codes flipped by rounding ties, which propagate
    through later layers; a few outputs move by up to a few LSBs, the bulk stays put."""
    err = np.abs(out - ref)
    scale = np.abs(ref).max()
    return bool(err.max() / scale < max_rel and err.mean() / np.abs(ref).mean() < mean_rel)


def inputs(batch: int, shape=SHAPE):
    g = torch.Generator().manual_seed(batch)
    return torch.randn(batch, *shape, generator=g), torch.randint(0, 1000, (batch,), generator=g)


@pytest.fixture(scope="module")
def fp_model():
    return tiny_unet()


def test_fp_export_matches_pytorch_with_dynamic_batch(fp_model):
    result = export_unet(fp_model, SHAPE)
    assert result.input_names == ["sample", "timestep"] and result.step_input is None
    onnx.checker.check_model(result.model, full_check=True)
    for batch in (1, 3):
        x, t = inputs(batch)
        with torch.no_grad():
            ref = fp_model(x, t).sample.numpy()
        out = run_onnx(result.model, {"sample": x, "timestep": t})
        assert np.abs(out - ref).max() < 1e-4


def test_exporter_debug_metadata_is_stripped(fp_model):
    """The graph signature, stack traces and intermediate shapes stay out of the bundle's bytes."""
    model = export_unet(fp_model, SHAPE).model
    assert not [p.key for p in model.graph.metadata_props if p.key.startswith("pkg.torch.")]
    assert not [n.name for n in model.graph.node if n.metadata_props or n.doc_string]
    assert not model.graph.value_info


def test_w8a8_static_export_has_qdq_and_matches_fake_quant(fp_model):
    q = quantized(fp_model, "W8A8")
    result = export_unet(q, SHAPE)
    ops = [n.op_type for n in result.model.graph.node]
    assert ops.count("QuantizeLinear") > 5 and ops.count("DequantizeLinear") > 10
    inits = {i.name: i.data_type for i in result.model.graph.initializer}
    assert onnx.TensorProto.UINT8 in inits.values()  # integer weight codes, not float weights
    x, t = inputs(4)
    with torch.no_grad():
        ref = q(x, t).sample.numpy()
    out = run_onnx(result.model, {"sample": x, "timestep": t})
    rel = np.abs(out - ref).max() / np.abs(ref).max()
    assert rel < 0.02  # only Q/DQ rounding ties flip codes; measured about 0.4 % on the reference UNet


def test_per_step_scales_are_gathered_by_the_step_input(fp_model):
    q = quantized(fp_model, "W4A8", a_mode="per_step", num_steps=4)
    # Make the per-step tables really differ so that the step input matters.
    for name, p in q.named_parameters():
        if name.endswith("act_quant.scale") and p.numel() == 4:
            with torch.no_grad():
                p.mul_(torch.tensor([1.0, 1.5, 2.0, 3.0]))
    result = export_unet(q, SHAPE)
    assert result.step_input == "step" and "step" in result.input_names
    x, t = inputs(2)
    outs = []
    for i in (0, 3):
        set_step(q, i)
        with torch.no_grad():
            ref = q(x, t).sample.numpy()
        out = run_onnx(result.model, {"sample": x, "timestep": t, "step": np.array(i, dtype=np.int64)})
        assert np.abs(out - ref).max() / np.abs(ref).max() < 0.02
        outs.append(out)
    assert np.abs(outs[0] - outs[1]).max() > 1e-3


def test_binary_residual_exports_as_custom_node_and_runs_in_ort(fp_model):
    q = quantized(fp_model, "W2A8", residual=True)
    custom = export_unet(q, SHAPE, residual="custom")
    nodes = [n for n in custom.model.graph.node if n.domain == "edgediff"]
    assert nodes and {n.op_type for n in nodes} <= {"ResidualBinaryConv", "ResidualBinaryLinear"}
    attrs = {a.name: a for a in nodes[0].attribute}
    assert attrs["plugin_namespace"].s == b"edgediff" and attrs["plugin_version"].s == b"1"
    assert {f.name for f in custom.model.functions} >= {n.op_type for n in nodes}
    onnx.checker.check_model(custom.model, full_check=True)
    standard = export_unet(q, SHAPE, residual="standard")
    assert not [n for n in standard.model.graph.node if n.domain == "edgediff"]
    x, t = inputs(3)
    with torch.no_grad():
        ref = q(x, t).sample.numpy()
    a = run_onnx(custom.model, {"sample": x, "timestep": t})
    b = run_onnx(standard.model, {"sample": x, "timestep": t})
    assert np.abs(a - ref).max() / np.abs(ref).max() < 0.02
    assert np.abs(a - b).max() < 1e-4


def test_text_conditioned_unet_exports_with_encoder_hidden_states():
    model = cond_unet()
    calib = calib_for("cond", n=4)
    q = quantized(model, "W8A8", calib=calib)
    ehs = torch.randn(2, 3, 32, generator=torch.Generator().manual_seed(1))
    result = export_unet(q, (4, 8, 8), extra_inputs={"encoder_hidden_states": ehs})
    assert result.input_names == ["sample", "timestep", "encoder_hidden_states"]
    x, t = inputs(2, (4, 8, 8))
    with torch.no_grad():
        ref = q(x, t, encoder_hidden_states=ehs).sample.numpy()
    out = run_onnx(result.model, {"sample": x, "timestep": t, "encoder_hidden_states": ehs})
    # Random weights amplify each tie-flipped code through ~50 quantized layers: per layer the graph
    # matches PyTorch to >120 dB until the first flip (measured), so the bound here is looser.
    assert close_to_fake_quant(out, ref, max_rel=0.1, mean_rel=0.05)


def test_dit_exports_with_class_labels():
    model = dit()
    q = quantized(model, "W8A8", calib=calib_for("dit", n=4))
    labels = torch.tensor([1, 7])
    result = export_unet(q, (4, 8, 8), extra_inputs={"class_labels": labels})
    x, t = inputs(2, (4, 8, 8))
    with torch.no_grad():
        ref = q(x, t, class_labels=labels).sample.numpy()
    out = run_onnx(result.model, {"sample": x, "timestep": t, "class_labels": labels})
    assert close_to_fake_quant(out, ref)


def test_opset_the_installed_onnx_cannot_produce():
    with pytest.raises(ExportError, match="opset 99 cannot be produced"):
        check_opset(99)


def test_ddpm_cifar10_architecture_exports_and_runs():
    from diffusers import UNet2DModel

    from tests.edgediff.quant.models import CIFAR10_CONFIG
    from tests.export.helpers import random_calibration

    torch.manual_seed(0)
    model = UNet2DModel(**CIFAR10_CONFIG).eval()
    assert sum(p.numel() for p in model.parameters()) > 35e6
    q = quantized(model, "W8A8", calib=random_calibration(n=2, num_steps=1, shape=(3, 32, 32)))
    result = export_unet(q, (3, 32, 32), batch=1)
    x, t = inputs(1, (3, 32, 32))
    with torch.no_grad():
        ref = q(x, t).sample.numpy()
    out = run_onnx(result.model, {"sample": x, "timestep": t})
    assert out.shape == ref.shape and np.isfinite(out).all()
    assert close_to_fake_quant(out, ref, max_rel=0.1, mean_rel=0.05)


def test_low_rank_branch_exports_as_fp_matmuls(fp_model):
    import copy

    from edgediff.quant import LowRankSpec, calibrate, quantize_
    from edgediff.quant.recipe import LayerQuant, Recipe
    from tests.export.helpers import random_calibration

    q = copy.deepcopy(fp_model)
    rule = LayerQuant.parse("W4A8", lowrank=LowRankSpec(rank=2))
    quantize_(q, Recipe(rules=(("*", rule),), name="lowrank"))
    calibrate(q, random_calibration())
    with torch.no_grad():  # non-zero branches, so that leaving them out would show
        for name, p in q.named_parameters():
            if ".lowrank." in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)) * 0.05)
    result = export_unet(q, SHAPE)
    x, t = inputs(3)
    with torch.no_grad():
        ref = q(x, t).sample.numpy()
    out = run_onnx(result.model, {"sample": x, "timestep": t})
    assert close_to_fake_quant(out, ref)
