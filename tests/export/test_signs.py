"""Sign packing: one implementation of the layout, used by the ONNX ops, the numpy reference and torch."""

import numpy as np
import pytest
import torch

from edgediff_export import ops, signs
from edgediff_export.modules import _pack_signs
from edgediff_export.torch_ops import unpack_signs_torch
from edgediff_export.trt import numpy_ref


def test_every_user_goes_through_the_one_implementation():
    assert ops.pack_signs is numpy_ref.pack_signs is signs.pack_signs
    assert ops.unpack_signs is numpy_ref.unpack_signs is signs.unpack_signs


def test_layout_by_hand():
    pm1 = np.array([[1, -1, -1, 1, -1, -1, -1, -1, 1, 1], [-1] * 9 + [1]], np.int8)  # n = 10
    packed = signs.pack_signs(pm1)
    assert packed.dtype == np.uint8 and packed.tolist() == [[0b00001001, 0b00000011], [0, 0b00000010]]
    # torch side: the export module packs, the custom op decodes, both the same bytes
    assert _pack_signs(torch.from_numpy(pm1)).tolist() == packed.tolist()
    np.testing.assert_array_equal(unpack_signs_torch(torch.from_numpy(packed), 10).numpy(), pm1)


def test_unpack_reads_the_low_byte_and_ignores_padding():
    pm1 = np.random.default_rng(0).choice(np.array([-1, 1], np.int8), size=(3, 13))
    packed = signs.pack_signs(pm1)
    dirty = packed.copy()
    dirty[:, 1] |= 0b11100000  # the 3 padding bits
    for stored in (packed, dirty, packed.astype(np.int32), np.concatenate([packed, packed], axis=1)):
        np.testing.assert_array_equal(signs.unpack_signs(stored, 13), pm1)


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda: signs.pack_signs(np.array([1, -1])), "2-D"),
        (lambda: signs.pack_signs(np.array([[0, 1]])), "{-1, +1}"),
        (lambda: signs.unpack_signs(np.zeros((2, 1), np.uint8), 9), "needs 2"),
        (lambda: signs.unpack_signs(np.zeros((2, 2), np.float32), 9), "integer"),
    ],
)
def test_bad_input_is_one_line(call, needle):
    with pytest.raises(signs.SignPackingError, match=None) as err:
        call()
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, ValueError)
