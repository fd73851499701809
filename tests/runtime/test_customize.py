"""The runtime's MCA-Ctrl loop (inversion, packed streams, mode table, guidance, blending) against
PyTorch MCA-Ctrl on a tiny canvas-like UNet.

The backend here runs the controlled graph's PyTorch module (`ControlledUNet`, the module that is
exported) on the runtime's numpy feeds, so the test needs no ONNX export and stays fast; the ONNX
Runtime path is tests/export/test_customize.py (slow).
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgediff.customize.attention import layer_parts, self_attention_layers  # noqa: E402
from edgediff.customize.graph import ControlledUNet  # noqa: E402
from edgediff.customize.schedule import ControlSchedule  # noqa: E402
from edgediff_export.bundle import sampler_spec  # noqa: E402
from edgediff_export.conditions import model_conditions  # noqa: E402
from edgediff_export.customize import CustomizeExportOptions, edit_schedule, golden_case, mode_table  # noqa: E402
from edgediff_runtime.bundle import Bundle  # noqa: E402
from edgediff_runtime.customize import customize  # noqa: E402
from edgediff_runtime.customize_spec import CustomizeSpec  # noqa: E402
from edgediff_runtime.manifest import Manifest, ModelSpec, OnnxSpec, TensorSpec  # noqa: E402
from edgediff_runtime.parity import max_abs  # noqa: E402

from ..edgediff.customize.tiny_canvas import loaded_canvas  # noqa: E402

STEPS = 6
INPUTS = ("sample", "timestep", "encoder_hidden_states", "mca_masks", "mca_mode")
INT_INPUTS = ("timestep", "mca_mode")


class TorchControlled:
    """A runtime backend that runs the exported module in PyTorch."""

    def __init__(self, unet):
        self.model = ControlledUNet(copy.deepcopy(unet)).eval()

    input_names = list(INPUTS)
    output_names = ["model_output"]

    def run(self, feeds):
        args = [torch.from_numpy(np.asarray(feeds[k])) for k in INPUTS]
        with torch.no_grad():
            return {"model_output": self.model(*args)[0].numpy()}


def _bundle(loaded) -> Bundle:
    mc = model_conditions(loaded.unet, loaded.label_table)
    manifest = Manifest(
        name="tiny",
        model=ModelSpec(
            family="UNet2DConditionModel+MCA-Ctrl",
            inputs=[TensorSpec(n, "int64" if n in INT_INPUTS else "float32", []) for n in INPUTS],
            outputs=[TensorSpec("model_output", "float32", [])],
            sample_shape=list(loaded.sample_shape),
        ),
        sampler=sampler_spec(loaded.scheduler_config, STEPS),
        onnx=OnnxSpec(opset=21, ir_version=10),
        conditioning=mc.spec,
    )
    manifest.model.inputs[1].shape = ["batch"]
    return Bundle(root=loaded.path, manifest=manifest)


def _spec(loaded, schedule: ControlSchedule, refine: int = 0) -> CustomizeSpec:
    parts = layer_parts(loaded.unet)
    return CustomizeSpec(
        task="edit",
        steps=STEPS,
        layers=self_attention_layers(loaded.unet),
        parts=parts,
        modes=mode_table(schedule, parts, STEPS),
        sagi_end=schedule.sagi_end,
        salq_end=schedule.salq_end,
        sagi_parts=list(schedule.sagi_parts),
        salq_parts=list(schedule.salq_parts),
        invert_refine=refine,
    )


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    loaded = loaded_canvas()
    return loaded, _bundle(loaded), TorchControlled(loaded.unet)


@pytest.mark.parametrize("guidance, refine", [(None, 0), (3.0, 0), (None, 2)])
def test_runtime_loop_matches_pytorch_mca_ctrl_and_the_control_acts(setup, guidance, refine):
    loaded, bundle, backend = setup
    opts = CustomizeExportOptions(steps=STEPS, guidance=guidance, invert_refine=refine)
    schedule = edit_schedule(STEPS, None, None)
    assert 0 < schedule.sagi_end < schedule.salq_end  # both SAGI and SALQ steps are covered
    golden, _ = golden_case(loaded, opts, schedule)
    run = customize(bundle, backend, _spec(loaded, schedule, refine), golden.inputs)
    for mine, ref in (
        (run.subject_states, golden.subject_states),
        (run.condition_states, golden.condition_states),
        (run.trajectory, golden.trajectory),
        (run.image, golden.image),
    ):
        assert mine.shape == ref.shape
        np.testing.assert_allclose(mine, ref, rtol=0, atol=1e-4)
    # control off (mode table all plain) is what PyTorch computes with the control off ...
    off_golden, _ = golden_case(loaded, opts, ControlSchedule.off())
    off = customize(bundle, backend, _spec(loaded, ControlSchedule.off(), refine), golden.inputs)
    np.testing.assert_allclose(off.image, off_golden.image, rtol=0, atol=1e-4)
    # ... and far from the controlled result, inside the editable region only
    m_c = golden.inputs.condition_mask
    assert max_abs(run.image * m_c, off.image * m_c) > 0.05
    np.testing.assert_array_equal(run.image[:, ~m_c], off.image[:, ~m_c])


def test_runtime_loop_matches_pytorch_on_raw_embeddings(setup):
    """SD-class conditioning: raw embeddings and no null condition (the sources use the target's)."""
    _, _, backend = setup
    loaded = loaded_canvas()
    loaded.label_table = None
    bundle = _bundle(loaded)
    schedule = edit_schedule(STEPS, None, None)
    golden, case = golden_case(loaded, CustomizeExportOptions(steps=STEPS), schedule)
    assert golden.inputs.null is None and "cond" in case
    spec = dataclasses.replace(_spec(loaded, schedule), source_conditioning="target")
    run = customize(bundle, backend, spec, golden.inputs)
    np.testing.assert_allclose(run.trajectory, golden.trajectory, rtol=0, atol=1e-4)
    np.testing.assert_allclose(run.image, golden.image, rtol=0, atol=1e-4)


@pytest.mark.parametrize("size", [(16, 16), (20, 28), (12, 10)])
def test_image_and_mask_reading_match_pytorch(tmp_path, size):
    """The runtime reads PNG images and masks (resized to the sample grid) as `edgediff customize` does."""
    from PIL import Image

    from edgediff.customize.images import read_image as torch_read_image
    from edgediff.customize.images import read_image_mask
    from edgediff_runtime.customize_images import read_image, read_mask

    rng = np.random.default_rng(0)
    h, w = size
    Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(tmp_path / "img.png")
    mask = np.zeros((h, w), np.uint8)
    mask[h // 3 : h // 2, w // 2 :] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    img, hw = read_image(tmp_path / "img.png", (1, 16, 16), "--subject")
    ref, ref_hw = torch_read_image(tmp_path / "img.png", (1, 16, 16), "--subject")
    assert hw == ref_hw == (h, w)
    np.testing.assert_allclose(img, ref.numpy(), rtol=0, atol=1e-6)
    m = read_mask(tmp_path / "mask.png", hw, (16, 16), "--condition-mask")
    np.testing.assert_array_equal(m, read_image_mask(tmp_path / "mask.png", hw, (16, 16), "--mask").numpy())
