"""The attention control with tensor inputs only, for export (docs/methods.md 5.6).

`ControlledUNet(unet)` is called as `(sample, timestep, encoder_hidden_states, mca_masks,
mca_mode)` with one row per group (2 with guidance: conditioned, null) and the three streams
(subject, condition, target) packed on the next axis: `sample` (G, 3C, H, W),
`encoder_hidden_states` (G, 3S, D), `timestep` (G,); `mca_masks` (G, 2, H, W) holds `M_S` and
`M_C` on the sample grid, `mca_mode` (G, L) the mode of each self-attention layer in
`self_attention_layers` order (0 plain, 1 SAGI, 2 SALQ); row 0 of both is used. The output is
(G, 3C, H, W). Packing the streams keeps the graph's batch axis the group count, so the batch
stays dynamic without a divisibility constraint. Every self-attention layer computes plain, SAGI
and SALQ outputs for the target and selects with `Where`; masks are resized in the graph (max
pooling). Only standard ops: MatMul, Softmax, Where, MaxPool, Mul/Add, Reshape.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgediff.customize.attention import self_attention_layers
from edgediff.customize.masks import token_grid


class _State:
    masks: Tensor | None = None
    mode: Tensor | None = None


def _masked(q: Tensor, k: Tensor, v: Tensor, keys: Tensor, scale: float) -> Tensor:
    """`masked_attention` without a data-dependent branch: no allowed key gives zeros."""
    logits = (q @ k.transpose(-1, -2)) * scale
    logits = logits.masked_fill(~keys, float("-inf"))
    probs = torch.where(keys.any(), logits.softmax(-1), torch.zeros_like(logits))
    return probs @ v


class TensorMCAProcessor:
    """Self-attention of layer `index` with the mode and masks read from the shared state."""

    def __init__(self, state: _State, index: int):
        self.state, self.index = state, index

    def __call__(
        self,
        attn,
        hidden_states: Tensor,
        encoder_hidden_states=None,
        attention_mask=None,
        temb=None,
        *args,
        **kwargs,
    ) -> Tensor:
        b, n, _ = hidden_states.shape
        heads = attn.heads

        def split(x: Tensor) -> Tensor:
            return x.reshape(b, n, heads, -1).transpose(1, 2)

        q, k, v = (
            split(attn.to_q(hidden_states)),
            split(attn.to_k(hidden_states)),
            split(attn.to_v(hidden_states)),
        )
        scale = attn.scale
        plain = ((q @ k.transpose(-1, -2)) * scale).softmax(-1) @ v
        masks = self.state.masks[0]
        hw = token_grid(tuple(masks.shape[-2:]), n)
        tok = F.adaptive_max_pool2d(masks[None], hw)[0].reshape(2, n) > 0.5
        m_s, m_c = tok[0], tok[1]
        w = m_c.to(q.dtype)[:, None]
        q, k, v = (x.unflatten(0, (-1, 3)) for x in (q, k, v))  # (G, 3, heads, n, d)
        (q_s, q_c, q_t), (k_s, k_c, _), (v_s, v_c, _) = (x.unbind(1) for x in (q, k, v))
        sagi = w * _masked(q_s, k_s, v_s, m_s, scale) + (1 - w) * _masked(q_c, k_c, v_c, ~m_c, scale)
        salq = w * _masked(q_t, k_s, v_s, m_s, scale) + (1 - w) * _masked(q_t, k_c, v_c, ~m_c, scale)
        mode = self.state.mode[0, self.index]
        plain = plain.unflatten(0, (-1, 3))
        target = torch.where(mode == 1, sagi, torch.where(mode == 2, salq, plain[:, 2]))
        out = torch.stack([plain[:, 0], plain[:, 1], target], 1).flatten(0, 1)
        out = out.transpose(1, 2).reshape(b, n, -1)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def _upsample_forward(self, hidden_states: Tensor, output_size=None, *args, **kwargs) -> Tensor:
    """diffusers' `Upsample2D.forward` without its batch-size branches (`.contiguous()` for large
    batches, same values), which put a guard `3 G < 64` on the packed batch that the exporter
    cannot express."""
    if self.norm is not None:
        hidden_states = self.norm(hidden_states.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    if self.use_conv_transpose:
        return self.conv(hidden_states)
    if self.interpolate:
        if output_size is None:
            hidden_states = F.interpolate(hidden_states, scale_factor=2.0, mode="nearest")
        else:
            hidden_states = F.interpolate(hidden_states, size=output_size, mode="nearest")
    if self.use_conv:
        hidden_states = (self.conv if self.name == "conv" else self.Conv2d_0)(hidden_states)
    return hidden_states


class ControlledUNet(nn.Module):
    """A UNet2DConditionModel whose self-attention takes the control as inputs (module doc).

    Installs its processors (and the branch-free upsampling) on `unet` itself: pass a copy when
    the model is used elsewhere."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet
        self.config = unet.config
        self.state = _State()
        self.layers = self_attention_layers(unet)
        procs = dict(unet.attn_processors)
        for i, name in enumerate(self.layers):
            procs[name] = TensorMCAProcessor(self.state, i)
        unet.set_attn_processor(procs)
        from diffusers.models.upsampling import Upsample2D

        for m in unet.modules():
            if isinstance(m, Upsample2D):
                m.forward = types.MethodType(_upsample_forward, m)

    def forward(self, sample, timestep, encoder_hidden_states, mca_masks, mca_mode, return_dict=False):
        c = sample.shape[1] // 3
        x = sample.unflatten(1, (3, c)).flatten(0, 1)
        t = timestep.repeat_interleave(3)
        ehs = encoder_hidden_states.unflatten(1, (3, -1)).flatten(0, 1)
        self.state.masks, self.state.mode = mca_masks, mca_mode
        try:
            out = self.unet(x, t, encoder_hidden_states=ehs, return_dict=False)[0]
        finally:
            self.state.masks = self.state.mode = None
        return (out.unflatten(0, (-1, 3)).flatten(1, 2),)
