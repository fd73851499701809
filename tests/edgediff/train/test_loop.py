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


def test_a_cpu_loop_after_a_shared_state_on_another_device_still_trains_on_the_cpu(monkeypatch):
    """accelerate's process-wide state is reset when it holds another device."""
    from accelerate.state import AcceleratorState

    import edgediff.train.loop as loop_mod

    calls = []
    real = loop_mod.Accelerator

    class Stale:
        """First construction reports a stale device, as a state left by an earlier loop would."""

        def __init__(self, cpu):
            calls.append(cpu)
            self._inner = real(cpu=cpu)
            self.device = torch.device("cuda") if len(calls) == 1 else self._inner.device
            self.num_processes = 1

        def __getattr__(self, name):
            return getattr(self._inner, name)

    resets = []
    monkeypatch.setattr(loop_mod, "Accelerator", Stale)
    monkeypatch.setattr(AcceleratorState, "_reset_state", staticmethod(lambda **kw: resets.append(kw)))
    _, loop = _loop("cpu")
    assert calls == [True, True] and resets == [{"reset_partial_state": True}]
    assert loop.device.type == "cpu"


def test_a_refused_accelerator_is_rebuilt_after_a_reset(monkeypatch):
    """accelerate raises ValueError for cpu=True over a CUDA state: reset, then build again."""
    from accelerate.state import AcceleratorState

    import edgediff.train.loop as loop_mod

    real = loop_mod.Accelerator
    calls = []

    def refusing_once(cpu):
        calls.append(cpu)
        if len(calls) == 1:
            raise ValueError("AcceleratorState has already been initialized and cannot be changed")
        return real(cpu=cpu)

    resets = []
    monkeypatch.setattr(loop_mod, "Accelerator", refusing_once)
    monkeypatch.setattr(AcceleratorState, "_reset_state", staticmethod(lambda **kw: resets.append(kw)))
    _, loop = _loop("cpu")
    assert calls == [True, True] and len(resets) == 1 and loop.device.type == "cpu"


def test_progress_off_a_terminal_is_twenty_log_lines_not_a_bar(caplog, capsys):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    loop = TrainLoop(model, LoopConfig(steps=40, progress=True, description="t"), device="cpu")
    x = torch.randn(8, 3)
    with caplog.at_level("INFO", logger="edgediff.train.loop"):
        loop.run(lambda step: loop.model(x).pow(2).mean())
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("t: step")]
    assert len(lines) == 20 and lines[0].startswith("t: step 2/40") and lines[-1].startswith("t: step 40/40")
    assert "it/s" not in capsys.readouterr().err  # pytest's captured stderr is not a terminal: no bar
