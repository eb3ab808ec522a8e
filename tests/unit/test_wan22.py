"""Wan 2.2 in the Wan family, on tiny random folders of its three diffusers layouts (tests/tiny_wan.py):
two experts (T2V A14B: ``transformer`` for high noise, ``transformer_2`` for low noise, with other
weights, switched at ``boundary_ratio``), TI2V-5B's image-to-video (the first frame's latent in
place of the first latent frame, per-token timesteps) and I2V A14B (two experts and channel
conditioning without CLIP). Each against diffusers' own pipeline from the same noise (Euler
scheduler, the folder's shift, CFG off and on), the expert switch at a boundary between two steps and
on a step, exact round trips at 20 and 50 steps, guided reconstruction equal to plain sampling with
both experts (duplicate keys, DESIGN fact 5), and the expert in use alone on the device when
offloading."""
import dataclasses

import numpy as np
import pytest
import torch

from tests.tiny_wan import TEMPORAL, TI2V_CHANNELS, TI2V_SPATIAL, to64, write_tiny_wan
from vidinv import editmask, errors, families, pipeline, trajectory
from vidinv.attention import ReferenceOptions
from vidinv.family import Guidance
from vidinv.models import wan
from vidinv.solver import Solver

pytestmark = pytest.mark.usefixtures("one_thread")
FRAMES, HW = 3, 8  # latent frames and size of the Wan 2.1-VAE layouts: 5 frames of 16x16 pixels
TI2V_HW = 4  # the TI2V latent's size: 32x32 pixels
RATIO = 0.875  # Wan2.2-T2V-A14B's boundary


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def two_folder(tmp_path_factory):
    return write_tiny_wan(tmp_path_factory.mktemp("wan22") / "tiny-wan22-t2v", seed=5, boundary_ratio=RATIO)


@pytest.fixture(scope="module")
def two64(two_folder):
    return to64(wan.load(two_folder, "fp32"))


@pytest.fixture(scope="module")
def two_conds(two64):
    return wan.encode_text(two64, "a red circle moving right"), wan.encode_text(two64, "a blue circle moving right")


def latent(seed=3, channels=12, hw=HW):
    return torch.randn(1, FRAMES, channels, hw, hw, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def timesteps(model, steps):
    return families.of(model).grid(model, steps).timesteps


def ratio_on_step(model, steps, k):
    """A boundary_ratio whose boundary (in float32, as diffusers compares) is step k's model time."""
    t = timesteps(model, steps)[k]
    ratio = t / int(model.scheduler_config.get("num_train_timesteps", 1000))
    assert np.float32(ratio * 1000) == np.float32(t)
    return ratio


def ratio_between(model, steps, k):
    ts = timesteps(model, steps)
    return (ts[k] + ts[k + 1]) / 2 / 1000


class ExpertLog:
    """Which expert each network call went to, with its model time (forward pre-hooks)."""

    def __init__(self, experts):
        self.calls = []
        self.handles = [e.register_forward_pre_hook(self.hook(k), with_kwargs=True) for k, e in enumerate(experts)]

    def hook(self, k):
        def record(module, args, kwargs):
            self.calls.append((k, float(kwargs["timestep"].flatten().max())))
        return record

    def close(self):
        for h in self.handles:
            h.remove()

    def per_step(self):
        """The expert of each distinct model time, in call order."""
        return list(dict.fromkeys(self.calls))


def diffusers_experts(pipe, **call):
    log = ExpertLog((pipe.transformer, pipe.transformer_2))
    try:
        out = pipe(**call, output_type="latent").frames
    finally:
        log.close()
    return out, log.per_step()


# ----------------------------------------------------------------------------- two experts

def test_expert_index_is_diffusers_comparison():
    assert wan.expert_index(875.0, 875.0) == 0 and wan.expert_index(874.99, 875.0) == 1
    assert wan.expert_index(3.0, None) == 0
    t = float(np.float32(937.5123))
    assert wan.expert_index(t, t / 1000 * 1000) == 0  # the same float32 point is "on" the boundary


@pytest.mark.parametrize("where", ["between", "on"])
@pytest.mark.parametrize("guidance", [Guidance(1.0), Guidance(4.0), Guidance(4.0, second=2.5)])
def test_two_experts_sample_as_wan_pipeline(two_folder, two_conds, where, guidance):
    """The same latent as WanPipeline from the same noise, the switch at the same step (a boundary
    between steps 3 and 4, or on step 3's model time: that step is still the high-noise expert's),
    with guidance_scale_2 for the low-noise expert."""
    from diffusers import WanPipeline
    steps, k = 8, 3
    pipe = WanPipeline.from_pretrained(two_folder)
    model = wan.load(two_folder, "fp32")
    ratio = (ratio_on_step if where == "on" else ratio_between)(model, steps, k)
    pipe.register_to_config(boundary_ratio=ratio)
    model = dataclasses.replace(model, boundary_ratio=ratio)
    cond = wan.encode_text(model, "a red circle moving right", "a square")
    noise = torch.randn(1, 12, FRAMES, HW, HW, generator=torch.Generator().manual_seed(0))
    want, theirs = diffusers_experts(pipe, prompt_embeds=cond.embeds, negative_prompt_embeds=cond.negative_embeds,
                                     latents=noise, num_frames=5, height=16, width=16, num_inference_steps=steps,
                                     guidance_scale=guidance.scale, guidance_scale_2=guidance.second)
    log = ExpertLog(model.experts)
    try:
        got = pipeline.sample(model, cond, noise.permute(0, 2, 1, 3, 4), steps, guidance)
    finally:
        log.close()
    assert [e for e, _ in log.per_step()] == [e for e, _ in theirs] == [0] * (k + 1) + [1] * (steps - k - 1)
    assert rel(got, want.permute(0, 2, 1, 3, 4)) < 1e-4
    swapped = dataclasses.replace(model, transformer=model.transformer_2, transformer_2=model.transformer)
    assert rel(pipeline.sample(swapped, cond, noise.permute(0, 2, 1, 3, 4), steps, guidance),
               want.permute(0, 2, 1, 3, 4)) > 1e-2  # the experts differ: a swap cannot pass


@pytest.fixture(scope="module")
def two_runs(two64, two_conds):
    """x0 inverted and sampled back at 20 and 50 steps, guidance 1 and 4 (3 for the low-noise expert)."""
    x0, out = latent(), {}
    for steps in (20, 50):
        for g in (Guidance(1.0), Guidance(4.0, second=3.0)):
            traj = pipeline.invert(two64, two_conds[0], x0, steps, g, Solver(iters=20, tol=1e-10))
            out[steps, g.scale] = (traj, pipeline.sample(two64, two_conds[0], traj.noise, steps, g), g)
    return x0, out


@pytest.mark.parametrize("steps", [20, 50])
@pytest.mark.parametrize("g, bound", [(1.0, 1e-4), (4.0, 1e-3)])
def test_two_expert_round_trip(two_runs, steps, g, bound):
    x0, out = two_runs
    traj, back, guidance = out[steps, g]
    assert rel(back, x0) < bound
    assert families.of(traj).trajectory_guidance(traj) == guidance  # guidance_2 is recorded


def test_inversion_calls_the_expert_of_the_noisier_point(two64, two_conds):
    """Every call of an inverse step from sigma_{i+1} to sigma_i is made at model time t_i by the
    expert the sampler uses at t_i (the high-noise one at t >= boundary)."""
    log = ExpertLog(two64.experts)
    try:
        pipeline.invert(two64, two_conds[0], latent(), 10, Guidance(1.0), Solver(iters=3, tol=0.0))
    finally:
        log.close()
    ts = timesteps(two64, 10)
    assert {t for _, t in log.calls} == {float(np.float32(t)) for t in ts}
    for expert, t in log.calls:
        assert expert == (0 if np.float32(t) >= np.float32(RATIO * 1000) else 1)
    assert {e for e, _ in log.calls} == {0, 1}


@pytest.mark.parametrize("g", [1.0, 4.0])
@pytest.mark.parametrize("options", [ReferenceOptions(), ReferenceOptions(blocks="1", weight=5.0, rows="conditional")])
def test_guided_reconstruction_with_both_experts(two64, two_conds, two_runs, g, options):
    """Reference passes through the expert of each step: its keys duplicate the sample's own (fact 5),
    so reconstruction is plain sampling; both experts' processors come back."""
    traj, back, guidance = two_runs[1][20, g]
    before = [dict(e.attn_processors) for e in two64.experts]
    log = ExpertLog(two64.experts)
    try:
        out = pipeline.guided_sample(pipeline.with_reference(two64, traj, options), two_conds[0], guidance)
    finally:
        log.close()
    assert rel(out, back) < 1e-6
    assert [dict(e.attn_processors) for e in two64.experts] == before
    for expert, t in log.calls:  # reference and sample calls alike
        assert expert == wan.expert_index(t, two64.boundary)


def test_a_reference_through_the_wrong_expert_breaks_reconstruction(two64, two_conds, two_runs, monkeypatch):
    """Reference passes made by the high-noise expert at every step no longer duplicate the low-noise
    expert's keys: the test above would see it."""
    traj, back, guidance = two_runs[1][20, 1.0]
    fam = families.of(two64)
    own = type(fam).reference_call
    high_only = dataclasses.replace(two64, transformer_2=two64.transformer)
    monkeypatch.setattr(type(fam), "reference_call", lambda self, model, *a, **k: own(self, high_only, *a, **k))
    out = pipeline.guided_sample(pipeline.with_reference(two64, traj), two_conds[0], guidance)
    assert rel(out, back) > 1e-4


def test_edit_friendly_and_edit_mask_with_two_experts(two64, two_conds, two_runs):
    x0 = two_runs[0]
    traj = pipeline.invert_friendly(two64, two_conds[0], x0, 12, Guidance(4.0, second=3.0), seed=1)
    back = pipeline.sample(two64, two_conds[0], traj.noise, 12, Guidance(4.0, second=3.0), noise_maps=traj.noise_maps)
    assert rel(back, x0) < 1e-6  # the maps are stored in fp32
    exact, plain, guidance = two_runs[1][20, 4.0]
    patched = pipeline.with_reference(two64, exact)
    m = editmask.EditMask(0.7, source="difference")
    assert rel(pipeline.guided_sample(patched, two_conds[0], guidance, edit_mask=m), plain) < 1e-6
    assert not m.latent.any()
    m = editmask.EditMask(0.7, source="attention")
    masked = pipeline.guided_sample(patched, two_conds[1], guidance, edit_mask=m)
    outside = (1 - m.latent).bool().expand_as(masked)
    assert 0 < float(m.latent.mean()) < 1 and torch.allclose(masked[outside], x0[outside], atol=1e-6)


def test_offloading_keeps_only_the_expert_in_use_on_the_device(two_folder, two_conds):
    """With an offload device, each call's expert is moved to the device after the other went back;
    both are on the offload device after the loop; the loader says so."""
    model = wan.load(two_folder, "fp32")
    model = dataclasses.replace(model, offload_device=torch.device("meta"))  # moves are recorded, not made
    assert "only the expert in use on the device" in model.describe()
    where, moves = {0: "meta", 1: "meta"}, []
    for k, e in enumerate(model.experts):
        def to(device, k=k, e=e):
            where[k] = str(device)
            moves.append(dict(where))
            return e
        e.to = to
    try:
        cond = wan.encode_text(dataclasses.replace(model, offload_device=model.device), "a red circle")
        cond = dataclasses.replace(cond, model_fingerprint=model.fingerprint)
        pipeline.sample(model, cond, latent(seed=1).float(), 8, Guidance(1.0))
    finally:
        for e in model.experts:
            del e.to
    in_use = [m for m in moves if "cpu" in m.values()]
    assert in_use and all(sorted(m.values()) == ["cpu", "meta"] for m in in_use)
    assert {tuple(m.values()) for m in in_use} == {("cpu", "meta"), ("meta", "cpu")}
    assert where == {0: "meta", 1: "meta"}


def test_two_expert_folders_refused_with_a_reason(two_folder, tmp_path):
    import json
    import shutil
    bad = tmp_path / "bad-ratio"
    shutil.copytree(two_folder, bad)
    index = json.loads((bad / "model_index.json").read_text())
    (bad / "model_index.json").write_text(json.dumps(dict(index, boundary_ratio=1.5)))
    with pytest.raises(errors.InputError, match="not a number between 0 and 1"):
        wan.load(bad)
    (bad / "model_index.json").write_text(json.dumps(index))
    cfg = json.loads((bad / "transformer_2" / "config.json").read_text())
    (bad / "transformer_2" / "config.json").write_text(json.dumps(dict(cfg, num_layers=2)))
    with pytest.raises(errors.InputError, match="experts differ in num_layers"):
        wan.load(bad)
    shutil.rmtree(bad / "transformer_2")
    with pytest.raises(errors.InputError, match="does not hold"):
        wan.load(bad)


def test_second_guidance_refused_on_one_network(tmp_path):
    one = wan.load(write_tiny_wan(tmp_path / "one"))
    x = latent().float()
    with pytest.raises(errors.InputError, match="one network"):
        pipeline.invert(one, wan.encode_text(one, "x"), x, 4, Guidance(4.0, second=2.0))


# ----------------------------------------------------------------------------- TI2V-5B image-to-video

@pytest.fixture(scope="module")
def ti2v_folder(tmp_path_factory):
    return write_tiny_wan(tmp_path_factory.mktemp("wan22-ti2v") / "tiny-wan22-ti2v", seed=6, ti2v=True)


@pytest.fixture(scope="module")
def ti2v64(ti2v_folder):
    return to64(wan.load(ti2v_folder, "fp32"))


def frames_u8(seed=0, n=5, hw=32):
    return (np.random.default_rng(seed).random((n, hw, hw, 3)) * 255).astype("uint8")


@pytest.mark.parametrize("g", [1.0, 4.0])
def test_ti2v_image_to_video_samples_as_the_diffusers_pipeline(ti2v_folder, g):
    """WanImageToVideoPipeline with expand_timesteps (no CLIP encoder): the same latent from the same
    noise, its first latent frame the image's; without an image, WanPipeline's text-to-video."""
    import PIL.Image
    from diffusers import WanImageToVideoPipeline, WanPipeline
    t2v = WanPipeline.from_pretrained(ti2v_folder)
    assert t2v.config.expand_timesteps
    pipe = WanImageToVideoPipeline(tokenizer=t2v.tokenizer, text_encoder=t2v.text_encoder, vae=t2v.vae,
                                   scheduler=t2v.scheduler, transformer=t2v.transformer, image_encoder=None,
                                   image_processor=None, expand_timesteps=True)
    model = wan.load(ti2v_folder, "fp32")
    assert model.first_frame_in_place and model.takes_first_frame and not model.is_i2v
    assert model.latent_channels == TI2V_CHANNELS and model.spatial_factor == TI2V_SPATIAL
    cond = wan.encode_text(model, "a red circle moving right", "a square")
    u8 = frames_u8(1, 1)[0]
    image = wan.encode_image_condition(model, torch.from_numpy(u8).float().div(255)[None], FRAMES)
    assert image.latents.shape == (1, 1, TI2V_CHANNELS, TI2V_HW, TI2V_HW) and image.embeds is None
    noise = torch.randn(1, TI2V_CHANNELS, FRAMES, TI2V_HW, TI2V_HW, generator=torch.Generator().manual_seed(0))
    common = dict(prompt_embeds=cond.embeds, negative_prompt_embeds=cond.negative_embeds, latents=noise,
                  num_frames=5, height=32, width=32, num_inference_steps=6, guidance_scale=g, output_type="latent")
    want = pipe(image=PIL.Image.fromarray(u8), **common).frames.permute(0, 2, 1, 3, 4)
    got = pipeline.sample(model, cond, noise.permute(0, 2, 1, 3, 4), 6, Guidance(g), image_latents=image)
    assert rel(got, want) < 1e-4
    assert torch.allclose(got[:, 0], image.latents[:, 0], atol=1e-5)
    want = t2v(**common).frames.permute(0, 2, 1, 3, 4)
    assert rel(pipeline.sample(model, cond, noise.permute(0, 2, 1, 3, 4), 6, Guidance(g)), want) < 1e-4


@pytest.fixture(scope="module")
def ti2v_source(ti2v64):
    clip = torch.from_numpy(frames_u8()).double().div(255)
    z, image, pad, fitted, _ = families.of(ti2v64).encode_frames(ti2v64, clip, "trim", "error", 32, 32, "off")
    conds = (wan.encode_text(ti2v64, "a red circle moving right"),
             wan.encode_text(ti2v64, "a blue circle moving right"))
    return z.double(), image, conds


@pytest.fixture(scope="module")
def ti2v_runs(ti2v64, ti2v_source):
    x0, image, conds = ti2v_source
    out = {}
    for steps in (20, 50):
        for g in (1.0, 4.0):
            traj = pipeline.invert(ti2v64, conds[0], x0, steps, Guidance(g), Solver(iters=20, tol=1e-10),
                                   image_latents=image)
            out[steps, g] = (traj, pipeline.sample(ti2v64, conds[0], traj.noise, steps, Guidance(g),
                                                   image_latents=image))
    return out


@pytest.mark.parametrize("steps", [20, 50])
@pytest.mark.parametrize("g, bound", [(1.0, 1e-4), (4.0, 1e-3)])
def test_ti2v_round_trip_keeps_the_first_frame_clean(ti2v_source, ti2v_runs, steps, g, bound):
    """VAE Encode gives the latent and the first frame's latent (its first latent frame); every latent
    of the trajectory keeps that frame clean, and the trajectory records the image latent."""
    x0, image, _ = ti2v_source
    assert torch.equal(x0[:, :1].float(), image.latents.float())
    traj, back = ti2v_runs[steps, g]
    assert rel(back, x0) < bound
    assert torch.allclose(traj.latents[:, :, 0].double(), x0[:, 0].expand_as(traj.latents[:, :, 0]).double(), atol=1e-6)
    assert torch.equal(traj.image_latents, image.latents.float())


@pytest.mark.parametrize("g", [1.0, 4.0])
def test_ti2v_guided_reconstruction_and_an_edited_first_frame(ti2v64, ti2v_source, ti2v_runs, tmp_path, g):
    x0, image, conds = ti2v_source
    traj, back = ti2v_runs[20, g]
    loaded = trajectory.load(traj.save(tmp_path / "ti2v.safetensors"))
    patched = pipeline.with_reference(ti2v64, loaded)
    assert rel(pipeline.guided_sample(patched, conds[0], Guidance(g)), back) < 1e-6
    other = families.of(ti2v64).first_frame_latents(ti2v64, loaded.latents[0],
                                                    torch.from_numpy(frames_u8(7, 1)).double() / 255)
    edited = pipeline.guided_sample(patched, conds[0], Guidance(g), image_latents=other)
    assert rel(edited, back) > 1e-3 and torch.allclose(edited[:, 0], other.latents[:, 0].double(), atol=1e-5)
    recipe = families.of(ti2v64).edit_recipe(ti2v64)  # nothing measured on TI2V: the default chain, not I2V's
    assert (recipe.weight, recipe.mask_level) == (2.0, 1.0)


def test_ti2v_refuses_a_foreign_first_frame_latent(ti2v64, ti2v_source):
    x0, image, conds = ti2v_source
    with pytest.raises(errors.InputError, match="TI2V"):
        pipeline.invert(ti2v64, conds[0], x0, 4, image_latents=wan.ImageCondition(image.latents[..., :2], None))
    with pytest.raises(errors.InputError, match="TI2V"):  # CLIP tokens belong to Wan 2.1 I2V
        pipeline.invert(ti2v64, conds[0], x0, 4, image_latents=wan.ImageCondition(image.latents, torch.zeros(1, 3, 4)))


# ----------------------------------------------------------------------------- I2V A14B

@pytest.fixture(scope="module")
def i2v_folder(tmp_path_factory):
    return write_tiny_wan(tmp_path_factory.mktemp("wan22-i2v") / "tiny-wan22-i2v", seed=7, i2v=True, boundary_ratio=0.9)


@pytest.mark.parametrize("g", [1.0, 4.0])
def test_i2v_a14b_samples_as_wan_image_to_video_pipeline(i2v_folder, g):
    import PIL.Image
    from diffusers import WanImageToVideoPipeline
    pipe = WanImageToVideoPipeline.from_pretrained(i2v_folder)
    model = wan.load(i2v_folder, "fp32")
    assert model.is_i2v and model.image_encoder is None and len(model.experts) == 2
    steps = 8
    ratio = ratio_between(model, steps, 2)
    pipe.register_to_config(boundary_ratio=ratio)
    model = dataclasses.replace(model, boundary_ratio=ratio)
    u8 = frames_u8(1, 1, 16)[0]
    cond = wan.encode_text(model, "a red circle moving right", "a square")
    image = wan.encode_image_condition(model, torch.from_numpy(u8).float().div(255)[None], FRAMES)
    assert image.latents.shape == (1, FRAMES, TEMPORAL + 12, HW, HW) and image.embeds is None
    noise = torch.randn(1, 12, FRAMES, HW, HW, generator=torch.Generator().manual_seed(0))
    want, theirs = diffusers_experts(pipe, image=PIL.Image.fromarray(u8), prompt_embeds=cond.embeds,
                                     negative_prompt_embeds=cond.negative_embeds, latents=noise, num_frames=5,
                                     height=16, width=16, num_inference_steps=steps, guidance_scale=g)
    log = ExpertLog(model.experts)
    try:
        got = pipeline.sample(model, cond, noise.permute(0, 2, 1, 3, 4), steps, Guidance(g), image_latents=image)
    finally:
        log.close()
    assert [e for e, _ in log.per_step()] == [e for e, _ in theirs] == [0] * 3 + [1] * (steps - 3)
    assert rel(got, want.permute(0, 2, 1, 3, 4)) < 1e-4


def test_i2v_a14b_round_trip_and_guided_reconstruction(i2v_folder):
    model = to64(wan.load(i2v_folder, "fp32"))
    clip = torch.from_numpy(frames_u8(2, 5, 16)).double().div(255)
    x0, image, *_ = families.of(model).encode_frames(model, clip, "trim", "error", 16, 16, "off")
    cond = wan.encode_text(model, "a red circle moving right")
    for g in (1.0, 4.0):
        traj = pipeline.invert(model, cond, x0.double(), 20, Guidance(g), Solver(iters=20, tol=1e-10),
                               image_latents=image)
        back = pipeline.sample(model, cond, traj.noise, 20, Guidance(g), image_latents=image)
        assert rel(back, x0.double()) < (1e-4 if g == 1.0 else 1e-3)
        guided = pipeline.guided_sample(pipeline.with_reference(model, traj), cond, Guidance(g))
        assert rel(guided, back) < 1e-6
