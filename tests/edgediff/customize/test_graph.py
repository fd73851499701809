"""The tensor-input control (for export) equals the processor path; it exports with standard ops."""

import copy

import numpy as np
import pytest
import torch

from edgediff.customize.attention import Controller, controlled, self_attention_layers
from edgediff.customize.graph import ControlledUNet
from edgediff.customize.schedule import ControlSchedule

from .tiny_canvas import canvas_unet

PART = {"down_blocks": "down", "mid_block": "mid", "up_blocks": "up"}


@pytest.fixture(scope="module")
def case():
    torch.set_num_threads(1)
    unet = canvas_unet()
    g = torch.Generator().manual_seed(0)
    x, ehs = torch.randn(3, 1, 16, 16, generator=g), torch.randn(3, 2, 16, generator=g)
    m_s = torch.zeros(16, 16, dtype=torch.bool)
    m_s[2:10, 2:10] = True
    m_c = torch.zeros(16, 16, dtype=torch.bool)
    m_c[6:14, 4:12] = True
    schedule = ControlSchedule(1, 2, salq_parts=("up",))
    parts = [PART[n.split(".")[0]] for n in self_attention_layers(unet)]
    t = torch.full((3,), 500)
    refs = []
    for step in (0, 1, 2):  # SAGI everywhere; SALQ in the decoder only; plain
        ctrl = Controller(schedule, (16, 16))
        ctrl.set_masks(m_s, m_c)
        ctrl.step = step
        with torch.no_grad(), controlled(unet, ctrl):
            ref = unet(x, t, encoder_hidden_states=ehs).sample
        mode = torch.tensor([[schedule.mode(step, p).value for p in parts]])
        refs.append((mode, ref))
    masks = torch.stack([m_s, m_c]).float()[None]
    packed = (x.reshape(1, 3, 16, 16), t[:1], ehs.reshape(1, 6, 16), masks)
    return ControlledUNet(copy.deepcopy(unet)).eval(), packed, refs


def test_tensor_control_equals_the_processors(case):
    model, (x, t, ehs, masks), refs = case
    assert [m[0].tolist() for m, _ in refs] == [[1, 1, 1, 1], [0, 0, 2, 2], [0, 0, 0, 0]]
    outs = []
    for mode, ref in refs:
        with torch.no_grad():
            out = model(x, t, ehs, masks, mode)[0].reshape(3, 1, 16, 16)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
        outs.append(out)
    assert (outs[0][2] - outs[2][2]).abs().max() > 1e-3 and (outs[1][2] - outs[2][2]).abs().max() > 1e-3


@pytest.mark.slow
def test_exports_with_the_project_exporter_in_standard_ops(case):
    ort = pytest.importorskip("onnxruntime")
    from edgediff_export.to_onnx import export_unet

    model, (x, t, ehs, masks), refs = case
    extra = {"encoder_hidden_states": ehs.repeat(2, 1, 1), "mca_masks": masks.repeat(2, 1, 1, 1)}
    res = export_unet(
        model, (3, 16, 16), batch=2, extra_inputs={**extra, "mca_mode": refs[0][0].repeat(2, 1)}
    )
    assert {n.domain for n in res.model.graph.node} <= {"", "ai.onnx"}  # no custom op
    sess = ort.InferenceSession(res.model.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = []
    for mode, ref in refs:
        feed = {
            "sample": x,
            "timestep": t,
            "encoder_hidden_states": ehs,
            "mca_masks": masks,
            "mca_mode": mode,
        }
        out = sess.run(None, {k: v.numpy() for k, v in feed.items()})[0].reshape(3, 1, 16, 16)
        np.testing.assert_allclose(out, ref.numpy(), rtol=0, atol=1e-5)
        outs.append(out)
    assert np.abs(outs[0][2] - outs[2][2]).max() > 1e-3  # the mode input acts in the graph
