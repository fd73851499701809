"""Masks: token grids, resizing, localization, and one-line errors for bad masks."""

import numpy as np
import pytest
import torch
from PIL import Image

from edgediff.customize.errors import CustomizeError
from edgediff.customize.masks import (
    CrossAttentionLocalizer,
    check_mask,
    dilate,
    mask_to_tokens,
    read_mask,
    resize_mask,
    token_grid,
)


def test_token_grid():
    assert token_grid((32, 32), 64) == (8, 8)
    assert token_grid((8, 16), 32) == (4, 8)
    with pytest.raises(CustomizeError, match="do not form a grid"):
        token_grid((8, 8), 7)


def test_mask_to_tokens_shrinks_by_any_pixel_and_flattens_row_major():
    m = torch.zeros(8, 8, dtype=torch.bool)
    m[5, 2] = True  # one pixel: cell (2, 1) of the 4x4 grid
    tok = mask_to_tokens(m, 16)
    want = torch.zeros(4, 4, dtype=torch.bool)
    want[2, 1] = True
    assert torch.equal(tok, want.reshape(-1))
    assert torch.equal(mask_to_tokens(m, 64), m.reshape(-1))  # same grid: unchanged


def test_resize_enlarges_nearest():
    m = torch.tensor([[True, False], [False, True]])
    big = resize_mask(m, (4, 4))
    assert torch.equal(big, m.repeat_interleave(2, 0).repeat_interleave(2, 1))


def test_dilate_3x3():
    m = torch.zeros(5, 5, dtype=torch.bool)
    m[2, 2] = True
    d = dilate(m)
    assert int(d.sum()) == 9 and bool(d[1:4, 1:4].all())


def test_cross_attention_localizer_top_30_percent_dilated():
    maps = torch.zeros(2, 10, 10)
    maps[1].view(-1)[:] = torch.arange(100.0)  # token 1: row-major ramp, top 30 = rows 7..9
    mask = CrossAttentionLocalizer(token=1, top=0.3, dilation=3)(maps)
    want = torch.zeros(10, 10, dtype=torch.bool)
    want[6:, :] = True  # rows 7-9 dilated by one row
    assert torch.equal(mask, want)
    undilated = CrossAttentionLocalizer(token=1, dilation=1)(maps)
    assert int(undilated.sum()) == 30
    with pytest.raises(CustomizeError, match="--token 2 is out of range"):
        CrossAttentionLocalizer(token=2)(maps)


def test_bad_masks_one_line(tmp_path):
    with pytest.raises(CustomizeError, match="is 4x4 but its image is 8x8"):
        check_mask(torch.ones(4, 4, dtype=torch.bool), (8, 8), "--subject-mask")
    with pytest.raises(CustomizeError, match="is empty"):
        check_mask(torch.zeros(8, 8, dtype=torch.bool), (8, 8), "--condition-mask")
    png = tmp_path / "m.png"
    arr = np.zeros((6, 7), np.uint8)
    arr[1:3, 2:4] = 255
    Image.fromarray(arr).save(png)
    assert torch.equal(read_mask(png, "m"), torch.from_numpy(arr > 127))
    np.save(tmp_path / "bad.npy", np.ones((2, 3, 4)))
    with pytest.raises(CustomizeError, match="must be a 2-D"):
        read_mask(tmp_path / "bad.npy", "--subject-mask")
    with pytest.raises(CustomizeError, match="not found"):
        read_mask(tmp_path / "missing.png", "--subject-mask")
