"""CogVideoX's reference-attention processor: joint attention over text and image tokens in one
sequence that records or injects reference K/V through the `vidinv.attention` channel.

RoPE is applied per group (DESIGN fact 4): the reference's image keys are rotated with the same
table as the sample's own, so a token and its reference twin share a position; text tokens are
never rotated. Without RoPE (CogVideoX-2B, absolute position embeddings) nothing is rotated.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .. import errors
from ..attention import Channel, attend_reference, project_heads

LAYER = "transformer_blocks.{}.attn1.processor"


def processors(transformer, blocks) -> Callable[[Channel], dict]:
    """The processors for `attention.installed`: one per transformer block of `blocks` (indices, the
    keys their K/V are recorded under), by processor name; a transformer with other attention layers
    is refused."""
    unexpected = [n for n in transformer.attn_processors if n.split(".")[0] != "transformer_blocks"]
    if unexpected:
        raise errors.InputError(f"unexpected attention layer {unexpected[0]!r}",
                                "Reference attention supports CogVideoX transformers only.")
    return lambda channel: {LAYER.format(i): ReferenceAttnProcessor(i, channel) for i in blocks}


def rotate_image_tokens(x: torch.Tensor, table, text_len: int) -> torch.Tensor:
    """Apply RoPE to the image tokens ``x[:, :, text_len:]`` of ``[B, heads, L, d]``; text
    tokens are left as they are. `table` None (CogVideoX-2B) means no rotation."""
    if table is None:
        return x
    from diffusers.models.embeddings import apply_rotary_emb
    return torch.cat([x[:, :, :text_len], apply_rotary_emb(x[:, :, text_len:], table)], dim=2)


def rotate_reference(k_ref: torch.Tensor, table, text_len: int) -> torch.Tensor:
    """Rotate the reference group's image keys with the sample's own table: a token and its
    reference twin sit at the same position (the per-group RoPE of DESIGN fact 4)."""
    return rotate_image_tokens(k_ref, table, text_len)


class ReferenceAttnProcessor:
    """CogVideoX joint attention (text and image tokens in one sequence) that can record or inject
    reference keys and values. Holds only its block index and the channel; all state comes per call.
    A Recording that records text (``recording.text``) keeps the reference's text tokens too; one
    that does not gives the sample's own text logits ``log(1 + weight)`` instead (fact 5 holds)."""

    def __init__(self, index: int, channel: Channel):
        self.index, self.channel = index, channel

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None):
        if attention_mask is not None:
            raise NotImplementedError("CogVideoX attention takes no mask; reference attention does not add one")
        text_len = encoder_hidden_states.size(1)
        q, k, v = project_heads(attn, torch.cat([encoder_hidden_states, hidden_states], dim=1))

        rec = self.channel.recording(self.index)
        if rec is not None:
            keep = slice(None) if rec.text else slice(text_len, None)
            rec.record(self.index, k[:, :, keep], v[:, :, keep], text_len if rec.text else 0)

        q = rotate_image_tokens(q, image_rotary_emb, text_len)
        k = rotate_image_tokens(k, image_rotary_emb, text_len)
        if self.channel.probe is not None:  # an edit mask from the image queries' attention to the text
            self.channel.probe.add(q[:, :, text_len:], k[:, :, :text_len])
        inj = self.channel.injection(self.index)
        if inj is not None:
            k_ref, v_ref, ref_text = inj.reference(self.index)
            k_ref = rotate_reference(k_ref, image_rotary_emb, ref_text)
            out = attend_reference(q, k, v, k_ref, v_ref, inj.rows, text_len, inj.weight, not inj.text)
            del k_ref, v_ref  # this layer's reference K/V: nothing keeps them past it
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).flatten(2)
        out = attn.to_out[1](attn.to_out[0](out))
        return out[:, text_len:], out[:, :text_len]
