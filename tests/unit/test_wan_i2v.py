"""Wan image-to-video, on a tiny random Wan 2.1 I2V folder (tests/tiny_wan.py, ``i2v=True``): the
first-frame conditioning and sampling against WanImageToVideoPipeline, exact inversion at guidance 1
and 5 in float64, guided reconstruction with the source's first-frame conditioning in the reference
pass (DESIGN fact 5), an edited first frame, trajectories carrying the conditioning, and the inputs
and folders it refuses."""
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from tests.tiny_wan import CLIP_WIDTH, LATENT_CHANNELS, TEMPORAL, write_tiny_wan
from vidinv import errors, families, pipeline, trajectory
from vidinv.attention import ReferenceOptions
from vidinv.family import Guidance
from vidinv.models import wan
from vidinv.solver import Solver

pytestmark = pytest.mark.usefixtures("one_thread")
FRAMES, HW = 3, 8  # latent frames and size: 5 frames of 16x16 pixels


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_wan(tmp_path_factory.mktemp("wan-i2v") / "tiny-wan-i2v", seed=4, i2v=True)


@pytest.fixture(scope="module")
def model64(folder):
    model = wan.load(folder, "fp32")
    for m in (model.transformer, model.vae, model.text_encoder, model.image_encoder):
        m.double()
    return dataclasses.replace(model, dtype=torch.float64)


def frames_u8(seed=0, n=5):
    return (np.random.default_rng(seed).random((n, 16, 16, 3)) * 255).astype("uint8")


def as_image(u8):
    return torch.from_numpy(u8).double().div(255)


@pytest.fixture(scope="module")
def source(model64):
    """A 5-frame video, its latent and first-frame conditioning, two prompts."""
    clip = as_image(frames_u8())
    fam = families.of(model64)
    z, image, pad, fitted, _ = fam.encode_frames(model64, clip, "trim", "error", 16, 16, "off")
    conds = wan.encode_text(model64, "a red circle moving right"), wan.encode_text(model64, "a blue circle moving right")
    return z.double(), image, conds


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def runs(model64, source):
    x0, image, conds = source
    out = {}
    for g in (1.0, 5.0):
        traj = pipeline.invert(model64, conds[0], x0, 12, Guidance(g), Solver(iters=20, tol=1e-10), image_latents=image)
        out[g] = (traj, pipeline.sample(model64, conds[0], traj.noise, 12, Guidance(g), image_latents=image))
    return out


def test_conditioning_and_sampling_match_wan_image_to_video_pipeline(folder):
    """Mask + first-frame latent on channels and CLIP tokens in cross-attention, as the pipeline
    builds them: the same latent from the same noise under CFG 4."""
    import PIL.Image
    from diffusers import WanImageToVideoPipeline
    pipe = WanImageToVideoPipeline.from_pretrained(folder)
    model = wan.load(folder, "fp32")
    assert model.is_i2v and model.condition_channels == TEMPORAL + LATENT_CHANNELS
    u8 = frames_u8(1, 1)[0]
    cond = wan.encode_text(model, "a red circle moving right", "a square")
    image = wan.encode_image_condition(model, torch.from_numpy(u8).float().div(255)[None], FRAMES)
    assert image.latents.shape == (1, FRAMES, TEMPORAL + LATENT_CHANNELS, HW, HW)
    assert image.embeds.shape == (1, 17, CLIP_WIDTH)
    assert torch.equal(image.latents[0, :, :TEMPORAL].amax((1, 2, 3)), torch.tensor([1.0, 0.0, 0.0]))
    pil = PIL.Image.fromarray(u8)
    assert torch.allclose(image.embeds, pipe.encode_image(pil).detach(), atol=1e-6)
    noise = torch.randn(1, LATENT_CHANNELS, FRAMES, HW, HW, generator=torch.Generator().manual_seed(0))
    want = pipe(image=pil, prompt_embeds=cond.embeds, negative_prompt_embeds=cond.negative_embeds, latents=noise,
                num_frames=5, height=16, width=16, num_inference_steps=6, guidance_scale=4.0,
                output_type="latent").frames
    got = pipeline.sample(model, cond, noise.permute(0, 2, 1, 3, 4), 6, Guidance(4.0), image_latents=image)
    assert rel(got, want.permute(0, 2, 1, 3, 4)) < 1e-5


@pytest.mark.parametrize("g, bound", [(1.0, 1e-6), (5.0, 1e-5)])
def test_round_trip_is_exact(source, runs, g, bound):
    traj, back = runs[g]
    assert rel(back, source[0]) < bound
    assert traj.image_latents.shape == source[1].latents.shape and traj.image_embeds.shape == source[1].embeds.shape


@pytest.mark.parametrize("g", [1.0, 5.0])
@pytest.mark.parametrize("options", [ReferenceOptions(), ReferenceOptions(weight=1.0, rows="conditional")])
def test_guided_reconstruction_equals_plain_sampling(model64, source, runs, g, options):
    """The reference pass carries the source's first-frame conditioning: its keys duplicate the
    sample's own (fact 5), so reconstruction stays exact."""
    traj, back = runs[g]
    out = pipeline.guided_sample(pipeline.with_reference(model64, traj, options), source[2][0], Guidance(g))
    assert rel(out, back) < 1e-6


def test_the_source_first_frame_conditions_every_reference_pass(model64, source, runs, monkeypatch):
    """Without the first-frame conditioning in the reference pass its keys are no longer duplicates."""
    traj, back = runs[1.0]
    fam = families.of(model64)
    monkeypatch.setattr(type(fam), "latent_extras", lambda self, t: (None, 0))
    ref = fam.reference_call(model64, traj, traj.check_grid(model64.scheduler_config), source[2][0], Guidance(1.0),
                             ReferenceOptions(), False, None)
    with pytest.raises(RuntimeError):  # the I2V transformer cannot even run without its condition channels
        ref(traj.latent_for_step(0), 0)


def test_an_edited_first_frame_changes_the_sample(model64, source, runs):
    traj, back = runs[1.0]
    fam = families.of(model64)
    same = fam.first_frame_latents(model64, traj.latents[0], as_image(frames_u8())[:1])
    assert rel(same.latents, source[1].latents) < 1e-12 and rel(same.embeds, source[1].embeds) < 1e-12
    other = fam.first_frame_latents(model64, traj.latents[0], as_image(frames_u8(7, 1)))
    patched = pipeline.with_reference(model64, traj)
    out = pipeline.guided_sample(patched, source[2][0], Guidance(1.0), image_latents=other)
    assert rel(out, back) > 1e-3
    assert rel(pipeline.guided_sample(patched, source[2][0], Guidance(1.0), image_latents=same), back) < 1e-6


@pytest.mark.parametrize("g", [1.0, 5.0])
def test_node_default_chain_gives_the_source_back_with_its_prompt_and_frame(model64, source, runs, g):
    """Wan image-to-video's measured chain (session 23's rule K: reference weight 4, the difference mask at 0.6 x
    Otsu's level, fresh noise inside it) with the source prompt and first frame: the mask is empty, so the source
    comes back as plain sampling gives it; with an edited first frame (the source prompt) the frame alone makes the
    mask and the sample moves."""
    from vidinv import editmask
    traj, back = runs[g]
    recipe = families.of(model64).edit_recipe(model64)
    assert (recipe.weight, recipe.mask_level, recipe.guide) == (4.0, 0.6, "trajectory")
    patched = pipeline.with_reference(model64, traj, ReferenceOptions(weight=recipe.weight, end=recipe.end), "auto")

    def chain(image=None):
        m = editmask.EditMask(0.9, source="difference", cut="otsu", level=recipe.mask_level)
        out = pipeline.guided_sample(patched, source[2][0], Guidance(g), start="fresh in mask", seed=3, edit_mask=m,
                                     image_latents=image)
        return out, m.latent
    out, mask = chain()
    assert not mask.any() and rel(out, back) < 1e-6
    other = families.of(model64).first_frame_latents(model64, traj.latents[0], as_image(frames_u8(7, 1)))
    out, mask = chain(other)
    assert mask.any() and rel(out, back) > 1e-3


def test_trajectory_with_image_conditioning_saves_and_loads(tmp_path, model64, source, runs):
    traj, back = runs[5.0]
    path = traj.save(tmp_path / "i2v.safetensors")
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["vidinv"])["version"] == 4
        assert {"image_latents", "image_embeds"} <= set(f.keys())
    loaded = trajectory.load(path)
    assert torch.equal(loaded.image_embeds, traj.image_embeds)
    out = pipeline.guided_sample(pipeline.with_reference(model64, loaded), source[2][0], Guidance(5.0))
    assert rel(out, back) < 1e-6
    with pytest.raises(errors.InputError, match="image_embeds"):
        trajectory.validate(dataclasses.replace(loaded, image_embeds=loaded.image_embeds[0]))
    with pytest.raises(errors.InputError, match="image_embeds .* without image_latents"):
        trajectory.validate(dataclasses.replace(loaded, image_latents=None))
    with pytest.raises(errors.InputError, match="first-frame conditioning"):
        dataclasses.replace(loaded, image_latents=None, image_embeds=None).check_model(model64)


def test_missing_or_foreign_image_conditioning_is_refused_before_any_model_call(model64, source):
    x0, image, conds = source
    calls = []
    handle = model64.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(errors.InputError, match="image-to-video model: the latent needs"):
            pipeline.invert(model64, conds[0], x0, 4)
        with pytest.raises(errors.InputError, match="does not fit the latent"):
            pipeline.invert(model64, conds[0], x0, 4, image_latents=wan.ImageCondition(image.latents[:, :2],
                                                                                       image.embeds))
        with pytest.raises(errors.InputError, match="CLIP image tokens"):
            pipeline.invert(model64, conds[0], x0, 4, image_latents=wan.ImageCondition(image.latents, None))
    finally:
        handle.remove()
    assert not calls


def test_text_to_video_refuses_image_conditioning(tmp_path, source):
    t2v = wan.load(write_tiny_wan(tmp_path / "t2v"))
    with pytest.raises(errors.InputError, match="does not take"):
        pipeline.invert(t2v, wan.encode_text(t2v, "x"), source[0].float(), 4, image_latents=source[1])


def test_folders_it_cannot_use_are_refused_with_a_reason(folder, tmp_path):
    flf = tmp_path / "flf2v"
    shutil.copytree(folder, flf)
    cfg = json.loads((flf / "transformer" / "config.json").read_text())
    (flf / "transformer" / "config.json").write_text(json.dumps(dict(cfg, pos_embed_seq_len=34)))
    with pytest.raises(errors.InputError, match="first-last-frame"):
        wan.load(flf)
    part = tmp_path / "no-clip"
    shutil.copytree(folder, part)
    shutil.rmtree(part / "image_encoder")
    with pytest.raises(errors.InputError, match="without image_encoder"):
        wan.load(part)
