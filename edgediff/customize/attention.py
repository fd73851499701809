"""The attention control of MCA-Ctrl (docs/methods.md 5.2) as diffusers attention processors.

The batch holds `G` groups (2 with classifier-free guidance: conditioned, null) of three streams
in the order subject, condition, target. On self-attention (`attn1` of each transformer block)
the subject and condition streams run ordinary attention; in a controlled step x layer the
target's attention output becomes

    F*_T = M_C * softmax(q_fg K_S^T / sqrt(d), keys in M_S) V_S
         + (1 - M_C) * softmax(q_bg K_C^T / sqrt(d), keys outside M_C) V_C

with `q_fg = Q_S, q_bg = Q_C` for SAGI (global injection) and `q_fg = q_bg = Q_T` for SALQ (local
query). Cross-attention is never edited; its maps can be recorded for subject localization.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgediff.customize.errors import CustomizeError
from edgediff.customize.masks import mask_to_tokens, token_grid
from edgediff.customize.schedule import PARTS, ControlSchedule, Mode

STREAMS = 3  # subject, condition, target


def masked_attention(q: Tensor, k: Tensor, v: Tensor, keys: Tensor, scale: float | None = None) -> Tensor:
    """`softmax(q k^T * scale` with the logits of keys outside `keys` set to -inf`) v`.

    q (..., N, d), k and v (..., M, d), keys a bool (M,); no allowed key gives zeros."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if not bool(keys.any()):
        return q.new_zeros(*q.shape[:-1], v.shape[-1])
    logits = (q @ k.transpose(-1, -2)) * scale
    logits = logits.masked_fill(~keys.to(logits.device), float("-inf"))
    return logits.softmax(dim=-1) @ v


def mca_output(
    q_fg: Tensor,
    q_bg: Tensor,
    kv_subject: tuple[Tensor, Tensor],
    kv_condition: tuple[Tensor, Tensor],
    m_s: Tensor,
    m_c: Tensor,
    scale: float | None = None,
) -> Tensor:
    """`M_C * F_fg + (1 - M_C) * F_bg` (module doc): the subject's keys in `M_S`, the condition's
    keys outside `M_C`; masks are bool (N,) on the layer's token grid."""
    f_fg = masked_attention(q_fg, *kv_subject, m_s, scale)
    f_bg = masked_attention(q_bg, *kv_condition, ~m_c, scale)
    w = m_c.to(device=f_fg.device, dtype=f_fg.dtype)[:, None]
    return w * f_fg + (1 - w) * f_bg


def sagi(qkv_subject, qkv_condition, m_s: Tensor, m_c: Tensor, scale: float | None = None) -> Tensor:
    """SAGI: the sources' own masked self-attention, injected (the target's Q/K/V are not used)."""
    (q_s, k_s, v_s), (q_c, k_c, v_c) = qkv_subject, qkv_condition
    return mca_output(q_s, q_c, (k_s, v_s), (k_c, v_c), m_s, m_c, scale)


def salq(q_target: Tensor, kv_subject, kv_condition, m_s: Tensor, m_c: Tensor, scale: float | None = None):
    """SALQ: the target's queries over the subject's keys in `M_S` and the condition's outside `M_C`."""
    return mca_output(q_target, q_target, kv_subject, kv_condition, m_s, m_c, scale)


@dataclass
class Controller:
    """Shared state of the processors: schedule, current step, masks (bool (H, W) on the sample
    grid) and, while `recording`, the cross-attention maps of batch row `record_row`."""

    schedule: ControlSchedule
    sample_hw: tuple[int, int]
    m_s: Tensor | None = None
    m_c: Tensor | None = None
    step: int = 0
    recording: bool = False
    record_row: int = 0
    _tokens: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    _maps: list[Tensor] = field(default_factory=list)

    def set_masks(self, m_s: Tensor, m_c: Tensor) -> None:
        self.m_s, self.m_c = m_s.bool(), m_c.bool()
        self._tokens.clear()

    def mode(self, part: str) -> Mode:
        if self.m_s is None or self.m_c is None:
            return Mode.PLAIN
        return self.schedule.mode(self.step, part)

    def token_masks(self, n_tokens: int, device) -> tuple[Tensor, Tensor]:
        """(M_S, M_C) resized to a layer of `n_tokens` tokens, flattened (cached per size)."""
        if n_tokens not in self._tokens:
            self._tokens[n_tokens] = (mask_to_tokens(self.m_s, n_tokens), mask_to_tokens(self.m_c, n_tokens))
        m_s, m_c = self._tokens[n_tokens]
        return m_s.to(device), m_c.to(device)

    def record(self, probs: Tensor) -> None:
        """Keep the (query tokens, keys) map of one cross-attention call, upsampled to the sample grid."""
        n, k = probs.shape
        h, w = token_grid(self.sample_hw, n)
        maps = probs.T.reshape(1, k, h, w).float()
        self._maps.append(F.interpolate(maps, size=self.sample_hw, mode="bilinear", align_corners=False)[0])

    def attention_maps(self) -> Tensor:
        """The recorded maps averaged over layers and steps, (keys, H, W)."""
        if not self._maps:
            raise CustomizeError("no cross-attention maps were recorded: the model has no cross-attention")
        return torch.stack(self._maps).mean(0)


def _heads(x: Tensor, heads: int) -> Tensor:
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


class MCASelfAttnProcessor:
    """Self-attention of one layer: the wrapped processor when plain, SAGI/SALQ on the target otherwise."""

    def __init__(self, controller: Controller, part: str, inner):
        self.controller, self.part, self.inner = controller, part, inner

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: Tensor,
        encoder_hidden_states=None,
        attention_mask=None,
        temb=None,
        *args,
        **kwargs,
    ) -> Tensor:
        mode = self.controller.mode(self.part)
        if mode is Mode.PLAIN or encoder_hidden_states is not None:
            return self.inner(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
            )
        if hidden_states.ndim != 3 or attn.group_norm is not None or attn.spatial_norm is not None:
            raise CustomizeError("attention control supports transformer-block self-attention (B, N, C) only")
        b, n, _ = hidden_states.shape
        if b % STREAMS:
            raise CustomizeError(f"controlled batch of {b} rows is not groups of {STREAMS} streams")
        q, k, v = (_heads(f(hidden_states), attn.heads) for f in (attn.to_q, attn.to_k, attn.to_v))
        if getattr(attn, "norm_q", None) is not None:
            q = attn.norm_q(q)
        if getattr(attn, "norm_k", None) is not None:
            k = attn.norm_k(k)
        out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
        m_s, m_c = self.controller.token_masks(n, hidden_states.device)
        for g in range(b // STREAMS):
            s, c, t = STREAMS * g, STREAMS * g + 1, STREAMS * g + 2
            if mode is Mode.SAGI:
                target = sagi((q[s], k[s], v[s]), (q[c], k[c], v[c]), m_s, m_c, attn.scale)
            else:
                target = salq(q[t], (k[s], v[s]), (k[c], v[c]), m_s, m_c, attn.scale)
            out[t] = target.to(out.dtype)
        out = out.transpose(1, 2).reshape(b, n, -1)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


class CrossAttnRecorder:
    """Cross-attention of one layer, unchanged; while recording, keeps the head-averaged
    attention probabilities of the controller's `record_row`."""

    def __init__(self, controller: Controller, inner):
        self.controller, self.inner = controller, inner

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: Tensor,
        encoder_hidden_states=None,
        attention_mask=None,
        temb=None,
        *args,
        **kwargs,
    ) -> Tensor:
        ctrl = self.controller
        if ctrl.recording and encoder_hidden_states is not None and hidden_states.ndim == 3:
            row = ctrl.record_row
            q = _heads(attn.to_q(hidden_states[row : row + 1]), attn.heads)
            ehs = encoder_hidden_states[row : row + 1]
            if attn.norm_cross:
                ehs = attn.norm_encoder_hidden_states(ehs)
            k = _heads(attn.to_k(ehs), attn.heads)
            probs = ((q @ k.transpose(-1, -2)) * attn.scale).softmax(-1)
            ctrl.record(probs[0].mean(0).detach().cpu())
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)


def _part(name: str) -> str:
    head = name.split(".")[0]
    return {"down_blocks": "down", "mid_block": "mid", "up_blocks": "up"}.get(head, "mid")


def self_attention_layers(unet: nn.Module) -> list[str]:
    """Processor names of the self-attention layers (`attn1`) in UNet order: encoder, mid, decoder."""
    names = [k for k in unet.attn_processors if k.endswith("attn1.processor")]
    return sorted(names, key=lambda k: PARTS.index(_part(k)))


def layer_parts(unet: nn.Module) -> list[str]:
    """The UNet part (`down`, `mid`, `up`) of each layer of `self_attention_layers`, in that order."""
    return [_part(name) for name in self_attention_layers(unet)]


@contextlib.contextmanager
def controlled(unet: nn.Module, controller: Controller) -> Iterator[Controller]:
    """Install the control on `unet`'s attention (self: controlled, cross: recorded); restore after."""
    if not hasattr(unet, "attn_processors"):
        raise CustomizeError(f"{type(unet).__name__} has no attention processors; use a UNet2DConditionModel")
    original = dict(unet.attn_processors)
    if not self_attention_layers(unet):
        raise CustomizeError(f"{type(unet).__name__} has no transformer self-attention layers to control")
    new = {}
    for name, proc in original.items():
        if name.endswith("attn1.processor"):
            new[name] = MCASelfAttnProcessor(controller, _part(name), proc)
        elif name.endswith("attn2.processor"):
            new[name] = CrossAttnRecorder(controller, proc)
        else:
            new[name] = proc
    unet.set_attn_processor(new)
    try:
        yield controller
    finally:
        unet.set_attn_processor(original)
