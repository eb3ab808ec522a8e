"""The library as ComfyUI runs it: inside ``torch.inference_mode()`` (issue 37). Every test here is
marked `inference_mode` (tests/conftest.py), so its models are loaded, moved and used there, as the
nodes' are in the host. Null-text and prompt-tuning inversion failed there with "element 0 of tensors
does not require grad"; the other stages are here so that a new piece of autograd, an in-place update
of a stored tensor or a tensor kept across calls fails outside the host too."""
import pytest
import torch

from tests.tiny_svd import write_tiny_svd
from tests.tiny_wan import write_tiny_wan
from vidinv import editmask, nulltext, pipeline, trajectory
from vidinv.attention import ReferenceOptions
from vidinv.family import Guidance
from vidinv.models import cogvideox, loading, svd, wan
from vidinv.solver import Solver

pytestmark = [pytest.mark.inference_mode, pytest.mark.usefixtures("one_thread")]
STEPS = 6


def rel(a, b):
    return float((a - b).norm() / b.norm())


def ordinary(module) -> bool:
    return not any(t.is_inference() for t in list(module.parameters()) + list(module.buffers()))


def test_the_marker_is_inference_mode():
    assert torch.is_inference_mode_enabled() and torch.ones(1).is_inference()


def test_cogvideox_every_stage(tiny_folders, tmp_path):
    model = cogvideox.load(tiny_folders["5b"], "fp32")
    assert ordinary(model.transformer) and ordinary(model.vae)  # loaded outside inference mode
    cond = cogvideox.encode_text(model, "a red circle moving right")
    edit = cogvideox.encode_text(model, "a blue circle moving right")
    x0 = cogvideox.encode_video(model, torch.rand(5, 32, 32, 3, generator=torch.Generator().manual_seed(0)))
    assert x0.is_inference()
    traj = pipeline.invert(model, cond, x0, STEPS, Guidance(1.0), Solver(iters=10, tol=0))
    assert rel(pipeline.sample(model, cond, traj.noise, STEPS), x0) < 1e-3  # float32, random weights
    plain = rel(pipeline.sample(model, cond, traj.noise, STEPS, Guidance(4.0)), x0)
    nt = nulltext.null_text_inversion(model, traj, 4.0, iters=20, tol=0)
    pt = nulltext.prompt_tuning_inversion(model, traj, 4.0, iters=20, tol=0)
    with_nt = pipeline.sample(model, cond, traj.noise, STEPS, Guidance(4.0),
                              negative=nulltext.negative_for("null-text", nt))
    with_pt = pipeline.sample(model, cond, traj.noise, STEPS, Guidance(4.0),
                              positive=nulltext.positive_for(pt, cond, 0.0))
    assert rel(with_nt, x0) * 3 < plain and rel(with_pt, x0) * 3 < plain, (rel(with_nt, x0), rel(with_pt, x0), plain)
    assert ordinary(model.transformer) and not model.transformer.gradient_checkpointing
    # the optimised trajectory through its file and back, then guided with a mask
    loaded = trajectory.load(nt.save(tmp_path / "nt.safetensors"))
    assert torch.equal(loaded.null_embeds, nt.null_embeds)
    patched = pipeline.with_reference(model, loaded, ReferenceOptions())
    assert rel(pipeline.guided_sample(patched, cond), x0) < 1e-3  # DESIGN fact 5
    mask = editmask.EditMask(source="difference", cut="otsu")
    assert rel(pipeline.guided_sample(patched, edit, Guidance(4.0), edit_mask=mask), x0) > 1e-4
    assert mask.latent is not None
    friendly = pipeline.invert_friendly(model, cond, x0, STEPS, seed=1)
    assert rel(pipeline.sample(model, cond, friendly.noise, STEPS, noise_maps=friendly.noise_maps), x0) < 1e-5
    frames = cogvideox.decode_video(model, x0)
    assert torch.isfinite(frames).all()


def test_null_text_on_weights_made_inside_inference_mode(tiny_folders):
    """A model whose weights became inference tensors (loaded, or moved between devices, inside
    inference mode by code other than the pack's loaders) still optimises: the weights are replaced
    by ordinary copies with the same values, a tied weight stays tied."""
    model = cogvideox.load.__wrapped__(tiny_folders["5b"], "fp32")  # the loader without its guard
    assert not ordinary(model.transformer)
    before = {k: v.clone() for k, v in model.transformer.state_dict().items()}
    cond = cogvideox.encode_text(model, "a red circle moving right")
    x0 = torch.randn(1, 2, model.latent_channels, 4, 4, generator=torch.Generator().manual_seed(1))
    traj = pipeline.invert(model, cond, x0, 3, Guidance(1.0), Solver(iters=5, tol=0))
    nt = nulltext.null_text_inversion(model, traj, 3.0, iters=2, tol=0, checkpoint=False)
    assert nt.null_embeds.shape[0] == 3 and ordinary(model.transformer)
    after = model.transformer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_ordinary_weights_keeps_a_tied_weight_tied():
    with torch.inference_mode():
        a, b = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
        b.weight = a.weight
        net = torch.nn.Sequential(a, b)
    assert loading.ordinary_weights(net) == 3  # a's weight and both biases
    assert net[0].weight is net[1].weight and ordinary(net)
    assert loading.ordinary_weights(net) == 0


@pytest.mark.parametrize("family", ["wan", "svd"])
def test_other_families_every_stage(family, tmp_path):
    g = torch.Generator().manual_seed(2)
    if family == "wan":
        model = wan.load(write_tiny_wan(tmp_path / "w"))
        cond, edit = wan.encode_text(model, "a red circle moving right"), wan.encode_text(model, "a blue circle")
        x0 = torch.randn(1, 3, 12, 8, 8, generator=g)
    else:
        model = svd.load(write_tiny_svd(tmp_path / "s"), "fp32")
        frame = torch.rand(1, 16, 16, 3, generator=g)
        cond, edit = svd.encode_image(model, frame), svd.encode_image(model, frame.flip(1))
        x0 = torch.randn(1, 3, 4, 8, 8, generator=g)
    traj = pipeline.invert(model, cond, x0, STEPS, Guidance(1.0), Solver(iters=10, tol=0))
    back = pipeline.sample(model, cond, traj.noise, STEPS)
    assert rel(back, x0) < 1e-3
    patched = pipeline.with_reference(model, trajectory.load(traj.save(tmp_path / "t.safetensors")))
    assert rel(pipeline.guided_sample(patched, cond), back) < 1e-4
    assert rel(pipeline.guided_sample(patched, edit), back) > 1e-6
    friendly = pipeline.invert_friendly(model, cond, x0, STEPS, seed=1)
    assert rel(pipeline.sample(model, cond, friendly.noise, STEPS, noise_maps=friendly.noise_maps), x0) < 1e-5
