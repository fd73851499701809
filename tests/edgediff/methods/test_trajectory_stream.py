"""The fine-tuning data stream on a conditioned model: rows per trajectory, guided batches."""

import torch

from edgediff.methods.common import TrajectoryStream, quant_forward, sample_shape
from edgediff.models.conditioning import Conditioning
from edgediff.sampling import cfg_combine, make_ddim

from ..models.tiny import DDPM_SCHEDULER, dit


def test_guided_stream_walks_the_guided_trajectory_with_cond_and_null_rows():
    model = dit()
    labels = torch.tensor([1, 2, 3])
    cond = Conditioning({"class_labels": labels}, {"class_labels": torch.full((3,), 10)})
    stream = TrajectoryStream(
        model, DDPM_SCHEDULER, 2, 2, sample_shape(model), seed=0, conditioning=cond, guidance_scale=3.0
    )
    step, x, t, out = stream.next()
    assert step == 0 and x.shape == (4, 4, 8, 8) and out.shape == (4, 4, 8, 8)
    assert stream.cond["class_labels"].tolist() == [1, 2, 10, 10]
    assert torch.equal(x[:2], x[2:])
    # the latent advances with the guided prediction null + w (cond - null)
    sched = make_ddim(DDPM_SCHEDULER)
    sched.set_timesteps(2)
    guided = cfg_combine(*out.chunk(2), 3.0)
    expected = sched.step(guided, int(t[0]), x[:2]).prev_sample
    step, x1, _, _ = stream.next()
    torch.testing.assert_close(x1[:2], expected, rtol=0, atol=1e-6)
    assert step == 1
    # the next trajectory takes the next rows, cycled: labels 3, 1
    stream.next()
    assert stream.cond["class_labels"].tolist() == [3, 1, 10, 10]
    q = quant_forward(model, x1, torch.full((4,), 5), 1, stream.cond)
    assert q.shape == (4, 4, 8, 8)  # learned sigma: the first in_channels


def _labelled(**kw) -> TrajectoryStream:
    model = dit()
    cond = Conditioning({"class_labels": torch.tensor([1, 2, 3, 4, 5])})
    return TrajectoryStream(model, DDPM_SCHEDULER, 2, 4, sample_shape(model), seed=0, conditioning=cond, **kw)


def test_each_process_takes_its_slice_of_the_trajectory_rows():
    whole = _labelled()
    halves = [_labelled(shard=(r, 2)) for r in range(2)]
    for expected in ([1, 2, 3, 4], [1, 2, 3, 4], [5, 1, 2, 3]):  # trajectory 2 starts at row 4 (cycled)
        whole.next()
        for h in halves:
            h.next()
        assert whole.cond["class_labels"].tolist() == expected
        assert halves[0].cond["class_labels"].tolist() + halves[1].cond["class_labels"].tolist() == expected


def test_state_round_trip_restores_the_trajectory_rows():
    a = _labelled()
    for _ in range(3):  # into the second trajectory: rows 5, 1, 2, 3
        a.next()
    state = a.state_dict()
    b = _labelled()
    b.load_state_dict(state)
    assert b.cond["class_labels"].tolist() == [5, 1, 2, 3]
    x_a, x_b = a.next(), b.next()
    torch.testing.assert_close(x_b[1], x_a[1], rtol=0, atol=0)
    a.next(), b.next()  # the third trajectory's rows follow on
    assert b.cond["class_labels"].tolist() == a.cond["class_labels"].tolist() == [4, 5, 1, 2]
