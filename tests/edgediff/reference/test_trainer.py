import torch

from edgediff.reference.model import load_pipeline_parts
from edgediff.reference.trainer import ReferenceTrainConfig, train_reference


def _weights(path):
    unet, _ = load_pipeline_parts(path)
    return unet.state_dict()


def test_training_is_seeded_and_resumes_exactly(tmp_path):
    straight = train_reference(tmp_path / "a", ReferenceTrainConfig(steps=4, batch_size=16), progress=False)
    # Interrupted run: 2 steps (checkpoint at step 2), then the same command with the full budget.
    cfg2 = ReferenceTrainConfig(steps=2, batch_size=16, checkpoint_every=2)
    train_reference(tmp_path / "b", cfg2, progress=False)
    assert (tmp_path / "b.ckpt" / "checkpoint.pt").is_file()
    resumed = train_reference(tmp_path / "b", ReferenceTrainConfig(steps=4, batch_size=16), progress=False)
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    _, scheduler = load_pipeline_parts(straight)
    assert scheduler.config.prediction_type == "v_prediction"
