"""Property tests: the recipe loader never fails with anything but a one-line EdgediffError, and
the quantizer's integer codes round-trip (codes in range, dequantize-requantize is the identity)."""

from __future__ import annotations

import json

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgediff.errors import EdgediffError
from edgediff.quant import Recipe, default_recipe
from edgediff.quant.primitives import fake_quant_math, qrange, quant_codes
from edgediff.reference.model import build_unet

SETTINGS = settings(max_examples=100, deadline=None, database=None, derandomize=True)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-20, 300) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
FIELDS = [
    "w_bits",
    "w_granularity",
    "a_bits",
    "a_mode",
    "w_range",
    "residual",
    "lora",
    "lowrank",
    "a_range",
    "smooth",
    "w_symmetric",
]
BASE = json.loads(default_recipe("W4A8", build_unet()).to_json())


def _load(doc) -> Recipe | None:
    try:
        return Recipe.from_json(doc if isinstance(doc, str) else json.dumps(doc))
    except EdgediffError as exc:
        assert "\n" not in str(exc) and str(exc)
        return None


@SETTINGS
@given(doc=JSON | st.text(max_size=100))
def test_random_recipe_json_loads_or_raises_one_line(doc):
    _load(doc)


@SETTINGS
@given(data=st.data())
def test_mutated_recipe_loads_or_raises_one_line_and_round_trips(data):
    doc = json.loads(json.dumps(BASE))
    for _ in range(data.draw(st.integers(1, 3))):
        rules = [r for r in doc["rules"] if isinstance(r, dict)] if isinstance(doc.get("rules"), list) else []
        rule = data.draw(st.sampled_from(rules)) if rules else {}
        where = data.draw(st.sampled_from(["field", "pattern", "quant", "top"]))
        if where == "field" and isinstance(rule.get("quant"), dict):
            rule["quant"][data.draw(st.sampled_from(FIELDS + ["extra"]))] = data.draw(JSON)
        elif where == "pattern":
            rule["pattern"] = data.draw(JSON)
        elif where == "quant":
            rule["quant"] = data.draw(JSON)
        else:
            doc[data.draw(st.sampled_from(["rules", "format", "name", "other"]))] = data.draw(JSON)
    recipe = _load(doc)
    if recipe is not None:  # what loads is written back to the same recipe
        assert Recipe.from_json(recipe.to_json()) == recipe


@SETTINGS
@given(
    bits=st.integers(1, 8),
    seed=st.integers(0, 2**16),
    scale=st.floats(1e-4, 10.0),
    zero=st.integers(0, 255),
    spread=st.floats(0.1, 1e3),
)
def test_codes_in_range_and_requantizing_is_the_identity(bits, seed, scale, zero, spread):
    """q = clip(round(x/s) + z, 0, 2^b - 1) is in range; dequantize then quantize gives q back,
    and fake quantization is idempotent (docs/methods.md 6.1)."""
    lo, hi = qrange(bits)
    z = torch.tensor(min(zero, hi), dtype=torch.int32)
    s = torch.tensor(scale, dtype=torch.float32)
    x = torch.randn(512, generator=torch.Generator().manual_seed(seed)) * spread
    q = quant_codes(x, s, z, lo, hi)
    assert q.dtype == torch.int32 and int(q.min()) >= lo and int(q.max()) <= hi
    deq = (q - z).to(torch.float32) * s
    assert torch.equal(quant_codes(deq, s, z, lo, hi), q)
    y = fake_quant_math(x, s, z, lo, hi)
    assert torch.equal(y, deq)
    assert torch.equal(fake_quant_math(y, s, z, lo, hi), y)
