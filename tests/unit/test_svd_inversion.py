"""The pipeline (vidinv.pipeline) with Stable Video Diffusion on the tiny random SVD folder in float64: inversion
into the shared TRAJECTORY value, save/load, sampling back, guided sampling with reference
attention (duplicate-key invariance end to end), edited first frames, hooks, and the errors."""
import dataclasses

import pytest
import torch

from tests.tiny_svd import write_tiny_svd
from vidinv.family import Guidance
from vidinv.solver import Solver
from vidinv.attention import ReferenceOptions
from vidinv import attention, ddim, edm, errors, families, pipeline, trajectory
from vidinv.hooks import Hooks
from vidinv.models import cogvideox, svd

FRAMES, HW = 2, 4  # latent frames and size (8x8 pixels)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model64(tmp_path_factory):
    model = svd.load(write_tiny_svd(tmp_path_factory.mktemp("svd") / "tiny-svd"), "fp32")
    for m in (model.unet, model.vae, model.image_encoder):
        m.double()
    return dataclasses.replace(model, dtype=torch.float64)


def first_frame(seed):
    return torch.rand(1, 2 * HW, 2 * HW, 3, generator=torch.Generator().manual_seed(seed))


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def runs(model64):
    """x0 inverted without guidance (14 steps) and with frame-wise guidance 1 -> 3 (10 steps,
    damping 0.5 by default), each sampled back from the in-memory trajectory."""
    cond = svd.encode_image(model64, first_frame(8))
    x0 = torch.randn(1, FRAMES, 4, HW, HW, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    out = {}
    for key, steps, lo, hi, iters, tol in [("plain", 14, 1.0, 1.0, 10, 1e-10), ("cfg", 10, 1.0, 3.0, 20, 1e-8)]:
        traj = pipeline.invert(model64, cond, x0, steps, Guidance(hi, first=lo), Solver(iters=iters, tol=tol))
        out[key] = (traj, pipeline.sample(model64, cond, traj.noise, steps, Guidance(hi, first=lo)), (lo, hi))
    return cond, x0, out


def test_trajectory_carries_the_svd_grid_and_source(model64, runs):
    cond, x0, out = runs
    traj = out["cfg"][0]
    grid = edm.grid_from_config(model64.scheduler_config, 10)
    assert traj.family == "svd" and traj.steps == 10 and traj.latents.shape == (11, *x0.shape)
    assert traj.sigmas == list(grid.sigmas) and traj.sigmas[-1] == 0.0 and traj.timesteps == list(grid.timesteps)
    assert torch.equal(traj.clean, x0.float()) and traj.extra["damping"] == 0.5
    assert torch.equal(traj.embeds, cond.image_embeds) and torch.equal(traj.image_latents, cond.image_latents)
    assert not traj.negative_embeds.any() and traj.guidance == 3.0
    assert traj.conditioning == {"added_time_ids": [[6.0, 127.0, pytest.approx(0.02)]], "fps": 7,
                                 "motion_bucket_id": 127, "noise_aug_strength": pytest.approx(0.02), "seed": 0,
                                 "min_guidance": 1.0, "max_guidance": 3.0}
    assert max(traj.residuals) <= 1e-8 and len(traj.calls) == 10
    src = svd.source_conditioning(traj)
    assert torch.equal(src.added_time_ids, cond.added_time_ids) and src.model_fingerprint == model64.fingerprint


@pytest.mark.parametrize("key,bound", [("plain", 1e-7), ("cfg", 1e-6)])
def test_invert_save_load_sample_reproduces_the_clean_latent(model64, runs, tmp_path, key, bound):
    """The file changes nothing: sampling the loaded trajectory's noise with its stored source
    conditioning gives the in-memory round trip bit for bit (fp32 trajectory, float64 model:
    measured 5.4e-8 without guidance, 8.4e-8 with)."""
    cond, x0, out = runs
    traj, back, (lo, hi) = out[key]
    assert rel(back, x0) <= bound, rel(back, x0)
    loaded = trajectory.load(traj.save(tmp_path / "svd.safetensors"))
    assert loaded.family == "svd" and loaded.sigmas == traj.sigmas and loaded.conditioning == traj.conditioning
    loaded.check_model(model64)
    loaded.check_grid(model64.scheduler_config)
    again = pipeline.sample(model64, svd.source_conditioning(loaded), loaded.noise, loaded.steps,
                            Guidance(hi, first=lo))
    assert torch.equal(again, back)


@pytest.mark.parametrize("key,options", [
    ("plain", ReferenceOptions(weight=1.0)),
    ("plain", ReferenceOptions(blocks="0-3", start=0.2, end=0.8, weight=4.0, temporal=True)),
    ("plain", attention.ReferenceOptions(weight=0.5)),  # the CogVideoX node's options carry over
    ("cfg", ReferenceOptions(weight=2.0, rows="conditional")),
    ("cfg", ReferenceOptions(weight=2.0)),  # every CFG row: a reference row each
    ("cfg", ReferenceOptions(blocks="0-3", weight=4.0, temporal=True))])
def test_guided_sample_with_the_source_reconstructs(model64, runs, key, options):
    """DESIGN fact 5 through the public glue: the trajectory's own first frame + reference K/V at
    any setting gives the plain reconstruction (to the fp32 storage of the trajectory)."""
    cond, x0, out = runs
    traj, plain, (lo, hi) = out[key]
    guided = pipeline.guided_sample(pipeline.with_reference(model64, traj, options), None, Guidance(hi, first=lo))
    assert rel(guided, plain) <= 1e-7, rel(guided, plain)  # measured 2e-9 .. 1.3e-8
    assert rel(guided, x0) <= 2 * rel(plain, x0) + 1e-8


def test_a_shared_reference_row_breaks_reconstruction_under_cfg(model64, runs, monkeypatch):
    """The unconditional row (zero image conditioning) attending to the source row's keys is not
    attending to duplicates of its own: why a CFG trajectory gets a reference row per CFG row."""
    cond, x0, out = runs
    traj, plain, (lo, hi) = out["cfg"]
    monkeypatch.setattr(pipeline.attention, "reference_per_cfg_row", lambda *a: False)
    guided = pipeline.guided_sample(pipeline.with_reference(model64, traj, ReferenceOptions(weight=2.0)), None,
                                    Guidance(hi, first=lo))
    assert rel(guided, plain) > 1e-5, rel(guided, plain)


def test_guided_sample_with_another_first_frame(model64, runs):
    cond, x0, out = runs
    traj, plain, _ = out["plain"]
    edit = svd.encode_image(model64, first_frame(3))
    guided = pipeline.guided_sample(pipeline.with_reference(model64, traj, ReferenceOptions(weight=2.0)), edit)
    unguided = pipeline.sample(model64, edit, traj.noise, traj.steps)
    assert rel(guided, x0) > 1e-2 and rel(guided, unguided) > 1e-3  # the edit and the reference both act
    assert rel(guided, x0) < rel(unguided, x0)  # the reference pulls towards the source
    fresh = pipeline.guided_sample(pipeline.with_reference(model64, traj, ReferenceOptions(weight=1.0)), edit,
                                   start="fresh", seed=1)
    assert fresh.shape == x0.shape and torch.isfinite(fresh).all()


class Counting(Hooks):
    def __init__(self):
        self.calls, self.steps = 0, []

    def before_call(self):
        self.calls += 1

    def after_step(self, i, total, info):
        self.steps.append((i, total, info["sigma"]))


def test_hooks_see_every_unet_call_and_step(model64, runs):
    cond, x0, out = runs
    traj = out["plain"][0]
    unet_calls = []
    handle = model64.unet.register_forward_pre_hook(lambda *a: unet_calls.append(1))
    hooks = Counting()
    try:
        opts = ReferenceOptions(start=0.5, weight=1.0)
        pipeline.guided_sample(pipeline.with_reference(model64, traj, opts), cond, hooks=hooks)
    finally:
        handle.remove()
    active = len(opts.active_steps(traj.steps))
    assert hooks.calls == len(unet_calls) == traj.steps + active
    assert [s[0] for s in hooks.steps] == list(range(traj.steps)) and hooks.steps[0][1:] == (14, traj.sigmas[0])

    class Interrupt(Exception):
        pass

    class Stop(Hooks):
        def __init__(self):
            self.n = 0

        def before_call(self):
            self.n += 1
            if self.n == 4:  # the second step's sample call, after its reference pass
                raise Interrupt

    before = dict(model64.unet.attn_processors)
    with pytest.raises(Interrupt):
        pipeline.guided_sample(pipeline.with_reference(model64, traj, ReferenceOptions(weight=1.0)), cond, hooks=Stop())
    after = model64.unet.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)


# ----------------------------------------------------------------------------- errors

def cogvideox_trajectory(steps=3):
    cfg = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
               rescale_betas_zero_snr=True, snr_shift_scale=3.0, timestep_spacing="trailing",
               prediction_type="v_prediction", clip_sample=False)
    e = torch.zeros(1, 3, 8)
    return trajectory.Trajectory(
        latents=torch.zeros(steps + 1, 1, FRAMES, 4, HW, HW),
        timesteps=ddim.timesteps(ddim.schedule_from_config(cfg), steps),
        scheduler_config=cfg, model_fingerprint="cog", model_name="tiny-cogvideox", prompt="a", negative_prompt="",
        embeds=e, negative_embeds=e, guidance=1.0, dynamic_cfg=False, iterations=10, tolerance=1e-5,
        residuals=[0.0] * steps, calls=[1] * steps)


def test_trajectories_of_the_other_family_are_refused(model64, runs):
    with pytest.raises(errors.InputError, match="CogVideoX trajectory.*given to a Stable Video Diffusion"):
        pipeline.guided_sample(pipeline.with_reference(model64, cogvideox_trajectory(), ReferenceOptions(weight=1.0)),
                               None)
    # and an SVD trajectory on the CogVideoX path (what its nodes call before sampling)
    traj = runs[2]["plain"][0]
    cog = dataclasses.replace(model64, family="cogvideox", name="tiny-cogvideox")
    with pytest.raises(errors.InputError, match="Stable Video Diffusion trajectory.*given to a CogVideoX"):
        traj.check_model(cog)
    with pytest.raises(errors.InputError, match="Stable Video Diffusion trajectory.*given to a CogVideoX"):
        traj.check_grid(ddim.schedule_from_config(cogvideox_trajectory().scheduler_config))
    with pytest.raises(errors.InputError, match="not Stable Video Diffusion"):
        families.require(cog, svd.FAMILY.name, "Euler Sample (SVD)", "")  # what the SVD nodes call first


def test_trajectory_from_another_model_or_grid_is_refused(model64, runs):
    traj = runs[2]["plain"][0]
    with pytest.raises(errors.InputError, match="fingerprint"):
        other = dataclasses.replace(model64, fingerprint="0" * 16, name="other")
        pipeline.guided_sample(pipeline.with_reference(other, traj, ReferenceOptions(weight=1.0)), None)
    shifted = dataclasses.replace(model64, scheduler_config=dict(model64.scheduler_config, sigma_max=80.0))
    with pytest.raises(errors.InputError, match="changed settings: sigma_max 700.0 -> 80.0"):
        pipeline.guided_sample(pipeline.with_reference(shifted, traj, ReferenceOptions(weight=1.0)), None)


def test_bad_inputs_are_refused_before_any_model_call(model64, runs):
    cond, x0, out = runs
    calls = []
    handle = model64.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(errors.InputError, match=r"is not \[B, F, 4, H, W\]"):
            pipeline.invert(model64, cond, x0[:, :, :3], 4)
        with pytest.raises(errors.InputError, match=r"is not \[B, F, 4, H, W\]"):
            pipeline.invert(model64, cond, x0[0], 4)
        with pytest.raises(errors.InputError, match="encoded by another model"):
            pipeline.invert(model64, dataclasses.replace(cond, model_fingerprint="0" * 16), x0, 4)
        e = torch.zeros(1, 3, 8)
        text = cogvideox.Conditioning("a red circle", "", e, e, model64.fingerprint)
        with pytest.raises(errors.InputError, match="cogvideox.Conditioning, not an SVD first-frame"):
            pipeline.invert(model64, text, x0, 4)
        with pytest.raises(errors.InputError, match="no 0-step Euler grid"):
            pipeline.invert(model64, cond, x0, 0)
        with pytest.raises(errors.InputError, match="trajectory dtype"):
            pipeline.invert(model64, cond, x0, 4, dtype="fp64")
        with pytest.raises(errors.InputError, match="guidance"):
            pipeline.sample(model64, cond, x0, 4, Guidance(float("nan"), first=1.0))
        traj = out["plain"][0]
        with pytest.raises(errors.InputError, match="'text' does not apply to Stable Video Diffusion"):
            pipeline.guided_sample(pipeline.with_reference(model64, traj, attention.ReferenceOptions(text=True)), None)
        with pytest.raises(errors.InputError, match="reference_text 'edit' does not apply"):
            pipeline.guided_sample(pipeline.with_reference(model64, traj,
                                                           attention.ReferenceOptions(reference_text="edit")), None)
        with pytest.raises(errors.InputError, match="outside 0..6"):
            pipeline.guided_sample(pipeline.with_reference(model64, traj, ReferenceOptions(blocks="7", weight=1.0)),
                                   None)
        with pytest.raises(errors.InputError, match="step window"):
            pipeline.guided_sample(pipeline.with_reference(model64, traj,
                                                           ReferenceOptions(start=0.9, end=0.1, weight=1.0)), None)
        with pytest.raises(errors.InputError, match="is not one of inverted, fresh, fresh in mask"):
            pipeline.guided_sample(pipeline.with_reference(model64, traj, ReferenceOptions(weight=1.0)), None,
                                   start="noise")
        big = svd.encode_image(model64, torch.rand(1, 12, 12, 3))
        with pytest.raises(errors.InputError, match="first frame is 12x12 pixels, the video 8x8"):
            pipeline.guided_sample(pipeline.with_reference(model64, traj, ReferenceOptions(weight=1.0)), big)
    finally:
        handle.remove()
    assert calls == []
