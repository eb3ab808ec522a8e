"""Edit-friendly DDPM inversion (`vidinv.friendly`): the stochastic step against diffusers' DDIM with
eta = 1 and against ancestral Euler, eta = 0 being each family's own deterministic grid; then, on tiny
random CogVideoX, SVD and Wan models in float64, reconstruction by construction at one model call per
step, with and without guidance and reference attention (DESIGN fact 5 on the noisy latents), edits
that differ, the file (version 5) and the nodes and samplers that refuse the other kind."""
import dataclasses
import json
import math

import pytest
import torch

from tests.tiny_svd import write_tiny_svd
from tests.tiny_wan import write_tiny_wan
from vidinv import ddim, edm, errors, flow, friendly, nulltext, pipeline, trajectory
from vidinv.attention import ReferenceOptions
from vidinv.family import Guidance
from vidinv.hooks import Hooks
from vidinv.models import cogvideox, svd, wan
from vidinv.solver import Solver

pytestmark = pytest.mark.usefixtures("one_thread")
COGVIDEOX = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
             "prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "snr_shift_scale": 3.0,
             "set_alpha_to_one": True, "timestep_spacing": "trailing"}


def rel(a, b):
    return float((a - b).norm() / b.norm())


def same_steps(post, grid):
    return max(abs(p.a - s.a) + abs(p.b - s.b) for p, s in zip(post, grid.points))


# ----------------------------------------------------------------------------- the step

def test_eta_zero_is_each_familys_deterministic_grid():
    grids = [ddim.sampler_grid(ddim.schedule_from_config(COGVIDEOX), 50), edm.steps_grid([700.0, 9.0, 1.0, 0.05, 0.0]),
             flow.sampler_grid({"shift": 3.0}, 20)]
    for grid in grids:
        post = friendly.posterior(grid, 0.0)
        assert same_steps(post, grid) < 1e-12 and all(p.c == 0 for p in post)
        assert len(grid.levels) == grid.steps + 1 and grid.levels[-1] == (1.0, 0.0)


def test_cogvideox_step_is_diffusers_ddim_with_eta_one():
    from diffusers import DDIMScheduler
    schedule = ddim.schedule_from_config(COGVIDEOX)
    post = friendly.posterior(ddim.sampler_grid(schedule, 50))
    sched = DDIMScheduler(clip_sample=False, **{k: v for k, v in COGVIDEOX.items() if k != "snr_shift_scale"})
    sched.alphas_cumprod = torch.tensor(schedule.alphas_cumprod, dtype=torch.float64)  # snr_shift_scale applied
    sched.final_alpha_cumprod = torch.tensor(schedule.final_alpha_cumprod, dtype=torch.float64)
    sched.set_timesteps(50)
    g = torch.Generator().manual_seed(0)
    x, v, z = (torch.randn(6, generator=g, dtype=torch.float64) for _ in range(3))
    for i, t in enumerate(sched.timesteps):
        want = sched.step(v, t, x, eta=1.0, variance_noise=z, return_dict=False)[0]
        assert torch.allclose(post[i].a * x + post[i].b * v + post[i].c * z, want, atol=1e-7), i
    # from pure noise (zero terminal SNR) the posterior is the next level's prior; the last step has no noise
    assert post[0].c == pytest.approx(ddim.sampler_grid(schedule, 50).levels[1][1]) and post[-1].c == 0.0


def test_svd_step_is_ancestral_euler():
    sigmas = [80.0, 7.0, 0.9, 0.02, 0.0]
    post = friendly.posterior(edm.steps_grid(sigmas))
    g = torch.Generator().manual_seed(1)
    x, d, z = (torch.randn(5, generator=g, dtype=torch.float64) for _ in range(3))  # d: the denoised estimate
    for i, (s, n) in enumerate(zip(sigmas, sigmas[1:])):
        up = math.sqrt(n ** 2 * (s ** 2 - n ** 2) / s ** 2)
        down = math.sqrt(n ** 2 - up ** 2)
        want = x + (down - s) * (x - d) / s + up * z  # k-diffusion's sample_euler_ancestral, eta 1
        assert torch.allclose(post[i].a * x + post[i].b * d + post[i].c * z, want, atol=1e-12)


def test_grids_without_levels_and_bad_eta_are_refused():
    grid = flow.sampler_grid({"shift": 3.0}, 4)
    with pytest.raises(errors.InputError, match="alpha, s"):
        friendly.posterior(dataclasses.replace(grid, levels=None))
    with pytest.raises(errors.InputError, match="eta"):
        friendly.posterior(grid, 1.5)


# ----------------------------------------------------------------------------- the families

@pytest.fixture(scope="module")
def wan64(tmp_path_factory):
    model = wan.load(write_tiny_wan(tmp_path_factory.mktemp("wan") / "w"))
    for m in (model.transformer, model.vae, model.text_encoder):
        m.double()
    return dataclasses.replace(model, dtype=torch.float64)


@pytest.fixture(scope="module")
def svd64(tmp_path_factory):
    model = svd.load(write_tiny_svd(tmp_path_factory.mktemp("svd") / "s"), "fp32")
    for m in (model.unet, model.vae, model.image_encoder):
        m.double()
    return dataclasses.replace(model, dtype=torch.float64)


@pytest.fixture(scope="module")
def cases(tiny64, wan64, svd64):
    """name -> (model, source conditioning, edit conditioning or None, x0)."""
    g = torch.Generator().manual_seed(3)
    cog = tiny64("5b")
    frame = torch.rand(1, 16, 16, 3, generator=g)
    return {
        "cogvideox": (cog, cogvideox.encode_text(cog, "a red circle moving right"),
                      cogvideox.encode_text(cog, "a blue circle moving right"),
                      torch.randn(1, 2, cog.latent_channels, 4, 4, generator=g, dtype=torch.float64)),
        "wan": (wan64, wan.encode_text(wan64, "a red circle moving right"),
                wan.encode_text(wan64, "a blue circle moving right"),
                torch.randn(1, 3, 12, 8, 8, generator=g, dtype=torch.float64)),
        "svd": (svd64, svd.encode_image(svd64, frame), svd.encode_image(svd64, frame.flip(1)),
                torch.randn(1, 3, 4, 8, 8, generator=g, dtype=torch.float64)),
    }


class Count(Hooks):
    def __init__(self):
        self.calls = 0

    def before_call(self):
        self.calls += 1


@pytest.mark.parametrize("name", ["cogvideox", "wan", "svd"])
@pytest.mark.parametrize("g", [1.0, 4.0])
def test_sampling_with_the_maps_reconstructs_by_construction(cases, name, g):
    model, cond, edit, x0 = cases[name]
    hooks = Count()
    traj = pipeline.invert_friendly(model, cond, x0, 10, Guidance(g), seed=5, hooks=hooks)
    assert hooks.calls == 10 and traj.kind == "edit-friendly" and traj.noise_maps.shape == (10, *x0.shape)
    back = pipeline.sample(model, cond, traj.noise, 10, Guidance(g), noise_maps=traj.noise_maps)
    assert rel(back, x0) < 1e-6  # latents and maps stored as fp32
    assert rel(pipeline.sample(model, cond, traj.noise, 10, Guidance(g)), x0) > 1e-2  # the maps are what holds it
    # reference attention attends to the noisy latents, which the sample meets exactly: fact 5
    patched = pipeline.with_reference(model, traj, ReferenceOptions())
    assert rel(pipeline.guided_sample(patched, cond, Guidance(g)), back) < 1e-6
    assert rel(pipeline.guided_sample(patched, edit, Guidance(g)), back) > 1e-4  # a random model: text matters little


def test_seed_draws_other_latents_and_the_file_is_version_5(cases, tmp_path):
    model, cond, _, x0 = cases["cogvideox"]
    a = pipeline.invert_friendly(model, cond, x0, 6, seed=1)
    b = pipeline.invert_friendly(model, cond, x0, 6, seed=2)
    assert not torch.equal(a.latents[1:], b.latents[1:]) and torch.equal(a.latents[0], b.latents[0])
    path = a.save(tmp_path / "friendly.safetensors")
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["vidinv"])
    assert meta["version"] == trajectory.FRIENDLY_VERSION == 5 and meta["extra"]["seed"] == 1
    loaded = trajectory.load(path)
    assert loaded.kind == "edit-friendly" and torch.equal(loaded.noise_maps, a.noise_maps)
    assert loaded.summary()["kind"] == "edit-friendly"
    with pytest.raises(errors.InputError, match="noise_maps must be"):
        trajectory.validate(dataclasses.replace(loaded, noise_maps=loaded.noise_maps[1:]))


def test_where_only_an_exact_trajectory_makes_sense_it_is_refused(cases):
    model, cond, _, x0 = cases["cogvideox"]
    traj = pipeline.invert_friendly(model, cond, x0, 4)
    with pytest.raises(errors.InputError, match="needs an exact trajectory; this one is edit-friendly"):
        nulltext.null_text_inversion(model, traj, 2.0, iters=1)
    with pytest.raises(errors.InputError, match="Prompt-tuning inversion needs an exact"):
        nulltext.prompt_tuning_inversion(model, traj, 2.0, iters=1)
    with pytest.raises(errors.InputError, match="start 'fresh' with an edit-friendly trajectory"):
        pipeline.guided_sample(pipeline.with_reference(model, traj), cond, start="fresh")
    with pytest.raises(errors.InputError, match="noise maps .* do not fit"):
        pipeline.sample(model, cond, traj.noise, 4, noise_maps=traj.noise_maps[1:])


# ----------------------------------------------------------------------------- start_at (issue 36)

def test_skip_steps_follows_the_reference_window_rule_and_leaves_a_step():
    assert [pipeline.skip_steps(f, 50) for f in (0.0, 0.2, 0.34, 0.5)] == [0, 10, 17, 25]
    assert pipeline.skip_steps(0.34, 10) == len(pipeline.attention.window_steps(0.0, 0.34, 10)) == 4
    assert pipeline.skip_steps(0.95, 4) == 3  # at least one step is sampled
    for bad in (-0.1, 1.0, float("nan"), "0.3"):
        with pytest.raises(errors.InputError, match="start_at"):
            pipeline.skip_steps(bad, 50)


@pytest.mark.parametrize("name", ["cogvideox", "wan", "svd"])
def test_a_late_start_solves_only_its_steps_and_still_reconstructs(cases, name):
    model, cond, edit, x0 = cases[name]
    hooks = Count()
    traj = pipeline.invert_friendly(model, cond, x0, 10, seed=5, hooks=hooks, start_at=0.34)
    first = traj.first_step
    assert first == 4 and hooks.calls == 6 and traj.calls == [1] * 6 + [0] * 4
    assert not traj.noise_maps[:first].any() and traj.noise_maps[first:].flatten(1).norm(dim=1).min() > 0
    full = pipeline.invert_friendly(model, cond, x0, 10, seed=5)
    assert torch.equal(traj.latents, full.latents) and torch.equal(traj.noise_maps[first:], full.noise_maps[first:])
    back = pipeline.sample(model, cond, traj.latent_for_step(first), 10, start=first, noise_maps=traj.noise_maps)
    assert rel(back, x0) < 1e-6
    patched = pipeline.with_reference(model, traj, ReferenceOptions())
    hooks = Count()
    assert rel(pipeline.guided_sample(patched, cond, hooks=hooks), x0) < 1e-6  # starts at first_step by itself
    assert hooks.calls == 2 * 6  # each sampled step: its reference call and the sample's; none before first_step
    assert rel(pipeline.guided_sample(patched, edit, start_at=0.5), back) > 1e-4


def test_an_exact_trajectory_started_late_reconstructs_exactly(cases):
    model, cond, edit, x0 = cases["wan"]
    traj = pipeline.invert(model, cond, x0, 8, Guidance(), Solver(iters=30, tol=1e-12))
    patched = pipeline.with_reference(model, traj, ReferenceOptions())
    whole = pipeline.guided_sample(patched, cond)
    hooks = Count()
    late = pipeline.guided_sample(patched, cond, start_at=0.5, hooks=hooks)
    assert hooks.calls == 2 * 4 and rel(late, x0) < 1e-6 and rel(whole, x0) < 1e-6  # latents stored as fp32
    with pytest.raises(errors.InputError, match="start 'fresh' there is none"):
        pipeline.guided_sample(patched, edit, start="fresh", start_at=0.5)


def test_a_partial_file_is_version_6_and_its_first_step_is_checked(cases, tmp_path):
    model, cond, _, x0 = cases["cogvideox"]
    traj = pipeline.invert_friendly(model, cond, x0, 6, seed=1, start_at=0.5)
    path = traj.save(tmp_path / "partial.safetensors")
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["vidinv"])
    assert meta["version"] == trajectory.PARTIAL_VERSION == 6 and meta["extra"]["first_step"] == 3
    loaded = trajectory.load(path)
    assert loaded.first_step == 3 and torch.equal(loaded.noise_maps, traj.noise_maps)
    assert trajectory.load(pipeline.invert_friendly(model, cond, x0, 6, seed=1).save(tmp_path / "whole.safetensors")
                           ).first_step == 0
    for bad in (6, -1, 1.5, "2"):
        with pytest.raises(errors.InputError, match="extra.first_step must be a whole number from 0 to 5"):
            trajectory.validate(dataclasses.replace(loaded, extra={**loaded.extra, "first_step": bad}))
    exact = pipeline.invert(model, cond, x0, 6)
    with pytest.raises(errors.InputError, match="0 for an exact trajectory"):
        trajectory.validate(dataclasses.replace(exact, extra={**exact.extra, "first_step": 2}))
