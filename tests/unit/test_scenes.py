"""The two-object benchmark ground (vidinv.scenes): rendering, reading objects back from pixels, and
the per-object edit score."""
import numpy as np
import pytest

from vidinv import fixture, scenes, synthetic


def test_render_is_deterministic_and_in_range():
    spec = scenes.random_scene(5)
    a, b = scenes.render_scene(spec), scenes.render_scene(scenes.random_scene(5))
    assert a.shape == (9, 64, 64, 3) and a.dtype == np.float32
    assert np.array_equal(a, b) and 0.0 <= a.min() and a.max() <= 1.0
    assert not np.array_equal(a, scenes.render_scene(scenes.random_scene(6)))


def test_background_pans_and_stays_grey():
    spec = scenes.random_scene(3)
    bg = scenes.render_scene(spec)[~scenes.dilate(scenes.true_masks(spec).any(axis=0), 2)]
    assert float((bg.max(axis=-1) - bg.min(axis=-1)).max()) < scenes.SATURATION / 2  # nearly grey
    assert bg.std() > 0.03  # textured, not flat
    frames = scenes.render_scene(spec)
    assert np.abs(np.diff(frames, axis=0)).mean() > 0.005  # the camera moves


@pytest.mark.parametrize("spec", scenes.heldout_scenes(8), ids=lambda s: s.caption)
def test_objects_read_back_from_pixels(spec):
    frames, truth = scenes.render_scene(spec), scenes.true_masks(spec)
    assert spec.objects[0].colour != spec.objects[1].colour
    for k, obj in enumerate(spec.objects):
        seen = scenes.object_mask(frames, obj.colour)
        assert synthetic.masks_iou(seen, truth[k]) > 0.85
        assert scenes.region_colour(frames, seen) == obj.colour


def test_heldout_scenes_cover_the_vocabulary_and_captions_fit():
    specs = scenes.heldout_scenes(8)
    assert {o.colour for s in specs for o in s.objects} == set(synthetic.COLOURS)
    assert {o.shape for s in specs for o in s.objects} == set(synthetic.SHAPES)
    assert {o.direction for s in specs for o in s.objects} == set(synthetic.DIRECTIONS)
    tok = fixture.build_tokenizer(fixture.SCENE_VOCAB_WORDS)
    for s in specs:
        ids = tok(s.caption).input_ids
        assert 2 not in ids and len(ids) <= fixture.TEXT_LEN, s.caption  # no unknown word, no truncation


def test_some_training_scenes_overlap():
    overlaps = [scenes.true_masks(scenes.random_scene(i)).sum(axis=0).max() for i in range(40)]
    raw = []
    for i in range(40):  # objects drawn alone: does the front one hide part of the back one?
        spec = scenes.random_scene(i)
        alone = scenes.true_masks(scenes.SceneSpec(spec.objects[:1], spec.background))[0].sum()
        raw.append(alone > scenes.true_masks(spec)[0].sum())
    assert max(overlaps) == 1  # visible masks never overlap
    assert 0 < sum(raw) < 40  # occlusion happens, but not always


def test_edit_target_is_a_free_colour():
    for spec in scenes.heldout_scenes(8):
        target = scenes.edit_target(spec)
        assert target not in {o.colour for o in spec.objects}
    with pytest.raises(ValueError, match="different colours"):
        scenes.random_scene(0, colours=("red", "red"))


def test_score_edit_of_itself_and_of_the_true_edit():
    spec = scenes.heldout_scenes(1)[0]
    src = scenes.render_scene(spec)
    same = scenes.score_edit(src, src, spec, 0, spec.objects[0].colour)
    assert same["hit"] and same["edited_iou"] == 1.0 and same["edited_path_px"] == 0.0
    assert same["other_colour_kept"] and same["other_shape_kept"] and same["other_iou"] == 1.0
    assert same["background_psnr_db"] == float("inf") and same["flicker"] == 0.0
    target = scenes.edit_target(spec)
    true_edit = scenes.render_scene(spec.recoloured(0, target))
    s = scenes.score_edit(true_edit, src, spec, 0, target)
    assert s["hit"] and s["edited_iou"] > 0.95 and s["edited_path_px"] < 0.3
    assert s["other_colour_kept"] and s["other_iou"] > 0.95 and s["background_psnr_db"] == float("inf")
    # the source itself is a miss of the target, and a blank video loses everything
    assert not scenes.score_edit(src, src, spec, 0, target)["hit"]
    blank = scenes.score_edit(np.zeros_like(src), src, spec, 0, target)
    assert not blank["hit"] and blank["edited_iou"] == 0.0 and not blank["other_colour_kept"]


def test_single_object_videos_read_the_same_way():
    spec = synthetic.heldout_specs(1)[0]
    frames = synthetic.render(spec)
    assert synthetic.masks_iou(scenes.object_mask(frames), synthetic.foreground_mask(frames)) > 0.9
