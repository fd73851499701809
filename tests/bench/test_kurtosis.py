import pytest
import torch

from bench.kurtosis import summarize


def test_summary_quantiles_and_shares_on_a_hand_computed_case():
    s = summarize(torch.arange(1.0, 12.0))  # 1..11
    assert s["p50"] == 6.0
    assert s["p90"] == pytest.approx(10.0)  # position 0.9 * 10 = 9 -> the 10th value
    assert s["p99"] == pytest.approx(10.9)  # 9.9: interpolated between 10 and 11
    assert s["max"] == 11.0 and s["channels"] == 11
    assert s["share_above_6"] == pytest.approx(5 / 11)  # 7..11, strictly above
    assert s["share_above_10"] == pytest.approx(1 / 11)
