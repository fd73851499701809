import torch

from edgediff.models.label_table import LabelTable
from edgediff.models.loading import load_model
from edgediff.reference.canvas32.model import build_denoiser
from edgediff.reference.canvas32.trainer import Canvas32TrainConfig, drop_condition, train_canvas32

from .tiny import TINY_UNET


def test_null_drop_rate_and_rows():
    labels = torch.randint(0, 11, (100_000, 2), generator=torch.Generator().manual_seed(0))
    out = drop_condition(labels, null=11, prob=0.1, generator=torch.Generator().manual_seed(1))
    dropped = (out == 11).all(1)
    assert abs(dropped.float().mean().item() - 0.1) < 0.005
    # A dropped sample loses both slots; a kept one is unchanged.
    assert ((out == 11).any(1) == dropped).all()
    assert torch.equal(out[~dropped], labels[~dropped])
    same = drop_condition(labels, 11, 0.0, torch.Generator().manual_seed(1))
    assert torch.equal(same, labels)


def test_label_table_gets_gradients_through_the_unet():
    denoiser = build_denoiser(0, TINY_UNET)
    x, t = torch.randn(3, 1, 32, 32), torch.tensor([10, 500, 900])
    labels = torch.tensor([[1, 2], [10, 3], [11, 11]])
    denoiser(x, t, labels).square().mean().backward()
    grad = denoiser.label_embeddings.grad
    used = {(0, 1), (1, 2), (0, 10), (1, 3), (0, 11), (1, 11)}
    for s in range(2):
        for r in range(12):
            assert (grad[s, r].abs().sum() > 0) == ((s, r) in used), (s, r)


def test_tiny_training_learns_the_table_and_saves_a_pipeline_folder(tmp_path):
    cfg = Canvas32TrainConfig(steps=2, batch_size=4, snapshot_every=0)
    summary = train_canvas32(tmp_path / "m", cfg, progress=False, unet_config=TINY_UNET)
    assert summary["steps"] == 2
    model = load_model(tmp_path / "m")
    init = build_denoiser(0, TINY_UNET).label_embeddings.detach()
    assert model.label_table.embeddings.shape == (2, 12, 32)
    assert not torch.equal(model.label_table.embeddings, init)
    assert isinstance(LabelTable.load(tmp_path / "m"), LabelTable)
    sched = model.scheduler_config
    assert sched["prediction_type"] == "v_prediction" and sched["beta_schedule"] == "squaredcos_cap_v2"
    assert sched["timestep_spacing"] == "trailing" and sched["set_alpha_to_one"] is True
    for f in ("model_index.json", "unet/config.json", "scheduler/scheduler_config.json"):
        assert (tmp_path / "m" / f).is_file()


def test_snapshot_during_training_is_a_loadable_folder(tmp_path, monkeypatch):
    import edgediff.reference.canvas32.trainer as trainer

    saved = []
    real_save = trainer.save_pipeline

    def spy(denoiser, out):
        real_save(denoiser, out)
        saved.append(load_model(out).label_table.embeddings.clone())

    monkeypatch.setattr(trainer, "save_pipeline", spy)
    cfg = Canvas32TrainConfig(steps=3, batch_size=2, snapshot_every=2)
    train_canvas32(tmp_path / "m", cfg, progress=False, unet_config=TINY_UNET)
    assert len(saved) == 2  # the snapshot at step 2 and the final folder
    assert not torch.equal(saved[0], saved[1])
    assert (tmp_path / "m.ckpt" / "checkpoint.pt").is_file()
    assert tuple(load_model(tmp_path / "m").unet.config.block_out_channels) == (8, 8, 8)
