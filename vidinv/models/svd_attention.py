"""Stable Video Diffusion's reference-attention processor and layers: the UNet's self-attention
records or injects reference K/V through the `vidinv.attention` channel (the mechanism, the
per-step reference pass and the attention math are shared with every family there).

Layers: every spatial transformer block's ``attn1`` (tokens = one frame's pixels; a frame attends to
its reference twin frame); optionally the temporal blocks' ``attn1`` too (tokens = one pixel's frames).
SVD has no RoPE; cross-attention (attn2, one CLIP token) is never touched. Processors are keyed by
their names. ``UNetSpatioTemporalConditionModel.forward`` takes no ``cross_attention_kwargs``
(diffusers 0.42.1), which is why the channel, not call arguments, carries the per-call state.
"""
from __future__ import annotations

from typing import Callable

import torch.nn.functional as F

from .. import errors
from ..attention import Channel, attend_reference, parse_blocks, project_heads

# ----------------------------------------------------------------------------- layers

def self_attention_layers(unet, blocks: str = "all", temporal: bool = False) -> tuple[str, ...]:
    """Processor names of the chosen self-attention layers, in the UNet's module order. `blocks`
    ("all", "0-3", "0,2", "4-") indexes the spatial transformer blocks; with `temporal` the
    temporal block paired with each chosen spatial one is included too."""
    names = list(unet.attn_processors)
    spatial = [n for n in names if ".transformer_blocks." in n and n.endswith(".attn1.processor")]
    if not spatial:
        raise errors.InputError("this UNet has no spatial self-attention layers",
                                "Reference attention supports Stable Video Diffusion UNets only.")
    chosen = [spatial[k] for k in parse_blocks(blocks, len(spatial))]
    if temporal:
        chosen += [n.replace(".transformer_blocks.", ".temporal_transformer_blocks.") for n in chosen]
        missing = [n for n in chosen if n not in names]
        if missing:
            raise errors.InputError(f"no temporal self-attention layer {missing[0]!r}",
                                    "Turn temporal injection off for this UNet.")
    return tuple(n for n in names if n in set(chosen))


# ----------------------------------------------------------------------------- the processor

class ReferenceSelfAttnProcessor:
    """Self-attention as diffusers' `AttnProcessor2_0` computes it for the UNet's attn1 layers,
    recording or injecting reference K/V when the channel holds a state for this call."""

    def __init__(self, name: str, channel: Channel):
        self.name, self.channel = name, channel

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if (encoder_hidden_states is not None or attention_mask is not None or hidden_states.dim() != 3
                or attn.spatial_norm is not None or attn.group_norm is not None):
            raise NotImplementedError("reference attention handles plain self-attention over [N, L, C] only")
        residual = hidden_states
        n = hidden_states.shape[0]
        q, k, v = project_heads(attn, hidden_states)

        rec = self.channel.recording(self.name)
        if rec is not None:
            rec.record(self.name, k, v)
        inj = self.channel.injection(self.name)
        if inj is not None:
            k_ref, v_ref, _ = inj.reference(self.name)
            # attention rows are [R x (frames or pixels)], the reference [B x the same]; each latent
            # row's flag covers its frames (spatial layers) or pixels (temporal layers)
            rows = inj.rows.to(q.device).repeat_interleave(n // inj.rows.shape[0])
            out = attend_reference(q, k, v, k_ref, v_ref, rows, 0, inj.weight, False)
            del k_ref, v_ref  # this layer's reference K/V: nothing keeps them past it
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).flatten(2).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def processors(layers) -> Callable[[Channel], dict]:
    """The processors for `attention.installed`: one per named layer, keyed by its name."""
    return lambda channel: {name: ReferenceSelfAttnProcessor(name, channel) for name in layers}
