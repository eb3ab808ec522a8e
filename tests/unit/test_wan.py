"""Wan 2.x as the third family, on a tiny random Wan folder (tests/tiny_wan.py) in float64: the flow
Euler grid against diffusers' scheduler and pipeline, exact inversion at guidance 1 and 5, guided
reconstruction with reference attention (duplicate-key invariance, DESIGN fact 5, with Wan's 3-D
RoPE), the reference pass cut after the last injected block, processors restored on errors,
trajectories of version 4, and the folders and inputs it refuses."""
import dataclasses
import json
import shutil

import pytest
import torch

from tests.tiny_wan import SCHEDULER, write_tiny_wan
from vidinv import attention, errors, families, flow, pipeline, solver, trajectory
from vidinv.attention import ReferenceOptions
from vidinv.family import Guidance
from vidinv.models import wan, wan_attention
from vidinv.solver import Solver

pytestmark = pytest.mark.usefixtures("one_thread")
FRAMES, HW = 3, 8  # latent frames and size: 5 frames of 16x16 pixels


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_wan(tmp_path_factory.mktemp("wan") / "tiny-wan")


@pytest.fixture(scope="module")
def model64(folder):
    model = wan.load(folder, "fp32")
    for m in (model.transformer, model.vae, model.text_encoder):
        m.double()
    return dataclasses.replace(model, dtype=torch.float64)


@pytest.fixture(scope="module")
def conds(model64):
    return wan.encode_text(model64, "a red circle moving right"), wan.encode_text(model64, "a blue circle moving right")


def latent(seed=3):
    return torch.randn(1, FRAMES, 12, HW, HW, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def runs(model64, conds):
    """x0 inverted at guidance 1 and 5 (12 steps), each sampled back. The random model is stiff at the
    clean end (its last step spans sigma 0.3 -> 0): 20 refinements per step on average."""
    x0, out = latent(), {}
    for g in (1.0, 5.0):
        traj = pipeline.invert(model64, conds[0], x0, 12, Guidance(g), Solver(iters=20, tol=1e-10))
        out[g] = (traj, pipeline.sample(model64, conds[0], traj.noise, 12, Guidance(g)))
    return x0, out


# ----------------------------------------------------------------------------- the grid

def test_grid_is_diffusers_flow_match_euler():
    from diffusers import FlowMatchEulerDiscreteScheduler
    sched = FlowMatchEulerDiscreteScheduler(**SCHEDULER)
    sched.set_timesteps(20)
    grid = flow.sampler_grid(SCHEDULER, 20)
    assert grid.kind == "flow" and grid.steps == 20 and grid.sigmas[0] == 1.0 and grid.sigmas[-1] == 0.0
    assert list(grid.sigmas) == [float(s) for s in sched.sigmas]
    assert list(grid.timesteps) == [float(t) for t in sched.timesteps]
    # UniPC's flow_shift (the Wan 2.1 folders' config) is the same setting
    assert flow.sampler_grid({"flow_shift": 5.0, "use_flow_sigmas": True, "prediction_type": "flow_prediction"},
                             20).sigmas == grid.sigmas
    # the solver's step is the scheduler's step
    x, v = torch.randn(2, 3), torch.randn(2, 3)
    for i in (0, 7, 19):
        one = FlowMatchEulerDiscreteScheduler(**SCHEDULER)
        one.set_timesteps(20)
        one.set_begin_index(i)
        want = one.step(v, one.timesteps[i], x, return_dict=False)[0]
        assert torch.allclose(solver.step(x, v, grid.points[i].a, grid.points[i].b), want, atol=1e-6)


def test_flow_schedulers_that_cannot_be_inverted_are_refused():
    with pytest.raises(errors.InputError, match="not a flow-matching"):
        flow.sampler_grid({"prediction_type": "epsilon"}, 10)
    with pytest.raises(errors.InputError, match="dynamically"):
        flow.sampler_grid({"use_dynamic_shifting": True}, 10)
    with pytest.raises(errors.InputError, match="shift"):
        flow.sampler_grid({"shift": -1.0}, 10)
    with pytest.raises(errors.InputError, match="between 1 and 1000"):
        flow.sampler_grid(SCHEDULER, 0)


def test_sampling_matches_wan_pipeline(folder):
    """The pack's Euler sampler and WanPipeline (FlowMatchEuler scheduler, CFG 4) give the same latent
    from the same noise: same text embeddings, same model times, same steps."""
    from diffusers import WanPipeline
    pipe = WanPipeline.from_pretrained(folder)
    model = wan.load(folder, "fp32")
    cond = wan.encode_text(model, "a red circle moving right", "a square")
    emb, neg = pipe.encode_prompt("a red circle moving right", "a square", max_sequence_length=wan.TEXT_LEN)
    assert torch.allclose(cond.embeds, emb.float(), atol=1e-6) and torch.allclose(cond.negative_embeds, neg, atol=1e-6)
    noise = torch.randn(1, 12, FRAMES, HW, HW, generator=torch.Generator().manual_seed(0))
    want = pipe(prompt_embeds=emb, negative_prompt_embeds=neg, latents=noise, num_frames=5, height=16, width=16,
                num_inference_steps=8, guidance_scale=4.0, output_type="latent").frames
    got = pipeline.sample(model, cond, noise.permute(0, 2, 1, 3, 4), 8, Guidance(4.0))
    assert rel(got, want.permute(0, 2, 1, 3, 4)) < 1e-5


# ----------------------------------------------------------------------------- exact inversion

@pytest.mark.parametrize("g, bound", [(1.0, 1e-6), (5.0, 1e-5)])
def test_round_trip_is_exact(runs, g, bound):
    x0, out = runs
    traj, back = out[g]
    assert rel(back, x0) < bound
    assert sum(traj.calls) <= traj.steps * 21  # the pooled budget: steps x (1 + iterations)
    assert traj.family == "wan" and traj.sigmas[0] == 1.0 and traj.sigmas[-1] == 0.0


def test_naive_inverse_is_not_exact(model64, conds):
    """Without fixed-point refinements (the naive inverse Euler step) the round trip drifts: the
    solver is what makes it exact."""
    x0 = latent()
    traj = pipeline.invert(model64, conds[0], x0, 12, Guidance(1.0), Solver(iters=0, tol=0.0))
    assert rel(pipeline.sample(model64, conds[0], traj.noise, 12), x0) > 1e-4


# ----------------------------------------------------------------------------- reference attention

@pytest.mark.parametrize("g", [1.0, 5.0])
@pytest.mark.parametrize("options", [ReferenceOptions(), ReferenceOptions(weight=1.0, rows="conditional"),
                                     ReferenceOptions(blocks="1", weight=9.0, start=0.2, end=0.8)])
def test_guided_reconstruction_equals_plain_sampling(model64, conds, runs, g, options):
    traj, back = runs[1][g]
    out = pipeline.guided_sample(pipeline.with_reference(model64, traj, options), conds[0], Guidance(g))
    assert rel(out, back) < 1e-6  # the reference latents are stored in fp32: duplicates to 1e-7


def test_reference_rotated_in_the_wrong_place_breaks_reconstruction(model64, conds, runs, monkeypatch):
    """Fact 5 catches a wrong RoPE placement: reference keys left unrotated are no longer duplicates."""
    traj, back = runs[1][1.0]
    monkeypatch.setattr(wan_attention, "rotate_reference", lambda k, table: k)
    out = pipeline.guided_sample(pipeline.with_reference(model64, traj, ReferenceOptions()), conds[0], Guidance(1.0))
    assert rel(out, back) > 1e-4


def test_edit_differs_and_processors_come_back(model64, conds, runs):
    traj, back = runs[1][5.0]
    before = dict(model64.transformer.attn_processors)
    edit = pipeline.guided_sample(pipeline.with_reference(model64, traj), conds[1], Guidance(5.0))
    assert rel(edit, back) > 1e-3 and model64.transformer.attn_processors == before


@pytest.mark.parametrize("g", [1.0, 5.0])
def test_node_default_chain_gives_the_source_back_with_its_prompt(model64, conds, runs, g):
    """Wan text-to-video's measured chain (`EditRecipe`: reference weight 4, the difference mask cut at 0.6 x Otsu's
    level, fresh noise inside it) with the source prompt: the mask is empty, so the start is the inverted noise and
    every step the trajectory's; the source comes back as plain sampling gives it."""
    from vidinv import editmask
    traj, back = runs[1][g]
    recipe = wan.FAMILY.edit_recipe(model64)
    assert (recipe.weight, recipe.mask_level, recipe.guide) == (4.0, 0.6, "trajectory")
    patched = pipeline.with_reference(model64, traj, ReferenceOptions(weight=recipe.weight, end=recipe.end), "auto")
    m = editmask.EditMask(0.9, source="difference", cut="otsu", level=recipe.mask_level)
    out = pipeline.guided_sample(patched, conds[0], Guidance(g), start="fresh in mask", seed=3, edit_mask=m)
    assert not m.latent.any() and rel(out, back) < 1e-6


@pytest.mark.parametrize("g,source", [(1.0, "attention"), (5.0, "attention"), (5.0, "difference")])
def test_edit_mask_from_cross_attention_or_prediction_difference(model64, conds, runs, g, source):
    """The attention mask probes Wan's cross-attention (image queries vs the changed text tokens), the
    difference mask its predictions under the two prompts: with the source prompt the mask is empty
    and the sample the trajectory's; with an edit, part of the video follows the edit and the rest
    lands on x0; the model's own cross-attention processors stay."""
    from vidinv import editmask
    x0, out = runs
    traj, back = out[g]
    patched = pipeline.with_reference(model64, traj)
    before = dict(model64.transformer.attn_processors)
    m = editmask.EditMask(0.3, source=source)
    assert rel(pipeline.guided_sample(patched, conds[0], Guidance(g), edit_mask=m), back) < 1e-6
    assert not m.latent.any()
    m = editmask.EditMask(0.7, source=source)
    masked = pipeline.guided_sample(patched, conds[1], Guidance(g), edit_mask=m)
    assert m.latent.shape == (1, FRAMES, 1, HW, HW) and 0 < float(m.latent.mean()) < 1
    outside = (1 - m.latent).bool().expand_as(masked)
    assert torch.allclose(masked[outside], x0[outside], atol=1e-6)
    assert rel(masked, pipeline.guided_sample(patched, conds[1], Guidance(g))) > 1e-4
    assert model64.transformer.attn_processors == before


def test_fresh_noise_in_the_mask_keeps_the_source_and_the_outside(model64, conds, runs):
    """start 'fresh in mask' (Guided Sample's default): with the source prompt the difference mask is empty and
    the sample is the trajectory's; with an edit, fresh noise starts the masked region (the sample differs from
    the inverted start's) and outside the mask every step still lands on the trajectory."""
    from vidinv import editmask
    x0, out = runs
    traj, back = out[5.0]
    patched = pipeline.with_reference(model64, traj, ReferenceOptions(weight=2.0, end=0.4))
    m = editmask.EditMask(source="difference", cut="otsu")
    same = pipeline.guided_sample(patched, conds[0], Guidance(5.0), start="fresh in mask", edit_mask=m)
    assert rel(same, back) < 1e-6
    assert pipeline.start_used("fresh in mask", traj, 0.0, m) == "fresh in mask" and not m.latent.any()
    m = editmask.EditMask(source="difference", cut="otsu")
    fresh = pipeline.guided_sample(patched, conds[1], Guidance(5.0), start="fresh in mask", edit_mask=m)
    assert 0 < float(m.latent.mean()) < 1
    outside = (1 - m.latent).bool().expand_as(fresh)
    assert torch.allclose(fresh[outside], x0[outside], atol=1e-6)
    inverted = pipeline.guided_sample(patched, conds[1], Guidance(5.0), edit_mask=editmask.EditMask(
        source="difference", cut="otsu"))
    assert rel(fresh, inverted) > 1e-4
    grown = editmask.EditMask(source="difference", cut="otsu", grow=1)
    wider = pipeline.guided_sample(patched, conds[1], Guidance(5.0), start="fresh in mask", edit_mask=grown)
    assert torch.equal(grown.latent, editmask.grow(m.latent, 1)) and grown.latent.sum() > m.latent.sum()
    outside = (1 - grown.latent).bool().expand_as(wider)
    assert torch.allclose(wider[outside], x0[outside], atol=1e-6)
    m = editmask.EditMask(source="difference", cut="otsu", grow=3)  # grown, the source prompt's mask stays empty
    assert rel(pipeline.guided_sample(patched, conds[0], Guidance(5.0), start="fresh in mask", edit_mask=m),
               back) < 1e-6 and not m.latent.any()


def test_processors_restored_after_an_error(model64, conds, runs):
    traj = runs[1][1.0][0]
    before = dict(model64.transformer.attn_processors)

    class Boom(Exception):
        pass

    class Hooks:
        def before_call(self):
            pass

        def after_step(self, i, total, info):
            raise Boom

    with pytest.raises(Boom):
        pipeline.guided_sample(pipeline.with_reference(model64, traj), conds[0], Guidance(1.0), hooks=Hooks())
    assert model64.transformer.attn_processors == before


def test_reference_pass_stops_after_the_last_injected_block(model64, conds, runs):
    traj = runs[1][1.0][0]
    calls = []
    handles = [b.register_forward_pre_hook(lambda m, a, i=i: calls.append(i))
               for i, b in enumerate(model64.transformer.blocks)]
    try:
        pipeline.guided_sample(pipeline.with_reference(model64, traj, ReferenceOptions(blocks="0", start=0.9)),
                               conds[0], Guidance(1.0))
    finally:
        for h in handles:
            h.remove()
    # one active step: a reference pass through block 0 only, then the sample's call through all 3
    assert calls.count(0) == traj.steps + 1 and calls.count(1) == calls.count(2) == traj.steps


def test_duplicate_keys_leave_wan_self_attention_unchanged(model64):
    """The processor alone: injecting a recording of the same hidden states (any weight) gives the
    plain output (fact 5), with the model's RoPE table."""
    tr = model64.transformer
    attn = tr.blocks[1].attn1
    x = torch.randn(2, FRAMES * (HW // 2) ** 2, attn.inner_dim, dtype=torch.float64)
    rope = tr.rope(torch.zeros(2, 12, FRAMES, HW, HW, dtype=torch.float64))
    plain = attn.processor(attn, x, None, None, rope)
    channel = attention.Channel()
    proc = wan_attention.ReferenceSelfAttnProcessor(1, channel)
    for weight in (0.5, 1.0, 7.0):
        with attention.guided(channel, {1}, lambda: proc(attn, x, None, None, rope), torch.tensor([True, True]),
                              weight):
            assert torch.allclose(proc(attn, x, None, None, rope), plain, atol=1e-12)


def test_reference_options_wan_does_not_have(model64, runs):
    traj = runs[1][1.0][0]
    with pytest.raises(errors.InputError, match="temporal"):
        pipeline.with_reference(model64, traj, ReferenceOptions(temporal=True))
    with pytest.raises(errors.InputError, match="cross-attention"):
        pipeline.with_reference(model64, traj, ReferenceOptions(text=True))
    with pytest.raises(errors.InputError):
        pipeline.with_reference(model64, traj, ReferenceOptions(blocks="5"))


# ----------------------------------------------------------------------------- trajectories

def test_trajectory_saves_as_version_4_and_loads(tmp_path, runs, model64, conds):
    traj, back = runs[1][5.0]
    path = traj.save(tmp_path / "wan.safetensors")
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["vidinv"])["version"] == 4
    loaded = trajectory.load(path)
    assert loaded.family == "wan" and loaded.sigmas == traj.sigmas and loaded.timesteps == traj.timesteps
    loaded.check_model(model64)
    grid = loaded.check_grid(model64.scheduler_config)
    assert grid.kind == "flow" and grid.sigmas == tuple(traj.sigmas)
    out = pipeline.guided_sample(pipeline.with_reference(model64, loaded), conds[0], Guidance(5.0))
    assert rel(out, back) < 1e-6  # latents stored as fp32
    assert trajectory.VERSION >= 4


def test_trajectory_of_another_shift_or_family_is_refused(runs, model64):
    traj = runs[1][1.0][0]
    with pytest.raises(errors.InputError, match="does not match the model's"):
        traj.check_grid(dict(model64.scheduler_config, shift=3.0))
    other = dataclasses.replace(model64, family="cogvideox")
    with pytest.raises(errors.InputError, match="Wan trajectory"):
        traj.check_model(other)
    bad = dataclasses.replace(traj, sigmas=traj.sigmas[:-1])
    with pytest.raises(errors.InputError, match="sigmas"):
        trajectory.validate(bad)


# ----------------------------------------------------------------------------- inputs and folders

def test_bad_inputs_are_refused_before_any_model_call(model64, conds):
    x0 = latent()
    with pytest.raises(errors.InputError, match="channels"):
        pipeline.invert(model64, conds[0], x0[:, :, :8], 4)
    with pytest.raises(errors.InputError, match="patches"):
        pipeline.invert(model64, conds[0], x0[..., :7], 4)
    with pytest.raises(errors.InputError, match="dynamic_cfg"):
        pipeline.invert(model64, conds[0], x0, 4, Guidance(2.0, dynamic=True))
    with pytest.raises(errors.InputError, match="frame-wise"):
        pipeline.invert(model64, conds[0], x0, 4, Guidance(2.0, first=1.0))
    with pytest.raises(errors.InputError, match=">= 1"):
        pipeline.invert(model64, conds[0], x0, 4, Guidance(0.5))
    with pytest.raises(errors.InputError, match="another model"):
        pipeline.invert(model64, dataclasses.replace(conds[0], model_fingerprint="x"), x0, 4)
    with pytest.raises(errors.InputError, match="works on Wan models only"):
        families.require(dataclasses.replace(model64, family="svd"), "wan", "Flow Invert (Wan)", "fix")


def copy_folder(folder, tmp_path, name):
    dst = tmp_path / name
    shutil.copytree(folder, dst)
    return dst


def test_folders_it_cannot_invert_are_refused_with_a_reason(folder, tmp_path):
    two = copy_folder(folder, tmp_path, "two-expert")
    shutil.copytree(two / "transformer", two / "transformer_2")
    with pytest.raises(errors.InputError, match="two Wan experts but its boundary_ratio is"):
        wan.load(two)
    i2v = copy_folder(folder, tmp_path, "i2v")  # CLIP tokens, but no image encoder in the folder
    cfg = json.loads((i2v / "transformer" / "config.json").read_text())
    (i2v / "transformer" / "config.json").write_text(json.dumps(dict(cfg, image_dim=1280, added_kv_proj_dim=24)))
    with pytest.raises(errors.InputError, match="image-to-video folder .* without image_encoder"):
        wan.load(i2v)
    odd = copy_folder(folder, tmp_path, "odd-channels")
    (odd / "transformer" / "config.json").write_text(json.dumps(dict(cfg, in_channels=13)))
    with pytest.raises(errors.InputError, match="fit neither text-to-video"):
        wan.load(odd)
    part = copy_folder(folder, tmp_path, "part")
    shutil.rmtree(part / "text_encoder")
    with pytest.raises(errors.InputError, match="missing text_encoder"):
        wan.load(part)
    eps = copy_folder(folder, tmp_path, "eps")
    (eps / "scheduler" / "scheduler_config.json").write_text(json.dumps({"prediction_type": "epsilon"}))
    with pytest.raises(errors.InputError, match="not a flow-matching"):
        wan.load(eps)
    assert wan.find_model_folders([folder.parent]) == {folder.name: folder}


def test_counted_flops_of_guided_sampling_order_as_for_cogvideox():
    """Counted FLOPs (meta device, a Wan-2.1-1.3B-shaped toy): narrower windows or block ranges cost
    less than injection everywhere, which costs more than plain sampling and less than the
    published per-CFG-row reference."""
    from tests import fullsize_models
    model = fullsize_models.build("wan-1.3b", "meta", torch.float32, smoke=True)
    edit, traj = fullsize_models.inputs(model, 9, 64, 64, 10)
    f = fullsize_models.step_flops(model, edit, traj, 5.0)
    everywhere = f["guided (defaults: every block and step)"]
    assert f["plain"] < f["guided, first half of the steps"] < f["guided, steps from 30 %"] < everywhere
    assert f["plain"] < f["guided, blocks of the first half"] < everywhere
    assert everywhere < f["published recipe (reference per CFG row)"]


@pytest.mark.parametrize("g, options, mask", [
    (1.0, ReferenceOptions(), None), (5.0, ReferenceOptions(weight=1.0, rows="conditional", blocks="0,2"), None),
    (5.0, ReferenceOptions(start=0.2), "attention")])
def test_lockstep_equals_the_two_pass_method(model64, conds, runs, monkeypatch, g, options, mask):
    """Issue 34: the reference call beside the sample call (one layer's K/V at a time) gives the
    outputs of the whole reference pass before it (float64; an edit, a reference row per CFG row
    under CFG, the cross-attention probe on)."""
    from tests import twopass
    from vidinv import editmask
    traj = runs[1][g][0]
    patched = pipeline.with_reference(model64, traj, options)

    def run():
        m = None if mask is None else editmask.EditMask(0.5, source=mask)
        return pipeline.guided_sample(patched, conds[1], Guidance(g), edit_mask=m)

    new = run()
    with twopass.HeldKV() as held, monkeypatch.context() as m:
        m.setattr(attention, "guided", twopass.guided)
        old = run()
    assert rel(new, old) <= 1e-12, rel(new, old)
    assert rel(new, pipeline.sample(model64, conds[1], traj.noise, traj.steps, Guidance(g))) > 1e-6
    layers = len(options.block_indices(len(model64.transformer.blocks)))
    assert max(held.alive) == layers  # the old schedule held every layer's K/V
    with twopass.HeldKV() as held:
        run()
    assert held.alive and max(held.alive) == 1
