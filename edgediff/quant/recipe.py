"""Recipes: which module gets which quantization (docs/design.md section 2).

A `Recipe` is an ordered tuple of `(pattern, LayerQuant | None)` rules. Patterns are
fnmatch-style and are matched against a layer's module name and the names of its ancestors
(so `down_blocks.1` covers every layer inside it); the first matching rule wins, `None` keeps
the layer in floating point, and a layer that no rule matches stays FP. Recipes round-trip
through JSON (`to_json` / `from_json`).
"""

from __future__ import annotations

import fnmatch
import json
from collections import Counter
from dataclasses import asdict, dataclass, replace
from typing import Any

from torch import nn

from edgediff.bitspec import BitSetting, check_bits
from edgediff.errors import EdgediffError
from edgediff.quant.quantizers import ACT_MODES as A_MODES
from edgediff.quant.quantizers import W_GRANULARITIES
from edgediff.quant.ranges import RANGE_METHODS as W_RANGES

A_RANGES = ("lp", "minmax")
RESIDUAL_SELECTIONS = ("kurtosis", "error")
TQE_LAYOUTS = ("spatial", "temporal")
RECIPE_FORMAT = 1


def _choice(value: str, options: tuple[str, ...], what: str) -> None:
    if value not in options:
        raise EdgediffError(f"unknown {what} {value!r}: use one of {', '.join(options)}")


@dataclass(frozen=True)
class ResidualSpec:
    """Binary residual (docs/methods.md 2.1) on `fraction` of the output channels, chosen by
    `selection`: kurtosis of the (pre-scaled) weight rows, or the largest quantization error."""

    fraction: float = 0.1
    selection: str = "kurtosis"

    def __post_init__(self):
        if not 0.0 < self.fraction <= 1.0:
            raise EdgediffError(
                f"residual fraction {self.fraction} outside (0, 1]: e.g. 0.1 for 10% of channels"
            )
        _choice(self.selection, RESIDUAL_SELECTIONS, "residual selection")


@dataclass(frozen=True)
class LoRASpec:
    """LoRA of rank `rank`: `merged` before weight quantization (QALoRA, docs/methods.md 6.6) or
    `additive` FP branch after it (docs/methods.md 6.7)."""

    rank: int = 32
    mode: str = "merged"

    def __post_init__(self):
        if not isinstance(self.rank, int) or self.rank < 1:
            raise EdgediffError(f"LoRA rank must be a positive int, got {self.rank!r}")
        _choice(self.mode, ("merged", "additive"), "LoRA mode")


@dataclass(frozen=True)
class LowRankSpec:
    """Low-rank FP branch on the quantized input (docs/methods.md 3.2); `frames` adds a per-frame M."""

    rank: int = 1
    frames: int | None = None

    def __post_init__(self):
        if not isinstance(self.rank, int) or self.rank < 1:
            raise EdgediffError(f"low-rank rank must be a positive int, got {self.rank!r}")
        if self.frames is not None and (not isinstance(self.frames, int) or self.frames < 1):
            raise EdgediffError(f"low-rank frames must be a positive int or None, got {self.frames!r}")


@dataclass(frozen=True)
class TQESpec:
    """Q-VDiT's token-aware quantization estimator (docs/methods.md 3.2): rank-`rank` FP branch
    `(M ⊙ Q(X))·α·βᵀ` with the per-frame factor `M` of Eq. 9 computed from each input (`m=False`:
    `M = 1`). `layout` says where the frames are in the layer input: `spatial` = `(B·F, N, C)`,
    rows sample-major (`b·F + f`); `temporal` = `(B·N, F, C)`, frames on dim -2, rows `b·N + n`,
    which needs `tokens` = N to group the rows of one sample."""

    frames: int
    layout: str = "spatial"
    tokens: int | None = None
    rank: int = 1
    m: bool = True

    def __post_init__(self):
        _choice(self.layout, TQE_LAYOUTS, "TQE layout")
        for what, v in (("frames", self.frames), ("rank", self.rank)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise EdgediffError(f"TQE {what} must be a positive int, got {v!r}")
        if self.layout == "temporal" and (not isinstance(self.tokens, int) or self.tokens < 1):
            raise EdgediffError("a temporal-layout TQE needs tokens= (spatial tokens per frame)")


@dataclass(frozen=True)
class LayerQuant:
    """How to quantize one layer. `w_bits`: int or one int per output channel (1..8).
    `a_bits=None` keeps the input FP. `smooth` adds the per-input-channel pre-scale δ
    (docs/methods.md 1.2(2)); `a_range` is the activation range init (lp or minmax).
    `w_symmetric` fixes each weight channel's zero point at the middle code `2^(b-1)` and searches
    a range symmetric about 0, so `q - z` is a signed code with zero point 0 (docs/methods.md 1.7): the
    export then ships int8 weights, which ONNX Runtime runs with its faster u8s8 kernels."""

    w_bits: int | tuple[int, ...]
    w_granularity: str = "per_channel"
    a_bits: int | None = 8
    a_mode: str = "static"
    w_range: str = "lp"
    residual: ResidualSpec | None = None
    lora: LoRASpec | None = None
    lowrank: LowRankSpec | None = None
    a_range: str = "lp"
    smooth: bool = False
    w_symmetric: bool = False
    tqe: TQESpec | None = None

    def __post_init__(self):
        if isinstance(self.w_bits, list):
            object.__setattr__(self, "w_bits", tuple(self.w_bits))
        bits = self.w_bits if isinstance(self.w_bits, tuple) else (self.w_bits,)
        for b in bits:
            if not isinstance(b, int):
                raise EdgediffError(f"weight bits {b!r} must be integers 1..8")
            check_bits(b, "weight bits")
        if self.a_bits is not None:
            if not isinstance(self.a_bits, int):
                raise EdgediffError(f"activation bits {self.a_bits!r} must be an integer 1..8 or None (A16)")
            check_bits(self.a_bits, "activation bits")
        _choice(self.w_granularity, W_GRANULARITIES, "weight granularity")
        _choice(self.a_mode, A_MODES, "activation mode")
        _choice(self.w_range, W_RANGES, "weight range method")
        _choice(self.a_range, A_RANGES, "activation range method")
        for flag in ("smooth", "w_symmetric"):
            if not isinstance(getattr(self, flag), bool):
                raise EdgediffError(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        if self.w_granularity == "per_tensor" and isinstance(self.w_bits, tuple):
            raise EdgediffError("per-channel bit vectors need w_granularity='per_channel'")
        if self.tqe is not None and self.lowrank is not None:
            raise EdgediffError("a layer takes a TQE branch or a low-rank branch, not both; drop one")

    @classmethod
    def parse(cls, setting: BitSetting | str, **overrides: Any) -> LayerQuant:
        """`LayerQuant.parse("W4A8", a_mode="per_step")` (or a `BitSetting`)."""
        bits = BitSetting.of(setting)
        return cls(w_bits=bits.w, a_bits=bits.a, **overrides)

    @property
    def label(self) -> str:
        """Short label such as `W4A8` (`W4.0A8` style mean for bit vectors, `A16` = FP input)."""
        if isinstance(self.w_bits, tuple):
            w = f"{sum(self.w_bits) / len(self.w_bits):g}"
        else:
            w = str(self.w_bits)
        return f"W{w}A{self.a_bits if self.a_bits is not None else 16}"

    def to_dict(self) -> dict:
        d = asdict(self)
        if isinstance(self.w_bits, tuple):
            d["w_bits"] = list(self.w_bits)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> LayerQuant:
        d = dict(d)
        subs = (("residual", ResidualSpec), ("lora", LoRASpec), ("lowrank", LowRankSpec), ("tqe", TQESpec))
        for key, sub in subs:
            if d.get(key) is not None:
                d[key] = sub(**d[key])
        return cls(**d)


def _matches(name: str, pattern: str) -> bool:
    """Pattern matches the module name or one of its ancestors' names."""
    parts = name.split(".") if name else [""]
    return any(fnmatch.fnmatchcase(".".join(parts[:k]), pattern) for k in range(len(parts), 0, -1))


@dataclass(frozen=True)
class Recipe:
    """Ordered `(pattern, LayerQuant | None)` rules; first match wins; unmatched layers stay FP.

    `bits` is the nominal setting a preset recipe was built for (`default_recipe`, the methods'
    recipes); it stays through `with_name`, the methods' searched recipes and the JSON round trip,
    and `label` derives from it (from the rules for a hand-written recipe without it).
    """

    rules: tuple[tuple[str, LayerQuant | None], ...]
    name: str = "custom"
    bits: BitSetting | None = None

    def __post_init__(self):
        rules = tuple((str(p), q) for p, q in self.rules)
        for p, q in rules:
            if q is not None and not isinstance(q, LayerQuant):
                raise EdgediffError(
                    f"recipe rule {p!r} must map to a LayerQuant or None, got {type(q).__name__}"
                )
        object.__setattr__(self, "rules", rules)
        if self.bits is not None and not isinstance(self.bits, BitSetting):
            raise EdgediffError(f"Recipe.bits must be a BitSetting, got {type(self.bits).__name__}")

    @property
    def label(self) -> str:
        """`W4A8`: the preset's setting, else the most common rule setting (ties: the later rule);
        `FP` when no rule quantizes."""
        if self.bits is not None:
            return self.bits.label
        labels = [q.label for _p, q in self.rules if q is not None]
        if not labels:
            return "FP"
        counts = Counter(labels)
        top = max(counts.values())
        return next(lab for lab in reversed(labels) if counts[lab] == top)

    def match(self, name: str) -> tuple[bool, LayerQuant | None]:
        """`(matched, LayerQuant | None)` of the first rule matching `name`."""
        for pattern, q in self.rules:
            if _matches(name, pattern):
                return True, q
        return False, None

    def validate(self, model: nn.Module) -> None:
        """Every rule pattern must match at least one module name of `model`."""
        names = [n for n, _ in model.named_modules()]
        for pattern, _q in self.rules:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                raise EdgediffError(
                    f"recipe rule {pattern!r} matches no module of {type(model).__name__}; "
                    "check the pattern against model.named_modules()"
                )

    def with_name(self, name: str) -> Recipe:
        return replace(self, name=name)

    def with_symmetric_weights(self) -> Recipe:
        """The same rules with `w_symmetric=True` on every quantized layer (docs/methods.md 1.7)."""
        rules = tuple((p, None if q is None else replace(q, w_symmetric=True)) for p, q in self.rules)
        return replace(self, rules=rules, name=f"{self.name}-symw")

    def to_dict(self) -> dict:
        return {
            "format": RECIPE_FORMAT,
            "name": self.name,
            "bits": None if self.bits is None else self.bits.label,
            "rules": [{"pattern": p, "quant": None if q is None else q.to_dict()} for p, q in self.rules],
        }

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        try:
            rules = tuple(
                (r["pattern"], None if r["quant"] is None else LayerQuant.from_dict(r["quant"]))
                for r in d["rules"]
            )
            bits = BitSetting.parse(d["bits"]) if d.get("bits") else None
            name = d.get("name", "custom")
            if not isinstance(name, str) or not all(isinstance(p, str) for p, _ in rules):
                raise TypeError("'name' and every rule's 'pattern' must be strings")
            return cls(rules=rules, name=name, bits=bits)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
            raise EdgediffError(f"malformed recipe ({detail}); write it with Recipe.to_json") from exc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise EdgediffError(f"recipe is not valid JSON ({exc.msg} at line {exc.lineno})") from exc
        if not isinstance(d, dict):
            raise EdgediffError("recipe JSON must be an object with 'rules'; write it with Recipe.to_json")
        return cls.from_dict(d)


_FIRST = ("conv_in", "pos_embed.proj", "patch_embed.proj")
_LAST = ("conv_out", "proj_out", "proj_out_1", "proj_out_2")
_TIME_EMBEDDERS = ("TimestepEmbedding",)


_TOKEN_BLOCKS = ("transformer_blocks", "temporal_transformer_blocks")


def _is_transformer(model: nn.Module) -> bool:
    from edgediff.models.signature import signature_for_class, supported_classes

    name = type(model).__name__
    return name in supported_classes() and signature_for_class(name).family == "transformer"


def _layers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def default_recipe(bits: BitSetting | str, model: nn.Module, **overrides: Any) -> Recipe:
    """W8A8 for the time-embedding linears, the first and the last layer; `bits` everywhere else.

    First/last are found by name (`conv_in`/`pos_embed.proj`, `conv_out`/`proj_out*`), falling
    back to the first/last Linear/Conv2d of `model.named_modules()`. `overrides` go into the
    main `LayerQuant` (e.g. `a_mode="per_step"`); the W8A8 layers keep a static input quantizer.

    Transformer models (`ModelSignature.family`): the Linear layers of the transformer blocks
    quantize their input per token, dynamically (`dynamic_per_token`: one min-max range per
    token at run time), when the main setting asks for a static range; a token's activations
    (text tokens next to image patches, outlier tokens) do not share one static range well.
    An explicit `per_step` request is kept, since the methods that ask for it train per-step ranges.
    """
    bits = BitSetting.of(bits)
    main = LayerQuant.parse(bits, **overrides)
    edge = LayerQuant(
        w_bits=8, a_bits=8, w_range=main.w_range, a_range=main.a_range, w_symmetric=main.w_symmetric
    )
    layers = _layers(model)
    modules = dict(model.named_modules())
    keep = [n for n, m in modules.items() if type(m).__name__ in _TIME_EMBEDDERS]
    first = [n for n in _FIRST if n in layers] or layers[:1]
    last = [n for n in _LAST if n in layers] or layers[-1:]
    rules = [(n, edge) for n in dict.fromkeys(keep + first + last)]
    if main.a_bits is not None and main.a_mode == "static" and _is_transformer(model):
        token = replace(main, a_mode="dynamic_per_token")
        rules += [(block, token) for block in _TOKEN_BLOCKS if block in modules]
    rules.append(("*", main))
    return Recipe(rules=tuple(rules), name=f"default-{bits.label}", bits=bits)
