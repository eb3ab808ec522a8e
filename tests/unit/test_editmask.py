"""Edit masks (`vidinv.editmask`): the changed tokens of a prompt pair, the attention probe and the
mask it makes, Otsu's cut, the prediction-difference map and its probed steps, the given MASK's
resampling, and guided sampling with a mask on a tiny random CogVideoX in float64: reconstruction
stays exact, an all-ones mask changes nothing, an empty one gives the trajectory back, the attention
and the difference masks (either cut) cover part of the video, with either trajectory kind; an
image-to-video edit of the first frame alone is seen by the difference mask, refused by the attention one."""
import pytest
import torch

from vidinv import editmask, errors, pipeline
from vidinv.attention import ReferenceOptions
from vidinv.hooks import Hooks
from vidinv.models import cogvideox
from vidinv.solver import Solver

STEPS = 8


def rel(a, b):
    return float((a - b).norm() / b.norm())


def test_changed_tokens_are_the_edits_own():
    vocab = {w: i for i, w in enumerate("a red green big circle moving right left </s>".split())}

    def tokenize(text):
        return [vocab[w] for w in text.split()] + [vocab["</s>"]]

    got = editmask.changed_tokens(tokenize, ["a red circle moving right", "a red circle moving left"],
                                  ["a green circle moving right", "a big red circle moving left"], 10)
    assert got[0].nonzero().flatten().tolist() == [1] and got[1].nonzero().flatten().tolist() == [1]
    assert not editmask.changed_tokens(tokenize, ["a red circle"], ["a red circle"], 10).any()
    with pytest.raises(errors.InputError, match="one edited prompt per source"):
        editmask.changed_tokens(tokenize, ["a", "a"], ["a", "a", "a"], 10)


def test_mask_from_map_spreads_patches_and_keeps_a_quantile_per_frame():
    scores = torch.zeros(1, 2 * 4 * 4)
    scores[0, 0] = 1.0  # frame 0, top-left patch
    scores[0, 31] = 0.1  # frame 1, bottom-right patch: its frame's own maximum
    m = editmask.mask_from_map(scores, (2, 4, 4), (1, 2, 2), (1, 2, 4, 8, 8), 0.9)
    assert m.shape == (1, 2, 1, 8, 8) and m[0, 0, 0, 0, 0] == 1 and m[0, 0, 0, 7, 7] == 0
    assert m[0, 1, 0, 7, 7] == 1 and m[0, 1, 0, 0, 0] == 0
    assert 0.05 <= float(m.mean()) <= 0.25  # about the top tenth of each frame (ties at the edge kept)
    assert not editmask.mask_from_map(torch.zeros(1, 32), (2, 4, 4), (1, 2, 2), (1, 2, 4, 8, 8), 0.9).any()


def test_otsu_cut_keeps_the_region_that_stands_out_whatever_its_size():
    levels = editmask.otsu_levels(torch.tensor([[0.0, 0.1, 0.2, 5.0, 5.1], [1.0, 1.0, 1.0, 1.0, 9.0]]))
    assert levels.flatten().tolist() == [5.0, 9.0]
    for size in (2, 5):  # a 2 x 2 and a 5 x 5 bright square on a faint ramp, in an 8 x 8 frame
        scores = torch.linspace(0, 0.05, 64).view(8, 8).clone()
        scores[1:1 + size, 1:1 + size] += 1.0
        m = editmask.mask_from_map(scores.flatten()[None], (1, 8, 8), (1, 1, 1), (1, 1, 4, 8, 8), 0.0, "otsu")
        inside = float(m[0, 0, 0, 1:1 + size, 1:1 + size].sum())
        assert inside >= size * size - 4  # the square, however large (its corners may smooth away)
        assert m.sum() <= (size + 2) ** 2  # and at most the ring the 3 x 3 smoothing spreads it to
    top_tenth = editmask.mask_from_map(scores.flatten()[None], (1, 8, 8), (1, 1, 1), (1, 1, 4, 8, 8), 0.9)
    assert top_tenth[0, 0, 0, 1:6, 1:6].sum() < 12  # a fixed quantile misses most of the large square
    with pytest.raises(errors.InputError, match="mask cut 'edges'"):
        editmask.EditMask(0.9, cut="edges")
    assert editmask.EditMask(0.0, source="difference", cut="otsu").cut == "otsu"  # no quantile needed


def test_a_lower_cut_level_keeps_the_weaker_edge_too():
    """mask_level: Otsu's level times the scale; below 1 the region's weaker edge joins the mask, 1 is the cut
    as it was, an empty map stays empty; a bad scale is refused before any work."""
    scores = torch.zeros(8, 8)
    scores[2:6, 2:6] = 1.0  # the object
    scores[1, 2:6] = scores[6, 2:6] = 0.5  # its weaker edge, above and below
    flat = scores.flatten()[None]
    cut = {v: editmask.EditMask(0.0, source="difference", cut="otsu", level=v).cut_map(flat, (1, 8, 8), (1, 1, 1),
                                                                                        (1, 1, 4, 8, 8))
           for v in (1.0, 0.5, 2.0)}
    assert torch.equal(cut[1.0], editmask.mask_from_map(flat, (1, 8, 8), (1, 1, 1), (1, 1, 4, 8, 8), 0.0, "otsu"))
    assert bool((cut[0.5] >= cut[1.0]).all()) and cut[0.5].sum() > cut[1.0].sum()  # a superset, and larger
    assert bool((cut[2.0] <= cut[1.0]).all()) and cut[2.0].sum() < cut[1.0].sum()
    empty = editmask.EditMask(0.0, source="difference", cut="otsu", level=0.05)
    assert not empty.cut_map(torch.zeros(1, 64), (1, 8, 8), (1, 1, 1), (1, 1, 4, 8, 8)).any()  # exact reconstruction
    for bad in (0.0, -0.5, editmask.MAX_LEVEL + 0.1, float("nan"), float("inf"), True, "0.75"):
        with pytest.raises(errors.InputError, match="mask level .* is not a number in"):
            editmask.EditMask(0.0, source="difference", cut="otsu", level=bad)


def test_grow_widens_each_frame_by_whole_cells_and_keeps_an_empty_mask_empty():
    m = torch.zeros(2, 3, 1, 8, 8)
    m[0, 0, 0, 4, 4] = 1.0  # one cell in video 0's first frame
    m[1, 2, 0, 0, 7] = 0.4  # a soft corner cell in video 1's last frame
    one = editmask.grow(m, 1)
    assert one.shape == m.shape and one[0, 0, 0, 3:6, 3:6].eq(1).all() and one[0, 0].sum() == 9
    assert one[0, 1:].sum() == 0 and one[1, :2].sum() == 0  # no spread across frames or videos
    assert one[1, 2, 0, :2, 6:].eq(0.4).all() and one[1, 2].count_nonzero() == 4  # clipped at the border, soft kept
    assert editmask.grow(m, 2)[0, 0].sum() == 25 and editmask.grow(m, 0) is m
    assert not editmask.grow(torch.zeros(1, 2, 1, 8, 8), editmask.MAX_GROW).any()  # reconstruction stays exact
    for bad in (-1, editmask.MAX_GROW + 1, 1.5, True, "1"):
        with pytest.raises(errors.InputError, match="mask grow .* whole number of latent cells"):
            editmask.EditMask(0.0, source="difference", cut="otsu", grow=bad)


def test_difference_map_probes_the_clean_end_and_empties_unchanged_rows():
    assert editmask.difference_steps(50) == [30, 35, 40, 44, 49]
    assert editmask.difference_steps(20) == [12, 19] and editmask.difference_steps(30) == [18, 24, 29]
    assert editmask.difference_steps(4) == [2] and editmask.difference_steps(1) == [0]
    # one probe per ten steps (two unguided rows each): from 10 steps on the map costs at most 0.2 rows per step
    assert all(2 * len(editmask.difference_steps(n)) / n <= 0.2 for n in range(10, 201))
    seen = []
    latents = torch.randn(3, 2, 2, 4, 3, 3, generator=torch.Generator().manual_seed(1))

    def source(x, i):
        seen.append(i)
        return x

    def edit(x, i):
        out = x.clone()
        out[:, 1, :, 2, 0] += 4.0  # both rows: frame 1, latent cell (2, 0) changes
        return out

    m = editmask.difference_map(source, edit, lambda i: latents[i], 3, torch.tensor([True, False]))
    assert seen == editmask.difference_steps(3) and m.shape == (2, 2, 3, 3)
    assert m[0, 1, 2, 0] == 4.0 * len(seen) and m[0].count_nonzero() == 1 and not m[1].any()
    with pytest.raises(errors.InputError, match="mask source 'words'"):
        editmask.EditMask(0.9, source="words")


def test_a_given_mask_follows_the_vae_frame_grouping():
    mask = torch.zeros(9, 16, 16)
    mask[5:9, :8, :8] = 1.0  # the pixel frames of latent frame 2 (4x temporal)
    m = editmask.from_pixels(mask, (1, 3, 4, 4, 4), 4)
    assert m.shape == (1, 3, 1, 4, 4) and m[0, 2, 0, :2, :2].eq(1).all() and m[0, :2].eq(0).all()
    assert editmask.from_pixels(torch.ones(32, 32), (2, 3, 4, 4, 4), 4).eq(1).all()
    with pytest.raises(errors.InputError, match="the mask has 4 frames; the video has 9"):
        editmask.from_pixels(torch.ones(4, 16, 16), (1, 3, 4, 4, 4), 4)
    px = editmask.to_pixels(m, 4, 4)
    assert px.shape == (9, 16, 16, 3) and px[5:, :8, :8].eq(1).all() and px[:5].eq(0).all()
    both = editmask.from_pixels(torch.cat([mask, 1 - mask]), (2, 3, 4, 4, 4), 4)  # one mask video per video
    assert both.shape == (2, 3, 1, 4, 4) and both[0].equal(m[0]) and both[1, :2].eq(1).all()
    assert both[1, 2, 0, :2, :2].eq(0).all()
    with pytest.raises(errors.InputError, match=r"the video has 9 \(2 x 9 for one per video\)"):
        editmask.from_pixels(torch.ones(10, 16, 16), (2, 3, 4, 4, 4), 4)
    with pytest.raises(errors.InputError, match="threshold"):
        editmask.EditMask(0.0)


@pytest.fixture(scope="module")
def setup(tiny64):
    model = tiny64("5b")
    src = cogvideox.encode_text(model, "a red circle moving right")
    edit = cogvideox.encode_text(model, "a green circle moving right")
    x0 = torch.randn(1, 2, model.latent_channels, 8, 8, generator=torch.Generator().manual_seed(0),
                     dtype=torch.float64)
    exact = pipeline.invert(model, src, x0, STEPS, settings=Solver(iters=20, tol=1e-12))
    friendly = pipeline.invert_friendly(model, src, x0, STEPS)
    return model, src, edit, x0, {"exact": exact, "edit-friendly": friendly}


@pytest.mark.parametrize("kind", ["exact", "edit-friendly"])
@pytest.mark.parametrize("source", editmask.SOURCES)
def test_masked_guided_sampling(setup, kind, source):
    model, src, edit, x0, trajs = setup
    traj = trajs[kind]
    patched = pipeline.with_reference(model, traj, ReferenceOptions())
    plain_rec = pipeline.guided_sample(patched, src)
    plain_edit = pipeline.guided_sample(patched, edit)
    # reconstruction: no token differs, the mask is empty, the sample is the trajectory's
    for cut in editmask.CUTS:
        m = editmask.EditMask(0.3, source=source, cut=cut)
        assert rel(pipeline.guided_sample(patched, src, edit_mask=m), plain_rec) < 1e-6 and not m.latent.any()
    # an edit: part of the video follows it, the rest the trajectory (the top quarter of each frame,
    # with ties; or Otsu's share)
    for cut, low, high in (("quantile", 0.2, 0.4), ("otsu", 0.02, 0.9)):
        m = editmask.EditMask(0.75, source=source, cut=cut)
        masked = pipeline.guided_sample(patched, edit, edit_mask=m)
        assert low <= float(m.latent.mean()) <= high and rel(masked, plain_edit) > 1e-6
        outside, inside = (1 - m.latent).bool().expand_as(masked), m.latent.bool().expand_as(masked)
        assert torch.allclose(masked[outside], traj.clean.double()[outside])  # the last blend lands on x_0
        assert not torch.allclose(masked[inside], traj.clean.double()[inside])


@pytest.mark.parametrize("kind", ["exact", "edit-friendly"])
def test_given_masks(setup, kind):
    """All ones is no mask, all zeros is the trajectory."""
    model, src, edit, x0, trajs = setup
    traj = trajs[kind]
    patched = pipeline.with_reference(model, traj, ReferenceOptions())
    ones = pipeline.guided_sample(patched, edit, edit_mask=editmask.EditMask(given=torch.ones(32, 32)))
    assert rel(ones, pipeline.guided_sample(patched, edit)) < 1e-12
    zeros = pipeline.guided_sample(patched, edit, edit_mask=editmask.EditMask(given=torch.zeros(32, 32)))
    assert rel(zeros, traj.clean) < 1e-6


def test_a_share_of_the_inverted_noise_in_the_masked_start(setup):
    """start 'fresh in mask' with `inverted_share`: 0 is fresh noise in the mask, 1 the inverted start, between them
    a mix of the two (each seed's own); with the source prompt the mask is empty and the source comes back whatever
    the share; a share outside 0..1 is refused before any model call."""
    model, src, edit, x0, trajs = setup
    patched = pipeline.with_reference(model, trajs["exact"], ReferenceOptions())

    def run(cond, start="fresh in mask", **kw):
        return pipeline.guided_sample(patched, cond, start=start, edit_mask=editmask.EditMask(0.75, cut="otsu",
                                                                                              source="difference"),
                                      seed=3, **kw)
    fresh, inverted = run(edit), run(edit, "inverted")
    assert torch.equal(run(edit, inverted_share=0.0), fresh) and rel(run(edit, inverted_share=1.0), inverted) < 1e-12
    half = run(edit, inverted_share=0.5)
    assert rel(half, fresh) > 1e-6 and rel(half, inverted) > 1e-6
    assert rel(run(src, inverted_share=0.5), run(src, "inverted")) < 1e-12
    class NoCall(Hooks):
        def before_call(self):
            pytest.fail("a model call before the share was checked")
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(errors.InputError, match="inverted_share"):
            pipeline.guided_sample(patched, edit, inverted_share=bad, hooks=NoCall())


def test_image_changed_compares_tensors_and_their_dataclasses():
    import dataclasses

    @dataclasses.dataclass
    class Condition:  # the shape of Wan's image conditioning
        latents: torch.Tensor
        embeds: torch.Tensor | None

    src = torch.zeros(2, 3, 4)
    assert not editmask.image_changed(src, None, 2).any() and not editmask.image_changed(src, src, 2).any()
    edited = src.clone()
    edited[1, 0, 0] = 1.0
    assert editmask.image_changed(src, edited, 2).tolist() == [False, True]
    assert editmask.image_changed(src, torch.ones(1, 3, 4), 2).tolist() == [True, True]  # one frame for all
    cond = Condition(src, None)
    assert not editmask.image_changed(cond, Condition(src.clone(), None), 2).any()
    assert editmask.image_changed(cond, Condition(edited, None), 2).tolist() == [False, True]
    assert editmask.image_changed(cond, Condition(src, torch.ones(2, 1)), 2).all()


def test_image_to_video_masks_see_an_edited_first_frame(tiny64):
    """CogVideoX image-to-video: with the source prompt and an edited first frame the difference mask
    marks what the new frame changes (the edit is not lost), an attention mask is refused before any
    model call (it follows changed words only), and with the source's frame the mask is empty and the
    reconstruction exact."""
    model = tiny64("5b-i2v")
    h, w = int(model.transformer.config.sample_height), int(model.transformer.config.sample_width)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 2, model.latent_channels, h, w, generator=gen, dtype=torch.float64)
    image = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    src = cogvideox.encode_text(model, "a red circle moving right")
    traj = pipeline.invert(model, src, x0, STEPS, settings=Solver(iters=20, tol=1e-12), image_latents=image)
    patched = pipeline.with_reference(model, traj, ReferenceOptions())
    plain = pipeline.guided_sample(patched, src)
    same = editmask.EditMask(source="difference", cut="otsu")
    assert rel(pipeline.guided_sample(patched, src, edit_mask=same), plain) < 1e-6 and not same.latent.any()
    new_frame = image.clone()
    new_frame[..., : h // 2, :] += 3.0
    m = editmask.EditMask(source="difference", cut="otsu")
    masked = pipeline.guided_sample(patched, src, image_latents=new_frame, edit_mask=m)
    assert 0.0 < float(m.latent.mean()) < 1.0 and rel(masked, traj.clean) > 1e-6
    outside = (1 - m.latent).bool().expand_as(masked)
    assert torch.allclose(masked[outside], traj.clean.double()[outside])
    calls = []
    with pytest.raises(errors.InputError, match="follows the prompt's changed words.*Set mask_source to 'difference'"):
        pipeline.guided_sample(patched, src, image_latents=new_frame, hooks=CountCalls(calls),
                               edit_mask=editmask.EditMask(source="attention", cut="otsu"))
    assert not calls


class CountCalls(Hooks):
    def __init__(self, calls):
        self.calls = calls

    def before_call(self):
        self.calls.append(1)


def test_a_large_mask_costs_no_copy_per_latent_frame():
    """Issue 38: one 16384 x 16384 MASK frame on Guided Sample took the server from 0.7 to 7.9 GB (the
    frame copied once per latent frame before resizing). Each latent frame's mask is now resized on its
    own: a one-frame 8192 x 8192 mask (256 MiB) for 13 latent frames adds far less than one copy (the
    old way: 13 copies, 3.3 GiB). Peak RSS of a fresh process, so nothing else in the suite counts."""
    import subprocess
    import sys
    from tests.conftest import ROOT
    code = ("import resource, torch\nfrom vidinv import editmask\nm = torch.ones(1, 8192, 8192)\n"
            "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "out = editmask.from_pixels(m, (1, 13, 1, 64, 64), 4)\nassert out.shape == (1, 13, 1, 64, 64)\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)")
    extra_kib = int(subprocess.check_output([sys.executable, "-c", code], cwd=ROOT, text=True).split()[-1])
    assert extra_kib < 64 * 1024, f"{extra_kib / 1024:.0f} MiB more than the mask itself"
