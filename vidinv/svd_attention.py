"""Reference attention for the Stable Video Diffusion UNet: the sample's self-attention also
attends to the keys and values that the inversion trajectory produces at the same step.

Same idea as `vidinv.attention` (CogVideoX): at each guided step the trajectory latent for that
step runs through the same UNet (the *reference pass*, with the source conditioning); the
processors of the chosen self-attention layers record their K/V and the pass stops once the last
of them has recorded. The sample pass (all CFG rows in one call) then attends to
``[own K/V ; reference K/V]`` with ``log(weight)`` on the reference logits (weight 1 = plain
concatenation, 0 = off), through the same `vidinv.attention.attend_reference` as CogVideoX.
SVD has no RoPE; cross-attention (attn2, one CLIP token) is never touched.

Layers: every spatial transformer block's ``attn1`` (tokens = one frame's pixels; a frame attends to
its reference twin frame); optionally the temporal blocks' ``attn1`` too (tokens = one pixel's frames).
With identical streams the concatenated keys are duplicates with identical values, so the output is
unchanged for any weight (DESIGN fact 5). Under CFG that holds row by row only: each CFG row's
reference must be made with the conditioning that row had at inversion (`vidinv.svd_inversion`
builds the reference pass that way), or, with ``rows="conditional"``, only the conditional row
receives one.

**Per-call state.** ``UNetSpatioTemporalConditionModel.forward`` takes no ``cross_attention_kwargs``
(diffusers 0.42.1), so state cannot travel with the call. Instead `installed()` creates a `Channel`,
the processors it installs hold that channel, and ``channel.using(state)`` sets the state for exactly
one UNet call (reset in ``finally``). Nothing is written on the model; when the block ends the
original processors come back and the channel dies with ours.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable

import torch
import torch.nn.functional as F

from . import errors
from .attention import StopReference, attend_reference, cfg_row_mask, check_rows, parse_blocks

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


# ----------------------------------------------------------------------------- per-call state

@dataclasses.dataclass(eq=False)
class Recording:
    """State of a reference pass: collects K/V ``[N, heads, L, d]`` per layer name."""
    layers: frozenset
    kv: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(eq=False)
class Injection:
    """State of a sample pass: the recorded K/V of this step."""
    recording: Recording
    rows: torch.Tensor  # [R] bool: which latent rows of the call receive the reference
    weight: float


class Channel:
    """Where the installed processors look for the current call's state (None = plain attention)."""

    def __init__(self):
        self.state = None

    @contextlib.contextmanager
    def using(self, state):
        if self.state is not None:
            raise RuntimeError("reference attention state is already set: calls do not nest")
        self.state = state
        try:
            yield state
        finally:
            self.state = None


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
        n, length, _ = hidden_states.shape
        heads = attn.heads
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        d = k.shape[-1] // heads
        q, k, v = (t.view(n, -1, heads, d).transpose(1, 2) for t in (q, k, v))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)

        state = self.channel.state
        if isinstance(state, Recording) and self.name in state.layers:
            state.kv[self.name] = (k, v)
            if len(state.kv) == len(state.layers):
                raise StopReference
        if isinstance(state, Injection) and state.weight > 0 and self.name in state.recording.kv:
            k_ref, v_ref = state.recording.kv[self.name]
            # attention rows are [R x (frames or pixels)], the reference [B x the same]; each latent
            # row's flag covers its frames (spatial layers) or pixels (temporal layers)
            rows = state.rows.to(q.device).repeat_interleave(n // state.rows.shape[0])
            out = attend_reference(q, k, v, k_ref, v_ref, rows, 0, state.weight, False)
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(n, -1, heads * d).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


@contextlib.contextmanager
def installed(unet, layers):
    """Swap reference processors into the named self-attention layers for the duration of the
    block and yield their `Channel`; the UNet's own processors come back in ``finally``."""
    saved = unet.attn_processors
    unknown = [n for n in layers if n not in saved]
    if unknown:
        raise errors.InputError(f"no attention layer {unknown[0]!r} in this UNet", "Choose layers of this model.")
    channel = Channel()
    ours = dict(saved)
    ours.update({n: ReferenceSelfAttnProcessor(n, channel) for n in layers})
    unet.set_attn_processor(ours)
    try:
        yield channel
    finally:
        unet.set_attn_processor(saved)


# ----------------------------------------------------------------------------- one guided step

def per_step(channel: Channel, layers, reference_latent: Callable[[int], torch.Tensor],
             reference_call: Callable[[torch.Tensor, int], object], weight: float = 1.0, rows: str = "all",
             cfg: bool = False, active: Callable[[int], bool] | None = None):
    """``attention(i, x)`` for `vidinv.models.svd.make_denoiser`: at step i, run the reference pass
    (``reference_call(reference_latent(i), i)``: one row per video, or one per CFG row) while the
    channel records, then return the context that injects the recording into this step's sample
    call. Outside `active` steps, or at weight 0, it returns None (plain attention)."""
    layers = frozenset(layers)
    check_rows(rows)  # a bad `rows` fails here, before any model call

    def attention(i: int, x: torch.Tensor):
        if weight == 0.0 or (active is not None and not active(i)):
            return None
        rec = Recording(layers)
        with channel.using(rec):
            try:
                reference_call(reference_latent(i), i)
            except StopReference:
                pass
        if set(rec.kv) != set(layers):
            raise RuntimeError(f"the reference pass recorded {len(rec.kv)} of {len(layers)} layers")
        return channel.using(Injection(rec, cfg_row_mask(x.shape[0], cfg, rows), weight))

    return attention
