"""Session fixture: a tiny bundle built WITHOUT the exporter (the exporter is another stage).

A diffusers ``UNet2DModel`` (1 channel, 8x8, block_out_channels (8, 16)) wrapped so its output is
scaled by a ``STEPS``-entry per-step table gathered with the int64 ``step`` input (this mimics
per-step activation scales and proves the step-index convention), exported with the dynamo exporter
(``torch.onnx.export(..., dynamo=True, external_data=False)``, dynamic batch), packed with
``write_manifest`` and golden latents recorded by a torch loop over diffusers' ``DDIMScheduler``
with the project's reference config (DDIM, T = 1000, squaredcos_cap_v2, v_prediction, trailing,
clip_sample, set_alpha_to_one, eta 0).
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

STEPS = 5
BATCH = 3
SEED = 1234

REFERENCE_SAMPLER = dict(
    kind="ddim",
    num_train_timesteps=1000,
    beta_schedule="squaredcos_cap_v2",
    prediction_type="v_prediction",
    timestep_spacing="trailing",
    steps=STEPS,
    eta=0.0,
    clip_sample=True,
    clip_sample_range=1.0,
    set_alpha_to_one=True,
    steps_offset=0,
)


def _build_tiny_bundle(root: Path) -> Path:
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    import onnx

    from edgediff_runtime.bundle import write_manifest
    from edgediff_runtime.devices import load_profile
    from edgediff_runtime.golden import save_golden
    from edgediff_runtime.manifest import (
        CustomOp,
        Manifest,
        ModelSpec,
        OnnxSpec,
        ParitySpec,
        QuantSpec,
        Requirements,
        SamplerSpec,
        TensorSpec,
    )

    torch.manual_seed(SEED)
    unet = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()

    class StepScaled(torch.nn.Module):
        """out = unet(sample, timestep) * table[step]: a stand-in for per-step activation scales."""

        def __init__(self, table: torch.Tensor) -> None:
            super().__init__()
            self.unet = unet
            self.register_buffer("table", table)

        def forward(self, sample, timestep, step):
            return self.unet(sample, timestep).sample * self.table[step]

    quant_model = StepScaled(1.0 + 0.05 * torch.arange(STEPS, dtype=torch.float32)).eval()
    fp_model = StepScaled(torch.ones(STEPS)).eval()

    bundle = root / "tiny.edgediff"
    bundle.mkdir()
    batch = torch.export.Dim("batch", min=1, max=64)
    example = (torch.randn(2, 1, 8, 8), torch.tensor([999, 999]), torch.tensor(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter (deprecations, axis renaming)
        torch.onnx.export(
            quant_model,
            example,
            str(bundle / "model.onnx"),
            dynamo=True,
            external_data=False,
            input_names=["sample", "timestep", "step"],
            output_names=["out"],
            dynamic_shapes={"sample": {0: batch}, "timestep": {0: batch}, "step": {}},
            verbose=False,
        )
    proto = onnx.load(str(bundle / "model.onnx"))

    def spec(value_info) -> TensorSpec:
        t = value_info.type.tensor_type
        dims = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
        return TensorSpec(value_info.name, onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, dims)

    # Golden latents from PyTorch + diffusers (the reference implementation of the sampler).
    scheduler = diffusers.DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
        timestep_spacing="trailing",
        clip_sample=True,
        clip_sample_range=1.0,
        set_alpha_to_one=True,
    )
    noise = np.random.default_rng(SEED).standard_normal((BATCH, 1, 8, 8), dtype=np.float32)

    def run(model) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
        scheduler.set_timesteps(STEPS)
        x = torch.from_numpy(noise.copy())
        latents = []
        with torch.no_grad():
            for i, t in enumerate(scheduler.timesteps):
                out = model(x, torch.full((BATCH,), int(t)), torch.tensor(i))
                x = scheduler.step(out, t, x, eta=0.0).prev_sample
                latents.append(x.numpy().copy())
        return scheduler.timesteps.numpy(), latents, x.clamp(-1, 1).numpy()

    timesteps, latents, final = run(quant_model)
    _, _, fp_final = run(fp_model)
    save_golden(
        bundle, noise=noise, timesteps=timesteps, latents=np.stack(latents), final=final, fp_final=fp_final
    )

    manifest = Manifest(
        name="tiny",
        created_by="tests/runtime/conftest.py (no exporter)",
        model=ModelSpec(
            family="unet2d-tiny",
            inputs=[spec(v) for v in proto.graph.input],
            outputs=[spec(v) for v in proto.graph.output],
            sample_shape=[1, 8, 8],
            sample_input="sample",
            timestep_input="timestep",
            step_input="step",
        ),
        sampler=SamplerSpec(**REFERENCE_SAMPLER),
        onnx=OnnxSpec(
            opset=next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
            ir_version=proto.ir_version,
            custom_ops=[CustomOp("ResidualBinaryLinear", "edgediff", "edgediff", "1")],
        ),
        # The same fields the exporter writes (edgediff_export.bundle.quant_spec): an FP32 model
        # whose per-step table has STEPS entries, so the runtime accepts only STEPS steps.
        quant=QuantSpec(
            method="fp",
            label="FP32",
            mean_weight_bits=32.0,
            step_table=STEPS,
            placement="ort",
            weight_containers={},
            recipe={"residual": "custom", "trt_approximated_layers": [], "source_model": None},
            precision={"/unet/conv_in/Conv": "fp32"},
        ),
        requirements=Requirements(onnxruntime_min="1.20"),
        device=load_profile("x86-cpu").to_dict(),
        parity=ParitySpec(
            tolerances={
                "latent_max_abs": 1e-4,
                "latent_psnr_min": 80.0,
                "final_max_abs": 1e-4,
                "final_psnr_min": 80.0,
            },
            tolerance_source="test fixture: fp32 ORT CPU vs PyTorch CPU differ by ~1e-6; 1e-4 leaves margin",
        ),
    )
    write_manifest(bundle, manifest)
    return bundle


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of the session's tiny bundle. Treat as read-only; use ``bundle_copy`` to modify."""
    return _build_tiny_bundle(tmp_path_factory.mktemp("bundles"))


@pytest.fixture
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny bundle that a test may tamper with."""
    dst = tmp_path / tiny_bundle.name
    shutil.copytree(tiny_bundle, dst)
    return dst
