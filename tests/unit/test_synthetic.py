"""The synthetic generator and its classifiers (near-perfect on generator output)."""
import numpy as np
import pytest

from vidinv import synthetic


def test_deterministic_by_seed():
    a, b = synthetic.render(synthetic.random_spec(7)), synthetic.render(synthetic.random_spec(7))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, synthetic.render(synthetic.random_spec(8)))


def test_layout_and_caption():
    spec = synthetic.random_spec(3, frames=13, height=48, width=80)
    f = synthetic.render(spec)
    assert f.shape == (13, 48, 80, 3) and f.dtype == np.float32 and 0 <= f.min() and f.max() <= 1
    assert spec.caption == f"a {spec.colour} {spec.shape} moving {spec.direction}"
    with pytest.raises(ValueError, match="4k\\+1"):
        synthetic.random_spec(0, frames=10)


def test_classifiers_near_perfect_on_generator_output():
    specs = [synthetic.random_spec(s) for s in range(240)]
    preds = [synthetic.describe(synthetic.render(s)) for s in specs]
    for key in ("shape", "colour", "direction"):
        acc = np.mean([p[key] == getattr(s, key) for p, s in zip(preds, specs)])
        assert acc >= 0.99, (key, acc)


def test_heldout_set_is_fixed_and_covers_every_attribute():
    specs = synthetic.heldout_specs(24)
    assert specs == synthetic.heldout_specs(24)
    assert {s.shape for s in specs} == set(synthetic.SHAPES)
    assert {s.colour for s in specs} == set(synthetic.COLOURS)
    assert {s.direction for s in specs} == set(synthetic.DIRECTIONS)


def test_centroid_follows_the_spec():
    spec = synthetic.random_spec(11)
    path = synthetic.centroid_path(synthetic.render(spec))
    expected = np.array([spec.centre(i) for i in range(spec.frames)])
    # the triangle's centroid sits below its box centre; circles and squares are on it
    offset = np.array([0, spec.radius / 3]) if spec.shape == "triangle" else 0
    assert np.abs(path - expected - offset).max() < 0.6


def test_metrics():
    a = synthetic.render(synthetic.random_spec(1))
    assert synthetic.mask_iou(a, a) == 1.0 and synthetic.centroid_error(a, a) == 0.0
    assert synthetic.psnr(a, a) == float("inf")
    empty = np.zeros_like(a)
    assert synthetic.mask_iou(a, empty) == 0.0 and synthetic.centroid_error(a, empty) > 50
