"""TrainLoop: the device it trains on follows the `device` argument."""

import pytest
import torch
from torch import nn

from edgediff.train.loop import LoopConfig, TrainLoop


def _loop(device):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    return model, TrainLoop(model, LoopConfig(steps=2, progress=False), device=device)


def test_cpu_device_trains_on_the_cpu_and_updates_the_model():
    model, loop = _loop("cpu")
    assert loop.device.type == "cpu"
    before = model.weight.detach().clone()
    x = torch.randn(8, 3)
    losses = loop.run(lambda step: loop.model(x.to(loop.device)).pow(2).mean())
    assert len(losses) == 2 and not torch.equal(model.weight.detach(), before)


def test_default_device_is_cuda_only_when_available():
    _, loop = _loop(None)
    assert loop.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_other_device_types_are_refused():
    with pytest.raises(ValueError, match="cpu or cuda"):
        _loop("meta")
