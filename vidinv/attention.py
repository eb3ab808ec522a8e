"""Reference attention, one mechanism for every model family: the sample's queries also attend to
the keys and values that the inversion trajectory produces at the same step.

At each guided step the trajectory latent for that step runs through the same network (the
*reference call*, with the conditioning used at inversion) beside the sample call (all CFG rows in
one call), layer by layer (`Lockstep`): when the sample call reaches a chosen attention layer, the
reference call runs on to that layer and hands over its keys and values, the sample attends to
``[own K/V ; reference K/V]`` with ``log(weight)`` on the reference logits (weight 1 = plain
concatenation, 0 = off) and drops them. So no K/V is held across layers (DESIGN fact 3), and the
reference call stops after the last chosen layer. With identical streams the concatenated keys are
duplicates with identical values, so the output is unchanged for any weight (DESIGN fact 5); under
CFG that holds row by row only, so each CFG row's reference is made with the conditioning that row
had at inversion (`reference_per_cfg_row`).

A family supplies the processors (`vidinv.models.cogvideox_attention`: joint text-image attention
with RoPE per token group, DESIGN fact 4; `vidinv.models.wan_attention`; `vidinv.models.svd_attention`:
the UNet's self-attention) for the layers it chooses; ComfyUI's own Wan models get the same
mechanism through a MODEL patch (`nodes.native.ReferencePatch`); everything else is here.

**Per-call state.** Processors hold a `Channel`, and ``channel.using(state)`` sets the state for
exactly one network call in the calling thread (reset in ``finally``): a `Recording` in the
reference call, an `Injection` in the sample call, nothing for plain attention. Nothing is written
on the model; `installed()` swaps the processors in for one block and restores the originals in
``finally`` (success, error or interrupt).

**Why a thread, not one batch.** The reference rows could also ride in the sample call's batch. The
helper thread keeps each call exactly what it was (its rows, conditioning, timestep, text length,
expert, image conditioning, and core's own model call on the native path), so the outputs are the
two-pass outputs bit for bit, and the two calls' transient activations never coexist: only one
runs at a time, the other waits with its hidden state (BENCHMARKS.md section 11 counts both).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import threading
from typing import Callable

import torch
import torch.nn.functional as F

from . import errors
from .errors import shorten

ROWS = ("all", "conditional")
REFERENCE_TEXT = ("source", "edit")


# ----------------------------------------------------------------------------- options

@dataclasses.dataclass(frozen=True)
class ReferenceOptions:
    """What the Reference Attention node sets.

    blocks: "all", or indices and ranges like "0-7", "0,2,4", "10-" (open end).
    start, end: fraction of the sampling steps where injection is on (``start <= i/N < end``).
    weight: log-bias ``log(weight)`` on the reference logits; 1 = plain concatenation, 0 = off.
    text: also inject the reference's text tokens. When off, the sample's own text logits get
        ``log(1 + weight)`` so that the text keeps its share of attention (and fact 5 holds).
    rows: inject into "all" CFG rows, or only the "conditional" one.
    reference_text: the reference pass uses the "source" conditioning (the inversion's) or the
        "edit" conditioning being sampled (the published recipe).
    temporal: Stable Video Diffusion: also inject into the temporal self-attention paired with each
        chosen block (CogVideoX's attention is already spatio-temporal).

    Each family checks the parts it has (`Family.reference_options`): text and "edit" apply to text
    families only, temporal to SVD only.

    Defaults (weight 4, text off) come from the edit benchmark on the bundled model (BENCHMARKS.md):
    with the reference's text the source colour leaks into colour edits; a stronger pull keeps
    the path. Any setting reconstructs exactly with the source prompt (fact 5).
    """
    blocks: str = "all"
    start: float = 0.0
    end: float = 1.0
    weight: float = 4.0
    text: bool = False
    rows: str = "all"
    reference_text: str = "source"
    temporal: bool = False

    def block_indices(self, num_layers: int) -> tuple[int, ...]:
        return parse_blocks(self.blocks, num_layers)

    def active_steps(self, steps: int) -> tuple[int, ...]:
        return window_steps(self.start, self.end, steps)

    def validate(self, num_layers: int) -> None:
        check_window_weight_rows(self.start, self.end, self.weight, self.rows)
        if self.reference_text not in REFERENCE_TEXT:
            raise errors.InputError(f"reference_text {self.reference_text!r} is not one of {REFERENCE_TEXT}",
                                    "Pick 'source' or 'edit'.")
        self.block_indices(num_layers)


def window_steps(start: float, end: float, steps: int) -> tuple[int, ...]:
    """Steps i of `steps` inside the injection window ``start <= i/steps < end``."""
    return tuple(i for i in range(steps) if start <= i / steps < end)


def check_window_weight_rows(start: float, end: float, weight: float, rows: str) -> None:
    """The options every model family shares: step window, reference weight, receiving rows."""
    if not 0.0 <= start <= end <= 1.0:
        raise errors.InputError(f"step window start {start} / end {end} is not within 0 <= start <= end <= 1",
                                "Give fractions of the sampling steps, for example start 0.0, end 0.8.")
    if not (weight >= 0.0 and math.isfinite(weight)):
        raise errors.InputError(f"reference weight {weight} must be finite and >= 0",
                                "Use 1 for plain concatenation, 0 for off, more for stronger.")
    check_rows(rows)


def check_rows(rows: str) -> None:
    if rows not in ROWS:
        raise errors.InputError(f"rows {rows!r} is not one of {ROWS}", "Pick 'all' or 'conditional'.")


def cfg_row_mask(batch: int, use_cfg: bool, rows: str) -> torch.Tensor:
    """Which rows of a denoiser call ([negative x B, positive x B] under CFG, else B) get the
    reference: all, or only the conditional (positive) ones."""
    check_rows(rows)
    if not use_cfg:
        return torch.ones(batch, dtype=torch.bool)
    return torch.cat([torch.full((batch,), rows == "all"), torch.ones(batch, dtype=torch.bool)])


def reference_per_cfg_row(sample_cfg: bool, inverted_cfg: bool, rows: str) -> bool:
    """Whether the source reference needs one row per CFG row (DESIGN fact 5 under CFG): only
    when the sample runs CFG, every row receives the reference, and the trajectory was inverted
    under CFG, so that its unconditional row has a trajectory of its own conditioning to
    duplicate. Otherwise one row per video, shared by the CFG rows, is exact and half the cost."""
    check_rows(rows)
    return sample_cfg and inverted_cfg and rows == "all"


BLOCKS_MAX_CHARS = 1000  # a list of every block of a 60-block model by index is ~230 characters
_NUMBER = re.compile(r"[0-9]{1,6}")  # ASCII digits; longer numbers are out of range for any model


def parse_blocks(spec: str, num_layers: int) -> tuple[int, ...]:
    """"all", "3", "0-7", "0,2,4", "10-", "-5" (the first five) -> sorted block indices.

    Ranges are checked by their ends against ``0..num_layers-1`` before any index is made, so a
    text can name nothing larger than the model; errors name the offending part, never a list of
    indices."""
    text = str(spec).strip().lower()
    if text in ("", "all", "*"):
        return tuple(range(num_layers))
    last = num_layers - 1
    fix = f"Write 'all', or indices and ranges within 0..{last} such as '0-{last}', '0,2', '{min(2, last)}-', '-2'."

    def refuse(problem: str):
        raise errors.InputError(f"blocks {shorten(text)!r} {problem}", f"This model has {num_layers} blocks. {fix}")

    if len(text) > BLOCKS_MAX_CHARS:
        refuse(f"is {len(text)} characters long (at most {BLOCKS_MAX_CHARS})")

    def number(part: str, token: str, bound: int) -> int:
        """A block number in 0..bound, or a refusal naming `token` (digits are checked before int())."""
        part = part.strip()
        if not (part.isascii() and part.isdigit()):
            refuse(f"is not a list of block indices or ranges: {shorten(token)!r} is neither")
        if not _NUMBER.fullmatch(part) or int(part) > bound:
            refuse(f"names {shorten(part, 12)} in {shorten(token)!r}, outside 0..{bound}")
        return int(part)

    spans = []
    for token in text.split(","):
        token = token.strip()
        lo, dash, hi = token.partition("-")
        if not token:
            refuse("has an empty entry between commas")
        elif not dash:
            spans.append((number(token, token, last),) * 2)
        elif not lo.strip() and not hi.strip():
            refuse("has a '-' with no numbers; it names no range (write 'all' for every block)")
        elif not lo.strip():  # "-n": the first n blocks
            n = number(hi, token, num_layers)
            if n == 0:
                refuse(f"has {token!r}: the first 0 blocks, which is none")
            spans.append((0, n - 1))
        else:
            a = number(lo, token, last)
            b = number(hi, token, last) if hi.strip() else last
            if b < a:
                refuse(f"has the range {token!r}, which runs backwards (write {b}-{a})")
            spans.append((a, b))
    return tuple(sorted({i for a, b in spans for i in range(a, b + 1)}))


# ----------------------------------------------------------------------------- pure math

def key_bias(own_text: int, own_len: int, ref_len: int, weight: float, balance_text: bool) -> torch.Tensor:
    """Additive logit bias per key over ``[own keys ; ref keys]`` (float64, ``[own_len + ref_len]``):
    ``log(weight)`` on the reference keys and, with `balance_text`, ``log(1 + weight)`` on the
    sample's own text keys (so text keeps its share of attention when the reference brings
    image keys only)."""
    bias = torch.zeros(own_len + ref_len, dtype=torch.float64)
    bias[own_len:] = math.log(weight)
    if balance_text:
        bias[:own_text] = math.log1p(weight)
    return bias


KEY_PAD = 8  # fused attention kernels want head sizes in multiples of 8


def attend_with_key_bias(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                         k_ref: torch.Tensor | None = None, v_ref: torch.Tensor | None = None) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d) + bias) v`` over the keys ``[k ; k_ref]`` (`k_ref` None: `k` alone) for a
    bias that depends on the key only, without an attention mask: the bias rides in one extra head
    dimension (queries carry 1 there, keys ``bias * sqrt(d)``), so the fused (flash) kernels still
    apply and no ``[L_q, L_k]`` mask is ever built. q, k, v: ``[B, heads, L, d]``; k_ref, v_ref
    ``[B_ref, heads, L_ref, d]``, row b of q taking reference row ``b % B_ref``; bias: ``[L_k]``.
    The joined keys and values are written once into their padded tensors (`joined`)."""
    d = q.shape[-1]
    q1 = q.new_zeros(*q.shape[:-1], d + KEY_PAD)
    q1[..., :d] = q
    q1[..., d] = 1.0
    k1 = joined(k, k_ref, KEY_PAD)
    k1[..., d] = (bias * math.sqrt(d)).to(device=k.device, dtype=k.dtype)
    v1 = joined(v, v_ref, KEY_PAD)
    return F.scaled_dot_product_attention(q1, k1, v1, scale=1.0 / math.sqrt(d))[..., :d]


def joined(own: torch.Tensor, ref: torch.Tensor | None, pad: int = 0) -> torch.Tensor:
    """``[own ; ref]`` along the tokens (``[B, heads, L, d]``; `ref` has ``B_ref`` rows, row b taking
    ``b % B_ref``), with `pad` zero dimensions after d, in one new tensor (no intermediate copies)."""
    b, h, lo, d = own.shape
    lr = 0 if ref is None else ref.shape[2]
    out = own.new_empty(b, h, lo + lr, d + pad)
    if pad:
        out[..., d:] = 0
    out[:, :, :lo, :d] = own
    if ref is not None:
        out[:, :, lo:, :d].unflatten(0, (b // ref.shape[0], ref.shape[0])).copy_(ref.unsqueeze(0))
    return out


def keys_with_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_ref: torch.Tensor, v_ref: torch.Tensor,
                        heads: int, weight: float):
    """For an attention function of fixed form ``attend(q, k, v, heads)`` on ``[B, L, heads * d]`` (ComfyUI's
    `optimized_attention`, whatever kernel or override is behind it): (q1, k1, v1, unpad) such that
    ``unpad(attend(q1, k1, v1, heads))`` is the attention of q over ``[own K/V ; reference K/V]`` with the
    logit bias ``log(weight)`` on the reference keys. Weight 1 is plain concatenation; otherwise each
    head gets `KEY_PAD` more dimensions, the bias riding in the first of them (queries carry 1 there,
    reference keys the bias), and q is scaled so that the kernel's ``1 / sqrt(d + KEY_PAD)`` acts as
    ``1 / sqrt(d)``."""
    if weight == 1.0:
        return q, torch.cat([k, k_ref], dim=1), torch.cat([v, v_ref], dim=1), lambda out: out
    b, lq, width = q.shape
    d = width // heads
    wide = d + KEY_PAD

    def padded(parts, first) -> torch.Tensor:
        """The parts joined along the tokens, each head padded to `wide`, `first` in its first extra
        dimension; written once into one new tensor."""
        rows = sum(p.shape[1] for p in parts)
        out = parts[0].new_zeros(b, rows, heads, wide)
        at = 0
        for p in parts:
            out[:, at:at + p.shape[1], :, :d] = p.unflatten(-1, (heads, d))
            at += p.shape[1]
        out[..., d] = first
        return out.flatten(-2)

    bias = torch.cat([torch.zeros(k.shape[1]), torch.full((k_ref.shape[1],), math.log(weight) * math.sqrt(wide))])
    q1 = padded([q * math.sqrt(wide / d)], 1.0)
    k1 = padded([k, k_ref], bias.to(device=k.device, dtype=k.dtype).view(1, -1, 1))
    v1 = padded([v, v_ref], 0.0)
    return q1, k1, v1, lambda out: out.unflatten(-1, (heads, wide))[..., :v.shape[-1] // heads].flatten(-2)


def project_heads(attn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys and values ``[B, heads, L, d]`` of the sequence `x` ``[B, L, C]`` through a
    diffusers `Attention` module's projections and q/k norms, as its processors compute them."""
    b, heads = x.shape[0], attn.heads
    q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
    d = k.shape[-1] // heads
    q, k, v = (t.view(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    return q, k, v


def attend_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_ref: torch.Tensor, v_ref: torch.Tensor,
                     rows: torch.Tensor, own_text: int, weight: float, balance_text: bool) -> torch.Tensor:
    """Attention of the sample's queries over ``[own K/V ; reference K/V]`` for the rows with
    ``rows[b]`` True; the other rows attend to their own keys only (plain attention). The
    reference has one row per video (shared by that video's CFG rows) or one per row."""
    if not bool(rows.all()):
        on = rows.to(device=q.device, dtype=torch.bool)
        out = torch.empty_like(q)
        out[~on] = F.scaled_dot_product_attention(q[~on], k[~on], v[~on])
        if bool(rows.any()):
            if k_ref.shape[0] == q.shape[0]:  # one reference per row: keep the receiving rows'
                k_ref, v_ref = k_ref[on], v_ref[on]
            out[on] = attend_reference(q[on], k[on], v[on], k_ref, v_ref, rows[rows], own_text, weight, balance_text)
        return out
    bias = key_bias(own_text, k.shape[2], k_ref.shape[2], weight, balance_text)
    if not bool(bias.any()):  # weight 1 with the reference's text: plain concatenation
        return F.scaled_dot_product_attention(q, joined(k, k_ref), joined(v, v_ref))
    return attend_with_key_bias(q, k, v, bias, k_ref, v_ref)


# ----------------------------------------------------------------------------- per-call state

class StopReference(Exception):
    """Raised in a reference call once its last chosen layer has handed over its K/V (nothing after
    it is needed), or when the sample call it runs beside has ended."""


class Recording:
    """State of a reference call: each chosen layer hands its K/V ``[N, heads, L, d]`` to `hand`,
    with the number of text tokens at their front (`text`: a joint text-image layer also hands
    over its text tokens). Nothing is kept here."""

    def __init__(self, layers, hand: Callable[[object, tuple], None], text: bool = False):
        self.layers, self.hand, self.text = frozenset(layers), hand, text

    def record(self, name, k: torch.Tensor, v: torch.Tensor, text_len: int = 0) -> None:
        self.hand(name, (k, v, text_len))


@dataclasses.dataclass(eq=False)
class Injection:
    """State of a sample call: which latent rows receive the reference, its weight, whether its K/V
    carry text tokens (else the sample's own text logits get ``log(1 + weight)``), and `take(layer)`,
    the reference's ``(k, v, text_len)`` of that layer, made for this call and not kept."""
    layers: frozenset
    rows: torch.Tensor  # [R] bool: which latent rows of the call receive the reference
    weight: float
    text: bool
    take: Callable[[object], tuple]

    def reference(self, name) -> tuple:
        return self.take(name)


class Channel:
    """Where the installed processors look for the current call's state (None = plain attention).
    State and probe are per thread: a reference call runs in a helper thread beside the sample call
    (`Lockstep`), each seeing its own."""

    def __init__(self):
        self.local = threading.local()

    @property
    def state(self):
        return getattr(self.local, "state", None)

    @property
    def probe(self):
        """A `vidinv.editmask.Probe` during a sample call that builds an edit mask."""
        return getattr(self.local, "probe", None)

    @contextlib.contextmanager
    def using(self, state):
        if self.state is not None:
            raise RuntimeError("reference attention state is already set: calls do not nest")
        self.local.state = state
        try:
            yield state
        finally:
            self.local.state = None

    @contextlib.contextmanager
    def probing(self, probe):
        """Let the processors feed `probe` (their image queries' attention to the text) for one call."""
        self.local.probe = probe
        try:
            yield probe
        finally:
            self.local.probe = None

    def recording(self, name) -> Recording | None:
        """The current Recording if it wants layer `name`."""
        state = self.state
        return state if isinstance(state, Recording) and name in state.layers else None

    def injection(self, name) -> Injection | None:
        """The current Injection if it injects layer `name` and is on (weight > 0)."""
        state = self.state
        return state if isinstance(state, Injection) and state.weight > 0 and name in state.layers else None


Processors = Callable[[Channel], dict]  # channel -> {processor name: processor reading that channel}


@contextlib.contextmanager
def installed(modules, processors):
    """Swap reference processors into `modules` (a diffusers model, or a tuple of them: a family's
    networks, such as Wan 2.2's two experts) for the duration of the block and yield their one
    `Channel`; `processors` (one per module, `Processors`: ``processors(channel)`` makes them for a
    family's chosen layers). Every model's own processors come back in ``finally``."""
    if isinstance(modules, torch.nn.Module):
        modules, processors = (modules,), (processors,)
    channel = Channel()
    saved = []
    try:
        for module, make in zip(modules, processors, strict=True):
            ours = make(channel)
            own = module.attn_processors
            unknown = [n for n in ours if n not in own]
            if unknown:
                raise errors.InputError(f"no attention layer {unknown[0]!r} in this model",
                                        "Choose layers of this model.")
            saved.append((module, own))
            module.set_attn_processor({**own, **ours})
        yield channel
    finally:
        for module, own in reversed(saved):
            module.set_attn_processor(own)


# ----------------------------------------------------------------------------- one guided call

def torch_thread_state() -> Callable[[], contextlib.ExitStack]:
    """The calling thread's torch state that a helper thread must share to compute as it would:
    grad and inference mode, autocast, the CUDA device and stream, and the dispatch modes (counters such as
    `torch.utils.flop_counter.FlopCounterMode` see both threads); returns ``enter()``, which sets
    them in the thread that calls it (undone when the returned stack closes)."""
    from torch.utils import _python_dispatch as dispatch
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    modes = list(dispatch._get_current_dispatch_mode_stack())
    casts = [(d, torch.get_autocast_dtype(d)) for d in ("cpu", "cuda") if torch.is_autocast_enabled(d)]
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    device, stream = (torch.cuda.current_device(), torch.cuda.current_stream()) if cuda else (None, None)

    def enter() -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode() if inference else torch.set_grad_enabled(grad))
        for device_type, dtype in casts:
            stack.enter_context(torch.autocast(device_type, dtype))
        if device is not None:  # the caller's device and stream: the two calls' kernels stay in one order
            torch.cuda.set_device(device)
            stack.enter_context(torch.cuda.stream(stream))
        for mode in modes:
            dispatch._push_mode(mode)
            stack.callback(dispatch._pop_mode)
        return stack

    return enter


class Lockstep:
    """One guided network call: the reference call runs in a helper thread, one chosen layer at a
    time, beside the sample call (DESIGN fact 3: nothing is held beyond what a layer needs).

    Exactly one of the two threads runs at a time. When the sample call reaches a chosen layer it
    asks for that layer's reference K/V (`take`): the reference call runs on until that layer hands
    its K/V over (`hand`) and waits there; the sample call attends to them and drops them. After the
    last chosen layer the reference call stops (`StopReference`): the layers after it never run for
    it. So at any time at most one layer's reference K/V exist, and both calls compute exactly what
    the reference pass and the sample pass computed one after the other (same rows, same kernels):
    the outputs are those of the two-pass method, bit for bit. An error in the reference call is
    raised in the sample call; a sample call that ends early stops the reference call. Neither call
    nests another."""

    def __init__(self, channel: Channel, layers, reference: Callable[[], object], text: bool = False):
        self.channel, self.layers, self.reference, self.text = channel, frozenset(layers), reference, text
        self.cond = threading.Condition()
        self.turn = "sample"
        self.slot = None  # (layer, kv) handed over and not yet taken
        self.handed = self.taken = 0
        self.error: BaseException | None = None
        self.finished = self.cancelled = False
        self.thread: threading.Thread | None = None
        self.enter = torch_thread_state()

    def _give(self, to: str) -> None:
        self.turn = to
        self.cond.notify_all()

    def _wait(self, me: str) -> None:
        while self.turn != me:
            self.cond.wait()

    # -- the reference call's side (helper thread)
    def hand(self, name, kv: tuple) -> None:
        with self.cond:
            if self.cancelled:
                raise StopReference
            self.slot, self.handed = (name, kv), self.handed + 1
            del kv
            if self.handed == len(self.layers):
                raise StopReference  # the thread gives the turn back once this call has unwound
            self._give("sample")
            self._wait("reference")
            if self.cancelled:
                raise StopReference

    def _run(self) -> None:
        try:
            with self.enter(), self.channel.using(Recording(self.layers, self.hand, self.text)):
                with self.cond:
                    self._wait("reference")
                if not self.cancelled:
                    self.reference()
        except StopReference:
            pass
        except BaseException as e:  # noqa: BLE001 - raised again in the sample call
            self.error = e
        finally:
            with self.cond:
                self.finished = True
                self._give("sample")

    # -- the sample call's side
    def take(self, name) -> tuple:
        """Layer `name`'s reference ``(k, v, text_len)``, made now; the caller drops it after use."""
        with self.cond:
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="vidinv-reference", daemon=True)
                self.thread.start()
            if not self.finished:
                self._give("reference")
                self._wait("sample")
            if self.error is not None:
                raise self.error
            if self.slot is None:
                raise RuntimeError(f"the reference call ended before layer {name!r} ({self.handed} of "
                                   f"{len(self.layers)} layers handed over)")
            (got, kv), self.slot = self.slot, None
            if got != name:
                raise RuntimeError(f"the sample call asks for layer {name!r}, the reference call reached {got!r}: "
                                   "the two calls run their layers in another order")
            self.taken += 1
            return kv

    def close(self, completed: bool) -> None:
        """After the sample call: stop the reference call where it waits, and check (for a call that
        `completed`) that every chosen layer was injected."""
        with self.cond:
            if self.thread is not None and not self.finished:
                self.cancelled = True
                self._give("reference")
        if self.thread is not None:
            self.thread.join()
        self.slot = None
        if completed and self.error is not None:
            raise self.error
        if completed and self.taken != len(self.layers):
            raise RuntimeError(f"the sample call injected {self.taken} of {len(self.layers)} layers")


@contextlib.contextmanager
def guided(channel: Channel, layers, reference: Callable[[], object], rows: torch.Tensor, weight: float,
           text: bool = False, injection: type = Injection, **fields):
    """The context of one sample network call with reference attention: the chosen `layers` attend
    also to the K/V that ``reference()`` (the same network on the reference rows) makes at that
    layer, run in `Lockstep`. `injection`: the `Injection` class the processors expect (with its
    extra `fields`)."""
    lock = Lockstep(channel, layers, reference, text)
    state = injection(frozenset(layers), rows, weight, text, lock.take, **fields)
    completed = False
    try:
        with channel.using(state):
            yield state
        completed = True
    finally:
        lock.close(completed)


def per_step(channel: Channel, layers, reference_latent: Callable[[int], torch.Tensor],
             reference_call: Callable[[torch.Tensor, int], object], weight: float = 1.0, rows: str = "all",
             cfg: bool = False, active: Callable[[int], bool] | None = None, text: bool = False):
    """``attention(i, x)`` for a family's denoiser: the context of step i's sample call, in which the
    reference call ``reference_call(reference_latent(i), i)`` (one row per video, or one per CFG row)
    runs beside it (`guided`). Outside `active` steps, or at weight 0, it returns None (plain
    attention)."""
    layers = frozenset(layers)
    check_rows(rows)  # a bad `rows` fails here, before any model call

    def attention(i: int, x: torch.Tensor):
        if weight == 0.0 or (active is not None and not active(i)):
            return None
        return guided(channel, layers, lambda: reference_call(reference_latent(i), i),
                      cfg_row_mask(x.shape[0], cfg, rows), weight, text)

    return attention


# ----------------------------------------------------------------------------- the patch value

@dataclasses.dataclass(frozen=True, eq=False)
class ReferenceSpec:
    """What a patched model carries: the trajectory, the options and, where the guide is the one-call inversion,
    its maker (`vidinv.pipeline.OneCallGuide`: made by the first guided sample with the difference mask, which
    then follows it; `vidinv.pipeline.with_reference`). Applied only while a guided sampler runs."""
    trajectory: object
    options: ReferenceOptions
    guide: object = None
