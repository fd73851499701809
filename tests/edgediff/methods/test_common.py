"""TrajectoryStream: a process's slice of the global batch, and its checkpoint state."""

import pytest
import torch

from edgediff.errors import EdgediffError
from edgediff.methods.common import TrajectoryStream
from tests.edgediff.methods.tiny import SCHED, tiny_unet


def _stream(**kw) -> TrajectoryStream:
    fp = tiny_unet()
    return TrajectoryStream(fp, SCHED, num_steps=2, batch_size=4, sample_shape=(1, 8, 8), seed=3, **kw)


def test_the_slices_of_all_processes_are_the_one_process_batch():
    whole = _stream()
    halves = [_stream(shard=(r, 2)) for r in range(2)]
    for _ in range(3):  # crosses a trajectory boundary (new noise)
        i, x, t, out = whole.next()
        parts = [h.next() for h in halves]
        assert all(p[0] == i for p in parts)
        torch.testing.assert_close(torch.cat([p[1] for p in parts]), x)
        torch.testing.assert_close(torch.cat([p[3] for p in parts]), out, rtol=1e-5, atol=1e-6)


def test_a_batch_that_does_not_split_is_a_clear_error():
    with pytest.raises(EdgediffError, match="multiple of 3"):
        _stream(shard=(0, 3))


def test_state_round_trip_continues_the_same_trajectories():
    a = _stream()
    a.next()
    state = a.state_dict()
    expected = [a.next()[1] for _ in range(3)]
    b = _stream()
    b.load_state_dict(state)
    for x in expected:
        torch.testing.assert_close(b.next()[1], x, rtol=0, atol=0)
