"""Negative-prompt and null-text inversion on a tiny random CogVideoX."""
import pytest
import torch

from vidinv.family import Guidance
from vidinv.solver import Solver
from vidinv import errors, nulltext, pipeline
from vidinv.models import cogvideox

STEPS = 6


@pytest.fixture(scope="module")
def setup(tiny_folders):
    model = cogvideox.load(tiny_folders["5b"], "fp32")
    cond = cogvideox.encode_text(model, "a red circle moving right", "a blue square moving up")
    x0 = torch.randn(1, 2, model.latent_channels, 4, 4, generator=torch.Generator().manual_seed(0))
    traj = pipeline.invert(model, cond, x0, STEPS, Guidance(1.0), Solver(iters=10, tol=0))
    return model, cond, x0, traj


def rel(a, b):
    return float((a - b).norm() / b.norm())


def test_negative_modes(setup):
    _, _, _, traj = setup
    assert nulltext.negative_for("conditioning", traj) is None
    assert torch.equal(nulltext.negative_for("source prompt", traj)(999), traj.embeds)
    with pytest.raises(errors.InputError, match="no null-text embeddings"):
        nulltext.negative_for("null-text", traj)
    with pytest.raises(errors.InputError, match="needs a trajectory"):
        nulltext.negative_for("source prompt", None)


def test_negative_prompt_inversion_reconstructs_under_cfg(setup):
    model, cond, x0, traj = setup
    plain_cfg = pipeline.sample(model, cond, traj.noise, STEPS, Guidance(6.0))
    npi = pipeline.sample(model, cond, traj.noise, STEPS, Guidance(6.0),
                          negative=nulltext.negative_for("source prompt", traj))
    g1 = pipeline.sample(model, cond, traj.noise, STEPS, Guidance(1.0))
    assert rel(npi, g1) < 1e-5 and rel(npi, x0) < 1e-4
    assert rel(plain_cfg, x0) > 100 * rel(npi, x0)


def test_null_text_inversion_beats_plain_cfg(setup):
    model, cond, x0, traj = setup
    before = model.transformer.gradient_checkpointing
    nt = nulltext.null_text_inversion(model, traj, 6.0, iters=30, lr=0.05, tol=0, checkpoint=True)
    assert model.transformer.gradient_checkpointing == before
    assert nt.null_embeds.shape == (STEPS, 1, *traj.embeds.shape[1:])
    plain = pipeline.sample(model, cond, traj.noise, STEPS, Guidance(6.0))
    fixed = pipeline.sample(model, cond, traj.noise, STEPS, Guidance(6.0),
                            negative=nulltext.negative_for("null-text", nt))
    assert rel(fixed, x0) * 10 <= rel(plain, x0), (rel(fixed, x0), rel(plain, x0))
    assert len(nt.extra["null_text"]["losses"]) == STEPS


def test_null_text_refuses_bad_inputs(setup):
    model, cond, x0, traj = setup
    with pytest.raises(errors.InputError, match="guidance > 1"):
        nulltext.null_text_inversion(model, traj, 1.0)
    cfg_traj = pipeline.invert(model, cond, x0, STEPS, Guidance(3.0), Solver(iters=1))
    with pytest.raises(errors.InputError, match="pivots on a guidance-1 inversion"):
        nulltext.null_text_inversion(model, cfg_traj, 6.0)


def test_null_text_stops_at_the_step_that_turns_non_finite(setup):
    import dataclasses
    model, _, _, traj = setup
    latents = traj.latents.clone()
    latents[STEPS - 2] = float("nan")  # the target of sampling step 2
    bad = dataclasses.replace(traj, latents=latents)
    with pytest.raises(errors.InputError, match=r"null-text inversion step 2 of 6 .* non-finite"):
        nulltext.null_text_inversion(model, bad, 6.0, iters=1, tol=0, checkpoint=False)
