"""Wan's reference-attention processor: each block's self-attention (``blocks.{i}.attn1``) records or
injects reference K/V through the `vidinv.attention` channel.

Wan's self-attention holds image tokens only (text enters through ``attn2``, the cross-attention,
whose own processor keeps computing it: `TextProbeProcessor` only reads its queries and text keys
for the edit mask while a probe is set), and rotates queries and keys with 3-D RoPE over (frame, row, column).
The reference's keys are rotated with the sample's own table (DESIGN fact 4): the reference latent
has the sample's shape, so a token and its reference twin share a position, and on reconstruction
the appended keys are exact duplicates (fact 5). Q/K/V are computed as diffusers' `WanAttnProcessor`
computes them: projections, RMS norm across heads, then the head split.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .. import errors
from ..attention import Channel, attend_reference

LAYER = "blocks.{}.attn1.processor"


def processors(transformer, blocks) -> Callable[[Channel], dict]:
    """The processors for `attention.installed`: one per block index of `blocks` (the keys their K/V
    are recorded under), by processor name, and every block's cross-attention wrapped for the edit
    mask's probe; a transformer without those layers is refused."""
    names = set(transformer.attn_processors)
    missing = [i for i in blocks if LAYER.format(i) not in names]
    if missing:
        raise errors.InputError(f"no self-attention layer {LAYER.format(missing[0])!r} in this transformer",
                                "Reference attention supports Wan transformers only.")
    own = transformer.attn_processors
    cross = [n for n in own if n.endswith(".attn2.processor")]
    return lambda channel: {**{n: TextProbeProcessor(own[n], channel) for n in cross},
                            **{LAYER.format(i): ReferenceSelfAttnProcessor(i, channel) for i in blocks}}


def rotate(x: torch.Tensor, rotary_emb) -> torch.Tensor:
    """Wan's RoPE on ``[B, L, heads, d]`` with its (cos, sin) table ``[1, L, 1, d]`` (interleaved pairs)."""
    if rotary_emb is None:
        return x
    cos, sin = rotary_emb
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    return torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).flatten(-2).type_as(x)


def rotate_reference(k_ref: torch.Tensor, rotary_emb) -> torch.Tensor:
    """The reference's keys ``[B, heads, L, d]`` rotated with the sample's own table (fact 4)."""
    return rotate(k_ref.transpose(1, 2), rotary_emb).transpose(1, 2)


def heads(attn, x: torch.Tensor):
    """Unrotated queries, keys and values ``[B, L, heads, d]`` as `WanAttnProcessor` makes them."""
    if getattr(attn, "fused_projections", False):
        q, k, v = attn.to_qkv(x).chunk(3, dim=-1)
    else:
        q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
    q, k = attn.norm_q(q), attn.norm_k(k)
    return (t.unflatten(2, (attn.heads, -1)) for t in (q, k, v))


class ReferenceSelfAttnProcessor:
    """Wan self-attention that can record or inject reference K/V; holds only its block index and the
    channel. Keys are recorded before rotation and rotated with the sample's table when injected."""

    def __init__(self, index: int, channel: Channel):
        self.index, self.channel = index, channel

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if encoder_hidden_states is not None or attention_mask is not None:
            raise NotImplementedError("reference attention handles Wan's self-attention (attn1) only")
        q, k, v = heads(attn, hidden_states)
        rec = self.channel.recording(self.index)
        if rec is not None:
            rec.record(self.index, k.transpose(1, 2), v.transpose(1, 2))
        q, k, v = rotate(q, rotary_emb).transpose(1, 2), rotate(k, rotary_emb).transpose(1, 2), v.transpose(1, 2)
        inj = self.channel.injection(self.index)
        if inj is not None:
            k_ref, v_ref, _ = inj.reference(self.index)
            out = attend_reference(q, k, v, rotate_reference(k_ref, rotary_emb), v_ref, inj.rows, 0, inj.weight, False)
            del k_ref, v_ref  # this layer's reference K/V: nothing keeps them past it
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).flatten(2).type_as(q)
        return attn.to_out[1](attn.to_out[0](out))


class TextProbeProcessor:
    """Wan cross-attention, computed by the model's own processor `inner`; while the channel has a
    probe (`vidinv.editmask.Probe`), the image queries and the text keys are also handed to it. An
    image-to-video block's context is [CLIP image tokens, text tokens]: the probe sees the text part."""

    def __init__(self, inner, channel: Channel):
        self.inner, self.channel = inner, channel

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        probe = self.channel.probe
        if probe is not None:
            text = encoder_hidden_states[:, -probe.tokens.shape[1]:]
            if getattr(attn, "fused_projections", False):
                q, k = attn.to_q(hidden_states), attn.to_kv(text).chunk(2, dim=-1)[0]
            else:
                q, k = attn.to_q(hidden_states), attn.to_k(text)
            q, k = (t.unflatten(2, (attn.heads, -1)).transpose(1, 2) for t in (attn.norm_q(q), attn.norm_k(k)))
            probe.add(q, k)
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
