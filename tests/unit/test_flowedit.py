"""FlowEdit (`vidinv.flowedit`, `pipeline.flow_edit`, the FlowEdit (Wan) node): steps computed by
hand from the paper's rule (Kulikov et al., ICCV 2025, Algorithm 1 and its n_min tail) on linear
velocities and on a tiny random Wan (one and two experts, the network called directly), seed
determinism, the identity with the source prompt on both sides, and the refusals before any model
call."""
import dataclasses

import pytest
import torch

from tests.conftest import load_pack
from tests.tiny_wan import to64, write_tiny_wan
from vidinv import errors, flow, flowedit, pipeline
from vidinv.family import Guidance
from vidinv.hooks import Hooks
from vidinv.models import wan

pytestmark = pytest.mark.usefixtures("one_thread")
FRAMES, HW, STEPS = 2, 4, 4  # latent frames and size of the test latents (3 frames of 8x8 pixels)


class Counting(Hooks):
    def __init__(self):
        self.calls, self.steps = 0, []

    def before_call(self):
        self.calls += 1

    def after_step(self, i, total, info):
        self.steps.append((i, total))


def noises(seed, count, shape):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float32) for _ in range(count)]


# ----------------------------------------------------------------------------- the pure function

GRID = flow.steps_grid(*flow.sigmas_from_config({"shift": 3.0}, 6))
A = torch.tensor(0.7)


def linear(bias):
    return lambda x, j: A * x + bias * (1.0 + j)


def test_linear_velocities_follow_the_paper_step_by_step():
    """n_max 4, n_min 1, n_avg 3 on a 6-step grid: the paper's steps 4, 3, 2 (the pack's 2, 3, 4) each
    average three fresh-noise velocity differences, then one plain target step from fresh noise."""
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(5))
    v_src, v_tar = linear(torch.tensor(0.3)), linear(torch.tensor(-0.5))
    out = flowedit.sample(v_src, v_tar, x, GRID, n_max=4, n_min=1, n_avg=3, generator=torch.Generator().manual_seed(9))
    s = GRID.sigmas
    draws = iter(noises(9, 3 * 3 + 1, x.shape))
    z = x.clone()
    for j in (2, 3, 4):
        deltas = []
        for _ in range(3):
            z_src = (1 - s[j]) * x + s[j] * next(draws)
            z_tar = z + z_src - x
            deltas.append(v_tar(z_tar, j) - v_src(z_src, j))
        z = z + (s[j + 1] - s[j]) * sum(deltas) / 3
    xt = z + (1 - s[5]) * x + s[5] * next(draws) - x
    want = xt + (s[6] - s[5]) * v_tar(xt, 5)
    assert s[6] == 0.0
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)


def test_window_is_counted_as_the_paper_counts():
    assert flowedit.window(50, 0, 33) == (17, 50)  # the paper's SD3 setting: the last 33 of 50 steps
    assert flowedit.window(50, 10, 50) == (0, 40)
    calls = []
    flowedit.sample(lambda x, j: calls.append(("src", j)) or x, lambda x, j: calls.append(("tar", j)) or x,
                    torch.zeros(1, 2), GRID, n_max=3, n_min=1, generator=torch.Generator().manual_seed(0))
    assert calls == [("tar", 3), ("src", 3), ("tar", 4), ("src", 4), ("tar", 5)]


@pytest.mark.parametrize("n_min,n_max,n_avg,what", [(0, 7, 1, "n_max 7 is more than the 6 steps"),
                                                    (3, 3, 1, "n_min 3 must be below n_max 3"),
                                                    (-1, 3, 1, "n_min -1 is not a whole number"),
                                                    (0, 3, 0, "n_avg 0 is not a whole number >= 1"),
                                                    (0, 2.5, 1, "n_max 2.5 is not a whole number")])
def test_bad_windows_are_refused_before_any_call(n_min, n_max, n_avg, what):
    def never(x, j):
        raise AssertionError("called")
    with pytest.raises(errors.InputError, match=what):
        flowedit.sample(never, never, torch.zeros(1, 2), GRID, n_max, n_min, n_avg)


def test_a_grid_that_is_not_a_flow_grid_is_refused():
    with pytest.raises(errors.InputError, match="flow-matching"):
        flowedit.sample(linear(0), linear(0), torch.zeros(1, 2), dataclasses.replace(GRID, kind="ddim"), 3)


# ----------------------------------------------------------------------------- a tiny Wan

@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("flowedit")
    return write_tiny_wan(root / "one"), write_tiny_wan(root / "two", seed=1, boundary_ratio=0.5)


@pytest.fixture(scope="module")
def models(folders):
    return tuple(to64(wan.load(f, "fp32")) for f in folders)


def prompts(model):
    return wan.encode_text(model, "a red circle moving right"), wan.encode_text(model, "a blue circle moving right")


def latent(seed=3):
    return torch.randn(1, FRAMES, 12, HW, HW, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def velocity(model, cond, g, x, t):
    """Wan's guided velocity by hand at model time `t`: the expert of that time (the low-noise one
    below the boundary), the negative and positive rows, ``u + g (c - u)``."""
    net = model.experts[0 if model.boundary is None or t >= model.boundary else 1]

    def call(text):
        out = net(hidden_states=x.permute(0, 2, 1, 3, 4), timestep=torch.tensor([t]), encoder_hidden_states=text,
                  return_dict=False)[0]
        return out.permute(0, 2, 1, 3, 4)
    c = call(cond.embeds.double())
    if g == 1.0:
        return c
    u = call(cond.negative_embeds.double())
    return u + g * (c - u)


@pytest.mark.parametrize("experts", [1, 2])
def test_tiny_wan_steps_by_hand(models, experts):
    """Steps 4 of 4 (n_max = steps: from pure noise), n_min 1, guidance 2 (source) and 4 (target):
    three FlowEdit steps and one tail step recomputed with the network called by hand. With two
    experts (boundary 0.5) the steps above model time 500 use the high-noise expert."""
    model = models[experts - 1]
    src, tar = prompts(model)
    x = latent()
    hooks = Counting()
    out = pipeline.flow_edit(model, src, tar, x, STEPS, n_max=4, n_min=1, n_avg=1, source_guidance=Guidance(2.0),
                             target_guidance=Guidance(4.0), seed=11, hooks=hooks)
    s, times = flow.sigmas_from_config(model.scheduler_config, STEPS)
    if experts == 2:
        assert {wan.expert_index(t, model.boundary) for t in times} == {0, 1}
    draws = iter(n.double() for n in noises(11, 4, x.shape))
    z = x.clone()
    for j in range(3):
        z_src = (1 - s[j]) * x + s[j] * next(draws)
        z_tar = z + z_src - x
        z = z + (s[j + 1] - s[j]) * (velocity(model, tar, 4.0, z_tar, times[j]) - velocity(model, src, 2.0, z_src, times[j]))
    xt = z + (1 - s[3]) * x + s[3] * next(draws) - x
    want = xt + (0.0 - s[3]) * velocity(model, tar, 4.0, xt, times[3])
    assert float((out - want).abs().max()) < 1e-9 * float(want.abs().max())
    assert hooks.calls == 3 * 2 + 1  # two guided velocity calls per FlowEdit step, one per tail step
    assert hooks.steps == [(0, 4), (1, 4), (2, 4), (3, 4)]
    assert float((out - x).norm() / x.norm()) > 0.01  # the edit moved the latent


def test_seed_decides_the_noise(models):
    model = models[0]
    src, tar = prompts(model)
    x = latent()

    def run(seed):
        return pipeline.flow_edit(model, src, tar, x, STEPS, 3, 1, 1, Guidance(1.0), Guidance(3.0), seed)
    a, b, c = run(4), run(4), run(5)
    assert torch.equal(a, b)
    assert float((a - c).norm() / a.norm()) > 1e-3


@pytest.mark.inference_mode
def test_source_prompt_on_both_sides_keeps_the_source_exactly(models):
    """With the same prompt and guidance on both sides the two velocities are equal, V_delta = 0, and
    without a tail (n_min 0) FlowEdit returns the source latent itself, for every seed; a tail
    re-draws the last steps from fresh noise and only approximately."""
    model = models[1]
    src, _ = prompts(model)
    x = latent()
    for seed in (0, 1):
        out = pipeline.flow_edit(model, src, src, x, STEPS, 4, 0, 2, Guidance(3.0), Guidance(3.0), seed)
        assert torch.equal(out, x)
    tail = pipeline.flow_edit(model, src, src, x, STEPS, 4, 1, 1, Guidance(3.0), Guidance(3.0), 0)
    assert not torch.equal(tail, x)


def test_refusals_come_before_any_model_call(models, folders, tmp_path):
    model = models[0]
    src, tar = prompts(model)
    x = latent()
    other = wan.load(folders[1], "fp32")
    cases = [(dict(n_max=5), "n_max 5 is more than the 4 steps"),
             (dict(n_min=2, n_max=2), "n_min 2 must be below n_max 2"),
             (dict(n_avg=0), "n_avg 0"),
             (dict(latent=torch.zeros(1, FRAMES, 7, HW, HW)), "channels"),
             (dict(target=wan.encode_text(other, "a blue circle")), "another model"),
             (dict(target_guidance=Guidance(0.5)), "guidance 0.5"),
             (dict(model=dataclasses.replace(model, family="cogvideox")), "FlowEdit needs a flow-matching model")]
    for change, what in cases:
        hooks = Counting()
        kwargs = dict(model=model, source=src, target=tar, latent=x, steps=STEPS, n_max=3, n_min=0, n_avg=1,
                      source_guidance=Guidance(1.0), target_guidance=Guidance(2.0), seed=0, hooks=hooks) | change
        with pytest.raises(errors.InputError, match=what):
            pipeline.flow_edit(**kwargs)
        assert hooks.calls == 0, what


# ----------------------------------------------------------------------------- the node

@pytest.fixture(scope="module")
def pack():
    return load_pack()


@pytest.mark.inference_mode
def test_node_runs_the_pipeline_and_refuses_bad_latents(pack, folders):
    """The node as ComfyUI imports it (the pack's own module tree): its output is `pipeline.flow_edit`'s,
    and another model's latent, inverted noise and a window past the steps are refused."""
    node = pack.NODE_CLASS_MAPPINGS["VInvFlowEdit"]()
    common, pwan, perrors = pack.nodes.common, pack.vidinv.models.wan, pack.vidinv.errors
    model = pwan.load(folders[0], "fp32")
    src, tar = (pwan.encode_text(model, p) for p in ("a red circle moving right", "a blue circle moving right"))
    x = latent().float()
    value = common.latent_value(x, model)
    out, frames = node.edit(model, src, tar, value, STEPS, 3, 0, 1, 1.0, 3.0, 7)
    want = pack.vidinv.pipeline.flow_edit(model, src, tar, x, STEPS, 3, 0, 1, pack.vidinv.family.Guidance(1.0),
                                          pack.vidinv.family.Guidance(3.0), 7)
    assert torch.equal(out["samples"], want)
    pixels = (FRAMES - 1) * model.temporal_factor + 1, HW * model.spatial_factor, HW * model.spatial_factor
    assert frames.shape == (pixels[0], *pixels[1:], 3) and bool((frames == 1).all())
    masked, mask_frames = node.edit(model, src, tar, value, STEPS, 3, 0, 1, 1.0, 3.0, 7, 0.5, "otsu")
    assert 0 < float(mask_frames.mean()) < 1 and not torch.equal(masked["samples"], out["samples"])
    assert out["vinv"]["model_fingerprint"] == model.fingerprint
    other = pwan.load(folders[1], "fp32")
    with pytest.raises(perrors.InputError, match="made by the model"):
        node.edit(model, src, tar, common.latent_value(x, other), STEPS, 3, 0, 1, 1.0, 3.0, 7)
    with pytest.raises(perrors.InputError, match="inverted noise"):
        node.edit(model, src, tar, common.latent_value(x, model, steps=STEPS), STEPS, 3, 0, 1, 1.0, 3.0, 7)
    with pytest.raises(perrors.InputError, match="n_max 9 is more than the 4 steps"):
        node.edit(model, src, tar, value, STEPS, 9, 0, 1, 1.0, 3.0, 7)
    with pytest.raises(perrors.InputError, match="n_avg 0 is outside"):
        node.edit(model, src, tar, value, STEPS, 3, 0, 0, 1.0, 3.0, 7)


# ----------------------------------------------------------------------------- masks

def test_mask_keeps_the_source_outside_exactly():
    """Linear velocities, 6 steps, with a tail: where the mask is 0 the result is the source bit for
    bit, where it is 1 it is the unmasked edit's (the blend is elementwise, the velocities here too)."""
    x = torch.randn(1, 2, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    v_src, v_tar = linear(torch.tensor(0.3)), linear(torch.tensor(-0.5))
    mask = torch.zeros(1, 2, 1, 4, 4)
    mask[..., :2, :] = 1.0

    def run(m):
        return flowedit.sample(v_src, v_tar, x, GRID, 5, 2, 1, torch.Generator().manual_seed(1), mask=m)
    free, masked = run(None), run(mask)
    inside = mask.expand_as(x).bool()
    assert torch.equal(masked[~inside], x[~inside])
    torch.testing.assert_close(masked[inside], free[inside], rtol=1e-6, atol=1e-6)
    assert float((masked[inside] - x[inside]).abs().max()) > 1e-2
    assert torch.equal(run(torch.ones(1, 2, 1, 4, 4)), free)


def test_difference_mask_on_the_tiny_wan(models):
    """The difference mask: with the source prompt on both sides it is empty and costs no call (the
    source, exactly); with an edit it is made from ten unguided calls before the edit; the
    attention source is refused before any call."""
    from vidinv import editmask
    model = models[0]
    src, tar = prompts(model)
    x = latent()
    hooks, em = Counting(), editmask.EditMask(0.0, source="difference", cut="otsu")
    same = pipeline.flow_edit(model, src, src, x, STEPS, 3, 0, 1, Guidance(2.0), Guidance(2.0), 0, hooks=hooks,
                              edit_mask=em)
    assert torch.equal(same, x) and float(em.latent.sum()) == 0.0 and hooks.calls == 3 * 2
    hooks, em = Counting(), editmask.EditMask(0.0, source="difference", cut="otsu")
    out = pipeline.flow_edit(model, src, tar, x, STEPS, 3, 0, 1, Guidance(2.0), Guidance(4.0), 0, hooks=hooks,
                             edit_mask=em)
    probes = len(editmask.difference_steps(STEPS))
    assert hooks.calls == 3 * 2 + 2 * probes
    keep = ~em.latent.expand_as(x).bool()
    assert 0 < float(em.latent.mean()) < 1 and torch.equal(out[keep], x[keep])
    grown = editmask.EditMask(0.0, source="difference", cut="otsu", grow=1)  # mask_grow: the same map, one cell wider
    out = pipeline.flow_edit(model, src, tar, x, STEPS, 3, 0, 1, Guidance(2.0), Guidance(4.0), 0, edit_mask=grown)
    keep = ~grown.latent.expand_as(x).bool()
    assert torch.equal(grown.latent, editmask.grow(em.latent, 1)) and torch.equal(out[keep], x[keep])
    looser = editmask.EditMask(0.0, source="difference", cut="otsu", level=0.5)  # mask_level: a lower cut, wider
    out = pipeline.flow_edit(model, src, tar, x, STEPS, 3, 0, 1, Guidance(2.0), Guidance(4.0), 0, edit_mask=looser)
    keep = ~looser.latent.expand_as(x).bool()
    assert bool((looser.latent >= em.latent).all()) and torch.equal(out[keep], x[keep])
    hooks = Counting()
    with pytest.raises(errors.InputError, match="attention"):
        pipeline.flow_edit(model, src, tar, x, STEPS, 3, 0, 1, Guidance(2.0), Guidance(4.0), 0, hooks=hooks,
                           edit_mask=editmask.EditMask(0.9, source="attention"))
    assert hooks.calls == 0


# ----------------------------------------------------------------------------- image-to-video

@pytest.mark.parametrize("layout", ["i2v", "ti2v"])
def test_image_conditioned_wan(tmp_path, layout):
    """Wan 2.1 I2V (first frame on channels, CLIP tokens) and Wan 2.2 TI2V (the first frame's latent in
    place): the image conditioning rides with the latent into both velocities; with the source prompt
    on both sides the source comes back exactly; an edit runs, and on TI2V the first latent frame
    (the image's latent) is kept exactly (its velocity is the same under both prompts)."""
    folder = write_tiny_wan(tmp_path / layout, seed=5, **{layout: True})
    model = wan.load(folder, "fp32")
    frames = torch.rand(5, 16, 16, 3, generator=torch.Generator().manual_seed(1))
    z, image, _, _, _ = wan.FAMILY.encode_frames(model, frames, "trim to 4k+1", "resize and crop", 16, 16, "auto")
    src, tar = prompts(model)
    same = pipeline.flow_edit(model, src, src, z, STEPS, 4, 0, 1, Guidance(2.0), Guidance(2.0), 0, image)
    assert torch.equal(same, z)
    out = pipeline.flow_edit(model, src, tar, z, STEPS, 4, 0, 1, Guidance(2.0), Guidance(4.0), 0, image)
    assert torch.isfinite(out).all() and float((out - z).norm() / z.norm()) > 1e-3
    if layout == "ti2v":
        assert torch.equal(out[:, :1], z[:, :1])


@pytest.mark.inference_mode
def test_an_edited_first_frame_steers_the_target_velocity_only(tmp_path, pack):
    """Image-to-video with an edited first frame (`target_image_latents`; the node's first_frame): one FlowEdit step
    by hand (n_max 1: from sigma s to 0, x + (0 - s) (v_tar(z) - v_src(z)) with z the source noised once) has the
    source's frame in the source velocity and the edited frame in the target's; the source's own frame as the target
    frame changes nothing; with the source prompt on both sides the edited frame alone makes the difference mask
    (the prompts' rows alone would give none). The node encodes first_frame as Guided Sample does and refuses it
    on a text-to-video model."""
    from vidinv import editmask
    folder = write_tiny_wan(tmp_path / "i2v", seed=6, i2v=True)
    model = wan.load(folder, "fp32")
    frames = torch.rand(5, 16, 16, 3, generator=torch.Generator().manual_seed(1))
    z, image, _, _, _ = wan.FAMILY.encode_frames(model, frames, "trim to 4k+1", "resize and crop", 16, 16, "auto")
    edited = torch.rand(1, 16, 16, 3, generator=torch.Generator().manual_seed(2))
    other = wan.FAMILY.first_frame_latents(model, z, edited)
    src, tar = prompts(model)
    run = dict(model=model, source=src, target=tar, latent=z, steps=STEPS, n_max=1, n_min=0, n_avg=1,
               source_guidance=Guidance(2.0), target_guidance=Guidance(4.0), seed=3, image_latents=image)
    plain = pipeline.flow_edit(**run)
    assert torch.equal(pipeline.flow_edit(**run, target_image_latents=image), plain)
    out = pipeline.flow_edit(**run, target_image_latents=other)
    grid = wan.FAMILY.grid(model, STEPS)
    j = STEPS - 1
    noised = (1 - grid.sigmas[j]) * z + grid.sigmas[j] * noises(3, 1, z.shape)[0]
    v_src = wan.FAMILY.denoiser(model, src, Guidance(2.0), grid, image)(noised, j)
    v_tar = wan.FAMILY.denoiser(model, tar, Guidance(4.0), grid, other)(noised, j)
    torch.testing.assert_close(out, z + (grid.sigmas[j + 1] - grid.sigmas[j]) * (v_tar - v_src), rtol=1e-5, atol=1e-6)
    assert float((out - plain).norm() / plain.norm()) > 1e-3
    em = editmask.EditMask(0.0, source="difference", cut="otsu")
    pipeline.flow_edit(**(run | dict(target=src, n_max=3)), edit_mask=em, target_image_latents=other)
    assert float(em.latent.sum()) > 0
    node = pack.NODE_CLASS_MAPPINGS["VInvFlowEdit"]()
    pwan = pack.vidinv.models.wan
    pmodel = pwan.load(folder, "fp32")
    psrc, ptar = (pwan.encode_text(pmodel, p) for p in ("a red circle moving right", "a blue circle moving right"))
    pz, pimage, _, _, _ = pwan.FAMILY.encode_frames(pmodel, frames, "trim to 4k+1", "resize and crop", 16, 16, "auto")
    got, _ = node.edit(pmodel, psrc, ptar, pack.nodes.common.latent_value(pz, pmodel, pimage), STEPS, 1, 0, 1, 2.0,
                       4.0, 3, first_frame=edited)
    torch.testing.assert_close(got["samples"], out, rtol=1e-6, atol=1e-7)
    t2v = pwan.load(write_tiny_wan(tmp_path / "t2v", seed=6), "fp32")
    with pytest.raises(pack.vidinv.errors.InputError, match="takes no first frame"):
        node.edit(t2v, psrc, ptar, pack.nodes.common.latent_value(latent().float(), t2v), STEPS, 1, 0, 1, 2.0, 4.0,
                  3, first_frame=edited)
