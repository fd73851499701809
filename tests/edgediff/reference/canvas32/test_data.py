import pytest
import torch

from edgediff.errors import EdgediffError
from edgediff.reference.canvas32.data import (
    EMPTY,
    DigitPool,
    compose,
    make_batch,
    make_canvases,
    parse_labels,
    slot_mask,
)


def _digit(value: float) -> torch.Tensor:
    """A 16x16 digit in [-1, 1] whose pixel (r, c) is distinct: (r * 16 + c) / 255 * value, mapped."""
    ramp = torch.arange(256, dtype=torch.float32).view(16, 16) / 255.0 * value
    return ramp * 2 - 1


def test_compose_places_each_slot_at_its_home_plus_jitter():
    left, right = _digit(1.0), _digit(0.5)
    canvas = compose([left, right], [(0, 0), (1, -2)])[0]
    assert canvas.shape == (32, 32)
    # Left digit at rows 8..23, columns 0..15, exactly.
    assert torch.allclose(canvas[8:24, 0:14], left[:, 0:14])
    # Right digit shifted down 1 and left 2: rows 9..24, columns 14..29; columns 14-15 overlap the
    # left digit and take the pixel-wise maximum.
    assert torch.allclose(canvas[9:25, 16:30], right[:, 2:16])
    assert torch.allclose(canvas[9:24, 14:16], torch.maximum(left[1:16, 14:16], right[0:15, 0:2]))
    # Nothing anywhere else.
    assert (canvas[:8] == -1).all() and (canvas[25:] == -1).all() and (canvas[:, 30:] == -1).all()


def test_compose_clips_at_the_canvas_border_and_leaves_empty_slots_blank():
    d = _digit(1.0)
    canvas = compose([d, None], [(-2, -2), (0, 0)])[0]
    assert torch.allclose(canvas[6:22, 0:14], d[:, 2:16])
    assert (canvas[:, 14:] == -1).all()
    assert (compose([None, None], [(0, 0), (0, 0)]) == -1).all()


def test_make_canvases_draws_a_digit_of_the_requested_class_per_slot():
    pool = DigitPool.split("train")
    labels = torch.tensor([[3, EMPTY], [EMPTY, 8], [0, 6]])
    x = make_canvases(pool, labels, torch.Generator().manual_seed(0), jitter=0)
    for i, (a, b) in enumerate(labels.tolist()):
        for s, c in enumerate((a, b)):
            region = x[i, 0, 8:24, 16 * s : 16 * s + 16]
            if c == EMPTY:
                assert (x[i, 0, :, 16 * s : 16 * s + 16] == -1).all()
            else:
                candidates = pool.images[pool.by_class[c], 0]
                assert (candidates - region).abs().flatten(1).amax(1).min() < 1e-6


def test_batches_are_seeded_and_cover_all_slot_labels():
    pool = DigitPool.split("train")
    x1, y1 = make_batch(pool, 400, torch.Generator().manual_seed(5))
    x2, y2 = make_batch(pool, 400, torch.Generator().manual_seed(5))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (400, 1, 32, 32) and y1.shape == (400, 2)
    assert set(y1.flatten().tolist()) == set(range(11))
    assert x1.min() >= -1 and x1.max() <= 1


def test_train_and_val_pools_are_disjoint_splits():
    train, val, full = DigitPool.split("train"), DigitPool.split("val"), DigitPool.split("all")
    assert len(train.images) + len(val.images) == len(full.images)


def test_parse_labels():
    assert parse_labels("7,2") == (7, 2)
    assert parse_labels("7, -") == (7, EMPTY)
    for bad in ("7", "7,2,1", "x,2", "10,1"):
        with pytest.raises(EdgediffError):
            parse_labels(bad)


def test_slot_mask_is_where_compose_pastes():
    ones = torch.ones(16, 16)  # a digit that is white everywhere
    for slot, offset in [(0, (0, 0)), (0, (-2, -2)), (1, (2, 2)), (1, (-1, 1))]:
        digits = [ones if s == slot else None for s in range(2)]
        canvas = compose(digits, [offset, offset])[0]
        assert torch.equal(slot_mask(slot, offset), canvas > 0)
    assert int(slot_mask(1, (0, 2)).sum()) == 16 * 14  # clipped at the right border
    union = slot_mask(0)  # rows 6..25, columns 0..17
    assert int(union.sum()) == 20 * 18 and union[6, 17] and not union[5, 0] and not union[6, 18]
