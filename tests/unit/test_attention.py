"""Reference attention on tiny random CogVideoX models: the processor equals diffusers' own,
duplicate-key invariance (DESIGN fact 5) for every option, per-group RoPE, safety, cost."""
import itertools
import math
import threading

import pytest
import torch
from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0

from vidinv import attention, errors
from vidinv.attention import ReferenceOptions, parse_blocks
from vidinv.models import cogvideox, cogvideox_attention
from tests import twopass

VARIANTS = ["2b", "5b", "1.5"]


def latent(model, frames=2, seed=0, batch=1):
    h = w = 4
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, frames, model.latent_channels, h, w, generator=g, dtype=torch.float64)


def test_parse_blocks():
    assert parse_blocks("all", 4) == (0, 1, 2, 3)
    assert parse_blocks("1-2", 4) == (1, 2)
    assert parse_blocks("0, 3", 4) == (0, 3)
    assert parse_blocks("2-", 4) == (2, 3)
    assert parse_blocks("-2", 4) == (0, 1)
    with pytest.raises(errors.InputError, match="outside 0..3"):
        parse_blocks("0-7", 4)
    with pytest.raises(errors.InputError, match="not a list of block indices"):
        parse_blocks("first", 4)


def test_options_validation_messages():
    with pytest.raises(errors.InputError, match="start 0.8 / end 0.2"):
        ReferenceOptions(start=0.8, end=0.2).validate(4)
    with pytest.raises(errors.InputError, match="weight -1"):
        ReferenceOptions(weight=-1).validate(4)


def test_active_steps_window():
    o = ReferenceOptions(start=0.2, end=0.6)
    assert o.active_steps(10) == (2, 3, 4, 5)
    assert ReferenceOptions().active_steps(3) == (0, 1, 2)


def explicit_reference_attention(q, k, v, k_ref, v_ref, rows, own_text, weight, balance_text):
    """The definition, written out: softmax over [own ; reference] logits with log(weight) on the
    reference keys (log(1 + weight) on own text keys when balancing), per row; rows that do not
    receive the reference attend to their own keys only."""
    outs = []
    for b in range(q.shape[0]):
        ref = b % k_ref.shape[0] if k_ref.shape[0] != q.shape[0] else b
        logits = q[b] @ k[b].transpose(-1, -2) / q.shape[-1] ** 0.5
        vals = v[b]
        if rows[b]:
            own_bias = torch.zeros(k.shape[2], dtype=q.dtype)
            if balance_text:
                own_bias[:own_text] = math.log1p(weight)
            ref_logits = q[b] @ k_ref[ref].transpose(-1, -2) / q.shape[-1] ** 0.5 + math.log(weight)
            logits = torch.cat([logits + own_bias, ref_logits], dim=-1)
            vals = torch.cat([v[b], v_ref[ref]], dim=1)
        outs.append(torch.softmax(logits, dim=-1) @ vals)
    return torch.stack(outs)


@pytest.mark.parametrize("weight, balance, rows, ref_rows", [
    (4.0, True, [True, True, True, True], 2), (1.0, False, [True, True, True, True], 2),
    (0.5, True, [False, False, True, True], 2), (3.0, False, [False, False, True, True], 4),
    (2.0, True, [True, True], 2)])
def test_key_bias_attention_matches_the_definition(weight, balance, rows, ref_rows):
    """The bias folded into an extra head dimension (no attention mask, so fused kernels apply)
    is the same attention as the written-out softmax, for shared and per-row references and
    for rows that take no reference."""
    g = torch.Generator().manual_seed(1)
    b, heads, own, ref, d, text = len(rows), 3, 7, 5, 16, 2
    q, k, v = (torch.randn(b, heads, own, d, generator=g, dtype=torch.float64) for _ in range(3))
    k_ref, v_ref = (torch.randn(ref_rows, heads, ref, d, generator=g, dtype=torch.float64) for _ in range(2))
    got = attention.attend_reference(q, k, v, k_ref, v_ref, torch.tensor(rows), text, weight, balance)
    want = explicit_reference_attention(q, k, v, k_ref, v_ref, rows, text, weight, balance)
    assert torch.allclose(got, want, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("variant", VARIANTS)
def test_processor_without_reference_equals_diffusers(tiny64, variant):
    model = tiny64(variant)
    cond = cogvideox.encode_text(model, "a red circle moving right")
    x = latent(model)
    ref = cogvideox.transformer_call(model, x, cond.embeds, 500)
    with attention.installed(model.transformer, every_block(model)):
        ours = cogvideox.transformer_call(model, x, cond.embeds, 500)
    assert torch.allclose(ours, ref, rtol=0, atol=1e-12)
    assert all(isinstance(p, CogVideoXAttnProcessor2_0) for p in model.transformer.attn_processors.values())


def every_block(model):
    return cogvideox_attention.processors(model.transformer, range(int(model.transformer.config.num_layers)))


def reference_of(model, x, text, t):
    """A reference call: x through the transformer (its chosen layers hand their K/V over)."""
    return lambda: cogvideox.transformer_call(model, x, text, t)


def duplicate_call(model, x, text, t, opts, use_cfg=False):
    """Inject the K/V of x itself into the same x: must equal plain attention."""
    blocks = opts.block_indices(int(model.transformer.config.num_layers))
    rows = attention.cfg_row_mask(x.shape[0], use_cfg, opts.rows)
    with attention.installed(model.transformer, every_block(model)) as channel:
        with attention.guided(channel, blocks, reference_of(model, x, text, t), rows, opts.weight, opts.text):
            return cogvideox.transformer_call(model, x, text, t)


OPTION_GRID = [ReferenceOptions(blocks=b, weight=w, text=tx)
               for b, w, tx in itertools.product(["all", "1"], [0.5, 1.0, 4.0], [True, False])]


@pytest.mark.parametrize("variant", VARIANTS)
def test_duplicate_keys_leave_attention_unchanged(tiny64, variant):
    model = tiny64(variant)
    cond = cogvideox.encode_text(model, "a blue square moving up")
    x = latent(model, seed=1)
    plain = cogvideox.transformer_call(model, x, cond.embeds, 700)
    for opts in OPTION_GRID:
        out = duplicate_call(model, x, cond.embeds, 700, opts)
        assert torch.allclose(out, plain, rtol=0, atol=1e-10), opts


def test_duplicate_keys_differ_when_the_reference_differs(tiny64):
    """The invariance is not vacuous: another latent as reference changes the output."""
    model = tiny64("5b")
    cond = cogvideox.encode_text(model, "a blue square moving up")
    x, other = latent(model, seed=1), latent(model, seed=2)
    opts = ReferenceOptions()
    blocks = opts.block_indices(2)
    with attention.installed(model.transformer, every_block(model)) as channel:
        with attention.guided(channel, blocks, reference_of(model, other, cond.embeds, 700), torch.ones(1, dtype=torch.bool),
                              1.0, True):
            out = cogvideox.transformer_call(model, x, cond.embeds, 700)
    plain = cogvideox.transformer_call(model, x, cond.embeds, 700)
    assert (out - plain).abs().max() > 1e-3


@pytest.mark.parametrize("wrong", ["unrotated", "shifted"])
def test_wrong_rope_placement_is_caught(tiny64, monkeypatch, wrong):
    """Rotating the reference group with any other positions breaks the invariance at once."""
    model = tiny64("5b")
    cond = cogvideox.encode_text(model, "a green triangle moving left")
    x = latent(model, seed=3)
    plain = cogvideox.transformer_call(model, x, cond.embeds, 600)
    assert torch.allclose(duplicate_call(model, x, cond.embeds, 600, ReferenceOptions()), plain, atol=1e-10)

    def unrotated(k_ref, table, text_len):
        return k_ref

    def shifted(k_ref, table, text_len):  # positions of the next frame, as a concatenated sequence would get
        cos, sin = table
        per_frame = cos.shape[0] // x.shape[1]
        return cogvideox_attention.rotate_image_tokens(k_ref, (cos.roll(per_frame, 0), sin.roll(per_frame, 0)),
                                                       text_len)

    monkeypatch.setattr(cogvideox_attention, "rotate_reference", {"unrotated": unrotated, "shifted": shifted}[wrong])
    broken = duplicate_call(model, x, cond.embeds, 600, ReferenceOptions())
    assert (broken - plain).abs().max() > 1e-4


def test_cfg_rows_conditional_only_is_invariant(tiny64):
    model = tiny64("5b")
    cond = cogvideox.encode_text(model, "a red square moving down", "")
    x = latent(model, seed=4)
    text, _ = cogvideox.cfg_rows(cond, 3.0, False, 1)
    rows_x = torch.cat([x, x])
    plain = cogvideox.transformer_call(model, rows_x, text, 400)
    # the reference recorded from the conditional row, injected only there
    opts = ReferenceOptions(rows="conditional")
    blocks = opts.block_indices(2)
    with attention.installed(model.transformer, every_block(model)) as channel:
        with attention.guided(channel, blocks, reference_of(model, x, cond.embeds, 400),
                              attention.cfg_row_mask(1, True, "conditional"), 1.0, True):
            out = cogvideox.transformer_call(model, rows_x, text, 400)
    assert torch.allclose(out, plain, rtol=0, atol=1e-10)


def test_reference_call_stops_after_last_injected_block(tiny64):
    """The reference call runs block 0 only (its rows leave after the last injected block); the
    sample call runs every block."""
    model = tiny64("5b")
    cond = cogvideox.encode_text(model, "a red circle moving right")
    seen = []
    hooks = [b.register_forward_pre_hook(lambda mod, args, i=i: seen.append((threading.current_thread().name, i)))
             for i, b in enumerate(model.transformer.transformer_blocks)]
    x = latent(model)
    try:
        with attention.installed(model.transformer, every_block(model)) as channel:
            with attention.guided(channel, {0}, reference_of(model, x, cond.embeds, 500), torch.ones(1, dtype=torch.bool),
                                  1.0, True):
                cogvideox.transformer_call(model, x, cond.embeds, 500)
            assert channel.state is None
    finally:
        for h in hooks:
            h.remove()
    main = threading.current_thread().name
    assert sorted(seen) == sorted([(main, 0), (main, 1), ("vidinv-reference", 0)]), seen


def test_processors_restored_after_error(tiny64):
    model = tiny64("5b")
    before = dict(model.transformer.attn_processors)
    with pytest.raises(RuntimeError, match="boom"):
        with attention.installed(model.transformer, every_block(model)):
            assert all(isinstance(p, cogvideox_attention.ReferenceAttnProcessor)
                       for p in model.transformer.attn_processors.values())
            raise RuntimeError("boom")
    after = model.transformer.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)


def test_reference_cost_ordering_by_flop_count():
    """Counted FLOPs (meta device, a CogVideoX-5B-shaped toy): one reference row shared by the
    CFG rows costs less than the published per-row reference, and narrower windows or block
    ranges cost less than injection everywhere, which costs more than plain sampling."""
    from tests import fullsize_models
    model = fullsize_models.build("5b", "meta", torch.float32, smoke=True)
    edit, traj = fullsize_models.inputs(model, 9, 64, 64, 10)
    f = fullsize_models.step_flops(model, edit, traj, 6.0)
    everywhere = f["guided (defaults: every block and step)"]
    assert f["plain"] < f["guided, first half of the steps"] < f["guided, steps from 30 %"] < everywhere
    assert f["plain"] < f["guided, blocks of the first half"] < everywhere
    assert everywhere < f["published recipe (reference per CFG row)"]


# ----------------------------------------------------------------------------- lockstep vs the two-pass method

def rel(a, b):
    return float((a - b).norm() / b.norm())


def both_schedules(monkeypatch, run):
    """`run()` with the reference call in lockstep (the product) and with the old two-pass schedule."""
    new = run()
    with monkeypatch.context() as m:
        m.setattr(attention, "guided", twopass.guided)
        old = run()
    return new, old


LOCKSTEP_CASES = [  # (inversion guidance, sampling guidance, options, edit mask)
    (1.0, 1.0, ReferenceOptions(), None),
    (1.0, 4.0, ReferenceOptions(text=True, weight=1.0, blocks="1", rows="conditional"), None),
    (4.0, 4.0, ReferenceOptions(start=0.3), "attention"),  # a reference row per CFG row, the probe on
    (1.0, 4.0, ReferenceOptions(reference_text="edit", text=True, weight=1.0), None),  # the published recipe
]


@pytest.mark.parametrize("variant, g_inv, g, opts, mask", [
    ("5b", *case) for case in LOCKSTEP_CASES] + [(v, *LOCKSTEP_CASES[k]) for v in ("2b", "1.5") for k in (0, 2)])
def test_lockstep_equals_the_two_pass_method(tiny64, monkeypatch, variant, g_inv, g, opts, mask):
    """Issue 34: the reference call beside the sample call gives the outputs of the reference pass
    before it (float64, an edit so that the reference matters; RoPE per group on 5B / 1.5)."""
    from vidinv import editmask, pipeline
    from vidinv.family import Guidance
    from vidinv.solver import Solver
    model = tiny64(variant)
    src = cogvideox.encode_text(model, "a red circle moving right", "blurry")
    edit = cogvideox.encode_text(model, "a blue circle moving right", "blurry")
    traj = pipeline.invert(model, src, latent(model, seed=5), 3, Guidance(g_inv), Solver(iters=2, tol=0.0))
    patched = pipeline.with_reference(model, traj, opts)

    def run():
        m = None if mask is None else editmask.EditMask(0.5, source=mask)
        return pipeline.guided_sample(patched, edit, Guidance(g), edit_mask=m)

    new, old = both_schedules(monkeypatch, run)
    assert rel(new, old) <= 1e-12, rel(new, old)
    plain = pipeline.sample(model, edit, traj.noise, traj.steps, Guidance(g))
    assert rel(new, plain) > 1e-6  # not vacuous: the reference changes the sample (by 2e-5 and more here)


@pytest.mark.parametrize("text", [False, True])
def test_no_reference_kv_is_held_across_layers(tiny64, monkeypatch, text):
    """At each injected layer of a sample call at most that layer's reference K/V are alive; the
    two-pass method held every chosen layer's (the counter is not vacuous)."""
    model = tiny64("5b")
    cond = cogvideox.encode_text(model, "a red circle moving right")
    x, other = latent(model, seed=1), latent(model, seed=2)
    layers = list(range(int(model.transformer.config.num_layers)))
    assert len(layers) >= 2

    def call():
        with attention.installed(model.transformer, every_block(model)) as channel:
            with attention.guided(channel, layers, reference_of(model, other, cond.embeds, 700),
                                  torch.ones(1, dtype=torch.bool), 2.0, text):
                return cogvideox.transformer_call(model, x, cond.embeds, 700)

    with twopass.HeldKV() as held:
        call()
    assert held.alive == [1] * len(layers), held.alive
    with twopass.HeldKV() as held, monkeypatch.context() as m:
        m.setattr(attention, "guided", twopass.guided)
        call()
    assert held.alive == [len(layers)] * len(layers), held.alive


# ----------------------------------------------------------------------------- lockstep, without a model

def toy_network(channel, x, order=(0, 1, 2), fail_at=None, seen=None):
    """A stand-in network: each layer of `order` hands over (k, v) = (x, 2x) in a reference call,
    and adds the reference's key to x in a sample call."""
    for name in order:
        if name == fail_at:
            raise ValueError(f"boom at {name}")
        if seen is not None:
            seen.append((threading.current_thread().name, name, torch.is_inference_mode_enabled(),
                         torch.is_grad_enabled()))
        rec = channel.recording(name)
        if rec is not None:
            rec.record(name, x.clone(), 2 * x)
        inj = channel.injection(name)
        if inj is not None:
            k, v, _ = inj.reference(name)
            x = x + k
        else:
            x = x + 1
    return x


def toy_guided(channel, reference, layers=(0, 1, 2)):
    return attention.guided(channel, layers, reference, torch.ones(1, dtype=torch.bool), 1.0)


@pytest.mark.parametrize("mode", ["inference", "no_grad", "grad"])
def test_lockstep_runs_the_two_calls_layer_by_layer_in_the_callers_torch_mode(mode):
    channel = attention.Channel()
    seen = []
    ctx = {"inference": torch.inference_mode(), "no_grad": torch.no_grad(), "grad": torch.enable_grad()}[mode]
    with ctx, toy_guided(channel, lambda: toy_network(channel, torch.zeros(1), seen=seen)):
        out = toy_network(channel, torch.ones(1), seen=seen)
    # reference x: 0 -> 1 -> 2 (it adds 1 per layer and hands x before); the sample adds 0, 1, 2
    assert float(out) == 4.0
    main = threading.current_thread().name
    assert [(w == main, n) for w, n, _, _ in seen] == [(True, 0), (False, 0), (True, 1), (False, 1), (True, 2),
                                                      (False, 2)]
    assert len({(i, g) for _, _, i, g in seen}) == 1  # the same torch mode in both threads
    assert all(t.name != "vidinv-reference" for t in threading.enumerate())


def test_an_error_in_the_reference_call_is_raised_in_the_sample_call():
    channel = attention.Channel()
    with pytest.raises(ValueError, match="boom at 1"):
        with toy_guided(channel, lambda: toy_network(channel, torch.zeros(1), fail_at=1)):
            toy_network(channel, torch.ones(1))
    assert channel.state is None
    assert all(t.name != "vidinv-reference" for t in threading.enumerate())


def test_an_error_in_the_sample_call_stops_the_reference_call():
    channel = attention.Channel()
    with pytest.raises(ValueError, match="boom at 2"):
        with toy_guided(channel, lambda: toy_network(channel, torch.zeros(1))):
            toy_network(channel, torch.ones(1), fail_at=2)
    assert channel.state is None
    assert all(t.name != "vidinv-reference" for t in threading.enumerate())


@pytest.mark.parametrize("reference_order, sample_order, message", [
    ((1, 0, 2), (0, 1, 2), "another order"),
    ((0, 1), (0, 1, 2), "ended before layer 2"),
    ((0, 1, 2), (0, 1), "injected 2 of 3 layers")])
def test_calls_that_disagree_on_the_layers_are_refused(reference_order, sample_order, message):
    channel = attention.Channel()
    with pytest.raises(RuntimeError, match=message):
        with toy_guided(channel, lambda: toy_network(channel, torch.zeros(1), order=reference_order)):
            toy_network(channel, torch.ones(1), order=sample_order)
    assert all(t.name != "vidinv-reference" for t in threading.enumerate())
