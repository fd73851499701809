import torch

from edgediff.reference.canvas32.classifier import (
    FEATURE_DIM,
    SlotCNN,
    load_slot_classifier,
    save_slot_classifier,
    slot_accuracy,
)


def test_shapes():
    model = SlotCNN().eval()
    x = torch.randn(3, 1, 32, 32)
    assert model(x).shape == (3, 2, 11)
    assert model.features(x).shape == (3, FEATURE_DIM)
    assert torch.equal(model.logits(model.features(x)), model(x))


class _Fixed(SlotCNN):
    """Predicts the labels `preds` whatever the input (for a hand-checked accuracy)."""

    def __init__(self, preds: torch.Tensor) -> None:
        super().__init__()
        self.preds = preds

    def forward(self, x):
        return torch.nn.functional.one_hot(self.preds[: x.shape[0]], 11).float()


def test_slot_accuracy_counts_slot_pairs():
    truth = torch.tensor([[1, 2], [3, 10], [5, 5], [0, 0]])
    preds = torch.tensor([[1, 2], [3, 4], [6, 5], [9, 9]])
    # 4 of 8 (image, slot) pairs agree.
    assert slot_accuracy(_Fixed(preds), torch.zeros(4, 1, 32, 32), truth) == 0.5


def test_save_and_load_round_trip(tmp_path):
    model = SlotCNN().eval()
    save_slot_classifier(model, tmp_path / "c", {"val_slot_accuracy": 0.5})
    again = load_slot_classifier(tmp_path / "c")
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(model(x), again(x))
