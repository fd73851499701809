import torch

from edgediff.reference.data import load_digits16, train_val_split


def test_digits16_shape_range_and_labels():
    images, labels = load_digits16()
    assert images.shape == (1797, 1, 16, 16)
    assert images.dtype == torch.float32
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert images.min() == -1.0 and images.max() > 0.9
    assert sorted(labels.unique().tolist()) == list(range(10))


def test_split_is_seeded_and_disjoint():
    a_train, a_val = train_val_split(100, seed=3)
    b_train, b_val = train_val_split(100, seed=3)
    assert torch.equal(a_val, b_val)
    assert len(a_val) == 20 and len(a_train) == 80
    assert not set(a_train.tolist()) & set(a_val.tolist())
