"""Exact inversion, plain and guided sampling, on tiny random CogVideoX models in float64."""
import dataclasses
import threading

import pytest
import torch

from vidinv.family import Guidance
from vidinv.solver import Solver
from vidinv.hooks import Hooks
from vidinv import pipeline
from vidinv.attention import ReferenceOptions, ReferenceSpec
from vidinv.models import cogvideox

STEPS = 8
EXACT_STEPS = 50  # the exactness bounds are stated for a real grid; 8 giant steps are far stiffer


def source(model, seed=0, frames=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, frames, model.latent_channels, 4, 4, generator=g, dtype=torch.float64)


def image_latents(model, x):
    return torch.randn(x.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64) \
        if model.is_i2v else None


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("variant", ["2b", "5b", "5b-i2v", "1.5"])
def test_round_trip_exact_in_float64(tiny64, variant):
    model = tiny64(variant)
    cond = cogvideox.encode_text(model, "a red circle moving right")
    x0 = source(model)
    if model.is_i2v:  # learned position embeddings: only the native latent size
        h, w = int(model.transformer.config.sample_height), int(model.transformer.config.sample_width)
        x0 = torch.randn(1, 2, model.latent_channels, h, w, generator=torch.Generator().manual_seed(0),
                         dtype=torch.float64)
    img = image_latents(model, x0)
    traj = pipeline.invert(model, cond, x0, STEPS, settings=Solver(iters=10, tol=0), dtype="fp32", image_latents=img)
    assert traj.latents.shape == (STEPS + 1, *x0.shape) and traj.latents.dtype == torch.float32
    assert len(traj.residuals) == STEPS and all(c == 11 for c in traj.calls)
    # the bound in float64: sample from the float64 noise the solver returned
    from vidinv import ddim
    schedule = ddim.schedule_from_config(model.scheduler_config)
    den = cogvideox.make_denoiser(model, cond, 1.0, False, EXACT_STEPS, img)
    lat, stats = ddim.invert(den, x0, schedule, EXACT_STEPS, iters=10)
    back = pipeline.sample(model, cond, lat[-1], EXACT_STEPS, image_latents=img)
    assert back.dtype == torch.float64
    assert rel(back, x0) < 1e-8, [s.history[-1] for s in stats]


@pytest.mark.parametrize("dynamic", [False, True])
def test_same_guidance_both_ways_stays_exact(tiny64, dynamic):
    from vidinv import ddim
    model = tiny64("5b")
    cond = cogvideox.encode_text(model, "a red circle moving right", "a blue square")
    x0 = source(model, 1)
    schedule = ddim.schedule_from_config(model.scheduler_config)
    den = cogvideox.make_denoiser(model, cond, 6.0, dynamic, EXACT_STEPS)
    lat, _ = ddim.invert(den, x0, schedule, EXACT_STEPS, iters=10, damping=0.5)
    assert rel(ddim.sample(den, lat[-1], schedule, EXACT_STEPS), x0) < 1e-8


def test_sampler_matches_the_diffusers_pipeline(tiny_folders):
    """Our DDIM loop (fp32) against CogVideoXPipeline with the same initial latents and CFG."""
    from diffusers import CogVideoXPipeline
    pipe = CogVideoXPipeline.from_pretrained(tiny_folders["5b"], dtype=torch.float32)
    model = cogvideox.load(tiny_folders["5b"], "fp32")
    noise = torch.randn(1, 2, model.latent_channels, 6, 6, generator=torch.Generator().manual_seed(5))
    ours = pipeline.sample(model, cogvideox.encode_text(model, "a red circle moving right", "blue"), noise, 6,
                           Guidance(4.0))
    theirs = pipe(prompt="a red circle moving right", negative_prompt="blue", num_frames=5, height=48, width=48,
                  num_inference_steps=6, guidance_scale=4.0, latents=noise.clone(), output_type="latent",
                  max_sequence_length=model.max_text_length).frames
    assert torch.allclose(ours, theirs.float(), rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def inverted(tiny64):
    model = tiny64("5b")
    cond = cogvideox.encode_text(model, "a green square moving left")
    x0 = source(model, 2)
    traj = pipeline.invert(model, cond, x0, STEPS, settings=Solver(iters=12, tol=0), dtype="fp32")
    plain = pipeline.sample(model, cond, traj.noise.double(), STEPS)
    return model, cond, traj, plain


GUIDED_OPTIONS = [
    ReferenceOptions(),
    ReferenceOptions(blocks="1", weight=3.0),
    ReferenceOptions(blocks="0", start=0.25, end=0.75, weight=0.5, text=False),
    ReferenceOptions(text=False, weight=2.0),
    ReferenceOptions(weight=0.0),
    ReferenceOptions(rows="conditional"),
]


@pytest.mark.parametrize("opts", GUIDED_OPTIONS, ids=str)
def test_guided_reconstruction_keeps_the_plain_bound(inverted, opts):
    """DESIGN fact 5 end to end: exact inversion + the source prompt + any injection settings
    reconstructs exactly as well as plain sampling does."""
    model, cond, traj, plain = inverted
    patched = dataclasses.replace(model, reference=ReferenceSpec(traj, opts))
    guided = pipeline.guided_sample(patched, cond)
    x0 = traj.clean.double()
    bound = max(rel(plain, x0), 1e-9)
    assert rel(guided, x0) <= 10 * bound + 1e-6, (rel(guided, x0), bound)
    assert rel(guided, plain) < 1e-6


def test_guided_sampling_changes_an_edit(inverted):
    model, cond, traj, _ = inverted
    edit = cogvideox.encode_text(model, "a red circle moving right")
    plain_edit = pipeline.sample(model, edit, traj.noise, STEPS)
    patched = dataclasses.replace(model, reference=ReferenceSpec(traj, ReferenceOptions()))
    guided_edit = pipeline.guided_sample(patched, edit)
    assert rel(guided_edit, plain_edit) > 1e-4
    # and pulls it towards the source
    assert rel(guided_edit, traj.clean) < rel(plain_edit, traj.clean)


def test_two_runs_identical_and_model_untouched(inverted):
    model, cond, traj, _ = inverted
    before = dict(model.transformer.attn_processors)
    patched = dataclasses.replace(model, reference=ReferenceSpec(traj, ReferenceOptions(text=False)))
    edit = cogvideox.encode_text(model, "a red circle moving right")
    a = pipeline.guided_sample(patched, edit, Guidance(2.0))
    b = pipeline.guided_sample(patched, edit, Guidance(2.0))
    assert torch.equal(a, b)
    assert model.reference is None
    assert all(model.transformer.attn_processors[k] is v for k, v in before.items())


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("when", ["reference pass", "sample pass", "after step"])
def test_processors_restored_after_interrupt(inverted, when):
    model, cond, traj, _ = inverted
    before = dict(model.transformer.attn_processors)

    class Stop(Hooks):
        calls = 0

        def before_call(self):
            self.calls += 1
            if (when == "reference pass" and self.calls == 1) or (when == "sample pass" and self.calls == 4):
                raise Interrupt

        def after_step(self, i, total, info):
            if when == "after step" and i == 2:
                raise Interrupt

    patched = dataclasses.replace(model, reference=ReferenceSpec(traj, ReferenceOptions()))
    with pytest.raises(Interrupt):
        pipeline.guided_sample(patched, cond, hooks=Stop())
    assert all(model.transformer.attn_processors[k] is v for k, v in before.items())
    # and the model still samples plainly afterwards
    assert rel(pipeline.sample(model, cond, traj.noise.double(), STEPS), traj.clean.double()) < 1e-6


def test_reference_pass_once_per_step_shared_by_cfg_rows(inverted):
    """One reference pass (one row) per active step, one sample pass with both CFG rows."""
    model, cond, traj, _ = inverted
    calls = []
    handle = model.transformer.register_forward_pre_hook(
        lambda mod, args, kwargs: calls.append(kwargs["hidden_states"].shape[0]), with_kwargs=True)
    try:
        opts = ReferenceOptions(start=0.0, end=0.5)
        patched = dataclasses.replace(model, reference=ReferenceSpec(traj, opts))
        pipeline.guided_sample(patched, cond, Guidance(3.0))
    finally:
        handle.remove()
    active = len(opts.active_steps(STEPS))
    assert calls.count(1) == active and calls.count(2) == STEPS and len(calls) == STEPS + active


def test_guided_sample_refuses_unpatched_model(inverted):
    from vidinv import errors
    model, cond, _, _ = inverted
    with pytest.raises(errors.InputError, match="Reference Attention"):
        pipeline.guided_sample(model, cond)


def test_one_step_inversion_is_refused_and_one_step_sampling_works(tiny64):
    """Issue 17: steps = 1 (the node allows it) is a single jump from zero signal to the model's
    clean prediction on CogVideoX's zero-terminal-SNR schedule; inverting it is refused up front."""
    from vidinv import errors
    model = tiny64("5b")
    cond = cogvideox.encode_text(model, "a red circle moving right")
    x0 = source(model)
    for memory in (0, 5):
        with pytest.raises(errors.InputError, match="cannot be inverted.*2 or more steps"):
            pipeline.invert(model, cond, x0, 1, settings=Solver(iters=10, memory=memory))
    assert torch.isfinite(pipeline.sample(model, cond, x0, 1)).all()


# ----------------------------------------------------------------------------- trajectories inverted under CFG

CFG = 6.0


@pytest.fixture(scope="module")
def inverted_cfg(tiny64):
    """A trajectory inverted under CFG (guidance 6, with a negative prompt) and its plain round trip."""
    model = tiny64("5b")
    cond = cogvideox.encode_text(model, "a green square moving left", "a blue circle")
    x0 = source(model, 3)
    traj = pipeline.invert(model, cond, x0, STEPS, Guidance(CFG), Solver(iters=30, tol=0), dtype="fp32")
    plain = pipeline.sample(model, cond, traj.noise.double(), STEPS, Guidance(CFG))
    assert rel(plain, x0) < 1e-5, rel(plain, x0)
    return model, cond, traj, plain


@pytest.mark.parametrize("opts", [ReferenceOptions(), ReferenceOptions(weight=1.0, text=True),
                                  ReferenceOptions(blocks="0", start=0.25, end=0.75, weight=3.0),
                                  ReferenceOptions(rows="conditional")], ids=str)
def test_guided_reconstruction_under_cfg(inverted_cfg, opts):
    """DESIGN fact 5 row by row: a trajectory inverted at guidance 6 and guided-sampled with the
    source prompt at guidance 6 reconstructs as plain sampling does (each CFG row's reference is
    made with the conditioning that row had at inversion)."""
    model, cond, traj, plain = inverted_cfg
    patched = dataclasses.replace(model, reference=ReferenceSpec(traj, opts))
    guided = pipeline.guided_sample(patched, cond, Guidance(CFG))
    assert rel(guided, plain) < 1e-6, rel(guided, plain)


def test_a_shared_reference_row_breaks_reconstruction_under_cfg(inverted_cfg, monkeypatch):
    """Why the reference needs a row per CFG row there: the unconditional row attending to the
    source prompt's keys is not attending to duplicates of its own (measured 7e-4 here, 700x the bound)."""
    model, cond, traj, plain = inverted_cfg
    monkeypatch.setattr(pipeline.attention, "reference_per_cfg_row", lambda *a: False)
    patched = dataclasses.replace(model, reference=ReferenceSpec(traj, ReferenceOptions()))
    assert rel(pipeline.guided_sample(patched, cond, Guidance(CFG)), plain) > 1e-4


@pytest.mark.parametrize("rows,ref_rows", [("all", 2), ("conditional", 1)])
def test_reference_rows_for_a_cfg_trajectory(inverted_cfg, rows, ref_rows):
    """A CFG trajectory sampled with CFG into every row: one reference row per CFG row; into the
    conditional row only, or sampled without CFG: one row."""
    model, cond, traj, _ = inverted_cfg
    calls = []
    handle = model.transformer.register_forward_pre_hook(
        lambda mod, args, kwargs: calls.append((threading.current_thread().name == "vidinv-reference",
                                                kwargs["hidden_states"].shape[0])), with_kwargs=True)
    try:
        patched = dataclasses.replace(model, reference=ReferenceSpec(traj, ReferenceOptions(rows=rows)))
        pipeline.guided_sample(patched, cond, Guidance(CFG))
        pipeline.guided_sample(patched, cond, Guidance(1.0))
    finally:
        handle.remove()
    # each step: the sample call starts, then the reference call beside it (in its helper thread);
    # with CFG a sample call of 2 rows and a reference call of ref_rows; without: 1 and 1
    assert calls[:2 * STEPS] == [(False, 2), (True, ref_rows)] * STEPS
    assert calls[2 * STEPS:] == [(False, 1), (True, 1)] * STEPS
