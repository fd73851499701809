"""The on-device loop: ONNX Runtime + numpy sampler versus the PyTorch golden trajectory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgediff_runtime.backends import Backend, open_backend
from edgediff_runtime.backends.ort import OrtBackend, resolve_providers
from edgediff_runtime.bundle import load_bundle
from edgediff_runtime.errors import RuntimeStageError
from edgediff_runtime.golden import load_golden
from edgediff_runtime.manifest import TensorSpec
from edgediff_runtime.pipeline import Guidance, make_feeds, sample, scalar_feed
from edgediff_runtime.samplers import make_sampler
from tests.runtime.conftest import BATCH, STEPS


@pytest.fixture(scope="module")
def loaded(tiny_bundle: Path):
    bundle = load_bundle(tiny_bundle)
    return bundle, OrtBackend(bundle.model_path, threads=1), load_golden(bundle)


def test_every_step_matches_pytorch_within_1e4(loaded):
    bundle, backend, golden = loaded
    seen = []
    result = sample(
        bundle, backend, golden.noise, keep_latents=True, step_callback=lambda i, t, x: seen.append((i, t))
    )
    assert [i for i, _ in seen] == list(range(STEPS))
    assert [t for _, t in seen] == golden.timesteps.tolist() == [999, 799, 599, 399, 199]
    assert len(result.latents) == STEPS
    for i in range(STEPS):
        assert np.abs(result.latents[i] - golden.latents[i]).max() < 1e-4, f"step {i}"
    assert np.abs(result.final - golden.final).max() < 1e-4
    assert result.final.min() >= -1 and result.final.max() <= 1
    assert len(result.call_seconds) == STEPS


def test_step_index_is_fed_as_loop_position(loaded):
    """The graph scales its output by table[step]; an off-by-one step index must break parity."""
    bundle, backend, golden = loaded

    class OffByOne:
        input_names, output_names = backend.input_names, backend.output_names

        def run(self, feeds):
            return backend.run({**feeds, "step": (feeds["step"] + 1) % STEPS})  # table has STEPS entries

    shifted = sample(bundle, OffByOne(), golden.noise, keep_latents=True)
    assert np.abs(shifted.latents[0] - golden.latents[0]).max() > 1e-3


def test_feeds_follow_manifest_shapes_and_dtypes(loaded):
    bundle, _, _ = loaded
    x = np.zeros((BATCH, 1, 8, 8), np.float32)
    feeds = make_feeds(bundle.manifest.model, x, 999.0, 2)
    assert feeds["timestep"].dtype == np.int64 and feeds["timestep"].shape == (BATCH,)
    assert feeds["timestep"].tolist() == [999] * BATCH
    assert feeds["step"].shape == () and feeds["step"].dtype == np.int64 and int(feeds["step"]) == 2
    assert scalar_feed(TensorSpec("t", "float32", [1]), 7.5, 4).tolist() == [7.5]
    with pytest.raises(RuntimeStageError, match="timestep 7.5 is fractional but graph input t is int64"):
        scalar_feed(TensorSpec("t", "int64", ["batch"]), 7.5, 4)


def test_bad_noise_shape_and_unfed_inputs(loaded):
    bundle, backend, _ = loaded
    with pytest.raises(RuntimeStageError, match=r"noise must have shape \[N, 1, 8, 8\]"):
        sample(bundle, backend, np.zeros((2, 3, 8, 8), np.float32))
    model = bundle.manifest.model
    extra = TensorSpec("class_labels", "int64", ["batch"])
    model_with_labels = type(model)(**{**model.__dict__, "inputs": [*model.inputs, extra]})
    with pytest.raises(RuntimeStageError, match="graph input 'class_labels' needs a value"):
        make_feeds(model_with_labels, np.zeros((1, 1, 8, 8), np.float32), 1, 0)
    feeds = make_feeds(model_with_labels, np.zeros((1, 1, 8, 8), np.float32), 1, 0, {"class_labels": [3]})
    assert feeds["class_labels"].dtype == np.int64


def test_classifier_free_guidance_batches_uncond_and_cond(loaded):
    bundle, _, golden = loaded
    calls = []

    class Echo:
        """Returns the conditioning value as the model output, so guidance is easy to predict."""

        input_names, output_names = ["sample", "timestep", "step", "y"], ["out"]

        def run(self, feeds):
            calls.append({k: np.asarray(v).shape for k, v in feeds.items()})
            return {"out": np.broadcast_to(feeds["y"][:, None, None, None], feeds["sample"].shape).copy()}

    model = bundle.manifest.model
    inputs = [*model.inputs, TensorSpec("y", "float32", ["batch"])]
    bundle.manifest.model = type(model)(**{**model.__dict__, "inputs": inputs})
    try:
        n = golden.noise.shape[0]
        cfg = Guidance(3.0, uncond={"y": np.zeros(n, np.float32)}, cond={"y": np.ones(n, np.float32)})
        guided = sample(bundle, Echo(), golden.noise, STEPS, guidance=cfg)  # the per-step table's count
    finally:
        bundle.manifest.model = model
    assert calls[0]["sample"][0] == 2 * n and calls[0]["timestep"] == (2 * n,) and calls[0]["y"] == (2 * n,)
    # Same loop with a model that always outputs u + 3 (c - u) = 3.
    sampler = make_sampler(bundle.manifest.sampler, STEPS)
    x = sampler.init_latent(golden.noise)
    for i in range(STEPS):
        x = sampler.step(np.full_like(x, 3.0), i, x)
    np.testing.assert_allclose(guided.final, np.clip(x, -1, 1), atol=1e-6)


def test_backend_protocol_and_provider_errors(tiny_bundle: Path):
    backend = open_backend("ort", tiny_bundle / "model.onnx", threads=1)
    assert isinstance(backend, Backend)
    assert backend.input_names == ["sample", "timestep", "step"] and backend.output_names == ["out"]
    assert resolve_providers(["cpu"], ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    with pytest.raises(RuntimeStageError, match="provider CUDAExecutionProvider is not available"):
        resolve_providers(["cuda"], ["CPUExecutionProvider"])
    with pytest.raises(RuntimeStageError, match="unknown backend 'tvm'"):
        open_backend("tvm", tiny_bundle / "model.onnx")
    with pytest.raises(RuntimeStageError, match="--threads must be >= 1"):
        OrtBackend(tiny_bundle / "model.onnx", threads=0)


def test_corrupt_model_is_a_one_line_error(tmp_path: Path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(RuntimeStageError, match="ONNX Runtime cannot load model.onnx: .*; re-export") as err:
        OrtBackend(bad)
    assert "\n" not in str(err.value)


def test_wrong_feed_dtype_is_a_one_line_error(loaded):
    _, backend, golden = loaded
    feeds = {"sample": golden.noise, "timestep": np.zeros(BATCH, np.float32), "step": np.array(0)}
    with pytest.raises(RuntimeStageError, match="ONNX Runtime failed to run the model"):
        backend.run(feeds)
