"""The training scripts build held-out models of other shapes, the VAE's latent channel count and the frame size
included: one step of each stage with --latent-channels and --frames / --height / --width,
exported, then loaded by the pack (every shape read from the folder's configs) and a synthetic video of that size
encoded, inverted and sampled back through it. The models' quality is not the point
here; BENCHMARKS section 6 scores such models' edits."""
from __future__ import annotations

import pytest
import torch

from tools import train_fixture, train_wan_fixture
from vidinv import pipeline, synthetic
from vidinv.family import Guidance
from vidinv.models import cogvideox, wan
from vidinv.solver import Solver

# the scripts set the thread count (restored after the module) and seed torch's generator (forked below)
pytestmark = pytest.mark.usefixtures("one_thread")


def trained(script, tmp_path, vae: list[str], dit: list[str], i2v: list[str] | None = None):
    """One step of each stage, exported; with `i2v` (CogVideoX) also the image-to-video stage, exported instead."""
    work, out = tmp_path / "work", tmp_path / "model"
    common = ["--work", str(work), "--threads", "1", "--steps", "1", "--batch", "1"]
    with torch.random.fork_rng():
        script.main(["vae", *common, *vae])
        script.main(["dit", *common, "--dataset", "2", *dit])
        if i2v is not None:
            script.main(["i2v", *common, "--dataset", "2", *i2v])
        script.main(["export", "--work", str(work), "--out", str(out), *(["--i2v"] if i2v is not None else [])])
    return out


CLIP = ["--frames", "13", "--height", "48", "--width", "80"]  # not the bundled 9 x 64 x 64


@pytest.mark.parametrize("family,script,channels,dit", [
    (wan, train_wan_fixture, 12, ["--blocks", "1", "--heads", "2", "--head-dim", "24", "--text-layers", "1"]),
    (cogvideox, train_fixture, 8, ["--layers", "1"]),
], ids=["wan", "cogvideox"])
def test_a_model_of_another_latent_channel_count_and_frame_size_trains_loads_and_round_trips(tmp_path, family, script,
                                                                                             channels, dit):
    folder = trained(script, tmp_path, ["--latent-channels", str(channels), *CLIP], [*dit, *CLIP])
    model = family.load(folder, "fp32")
    config = model.transformer.config
    assert model.latent_channels == channels == config.in_channels == config.out_channels and config.num_layers == 1
    if family is cogvideox:  # its RoPE's base grid: the training clip's, in latent cells
        assert (config.sample_frames, config.sample_height, config.sample_width) == (13, 6, 10)
        assert model.native_size == (48, 80)
    spec = synthetic.heldout_specs(1, 13, 48, 80)[0]
    x0 = family.encode_video(model, torch.from_numpy(synthetic.render(spec)))
    assert x0.shape[1:] == (4, channels, 6, 10)
    cond = family.encode_text(model, "a red circle moving right")
    traj = pipeline.invert(model, cond, x0, 4, Guidance(1.0), Solver(iters=30, tol=1e-9))
    back = pipeline.sample(model, cond, traj.noise, 4, Guidance(1.0))
    assert float((back - x0).norm() / x0.norm()) < 1e-4


@pytest.mark.parametrize("script", [train_wan_fixture, train_fixture], ids=["wan", "cogvideox"])
def test_a_clip_size_the_models_cannot_tile_is_refused_before_any_work(tmp_path, script):
    for bad, said in ((["--frames", "12"], r"4k\+1"), (["--height", "40"], "multiple of 16"),
                      (["--width", "16"], "at least 32"), (["--height", "32", "--crop", "48"], "must fit")):
        with pytest.raises(SystemExit, match=said):
            script.main(["dit", "--work", str(tmp_path / "w"), "--threads", "1", *bad])
    assert not (tmp_path / "w").exists()


def test_an_image_to_video_model_of_another_shape_trains_from_its_text_to_video_model(tmp_path):
    """The I2V stage reads everything but its input channels from the text-to-video transformer it starts from
    (here 8 latent channels, 13 x 48 x 80 clips); a clip size other than that transformer's is refused."""
    with pytest.raises(SystemExit, match="trained on 13 x 48 x 80 clips"):
        trained(train_fixture, tmp_path, ["--latent-channels", "8", *CLIP], ["--layers", "1", *CLIP], [])
    folder = trained(train_fixture, tmp_path, ["--latent-channels", "8", *CLIP], ["--layers", "1", *CLIP], CLIP)
    model = cogvideox.load(folder, "fp32")
    config = model.transformer.config
    assert model.is_i2v and config.in_channels == 16 and config.out_channels == 8 and config.num_layers == 1
    assert config.use_learned_positional_embeddings and model.native_size == (48, 80)
    frames = torch.from_numpy(synthetic.render(synthetic.heldout_specs(1, 13, 48, 80)[0]))
    x0 = cogvideox.encode_video(model, frames)
    image = cogvideox.encode_image_latents(model, frames[:1], x0.shape[1])
    cond = cogvideox.encode_text(model, "a red circle moving right")
    traj = pipeline.invert(model, cond, x0, 4, Guidance(1.0), Solver(iters=30, tol=1e-9), image_latents=image)
    back = pipeline.sample(model, cond, traj.noise, 4, Guidance(1.0), image_latents=image)
    assert float((back - x0).norm() / x0.norm()) < 1e-4


@pytest.mark.parametrize("clip", [0, 16], ids=["channels", "clip tokens"])
def test_a_wan_image_to_video_model_trains_from_a_text_to_video_folder(tmp_path, clip):
    """Wan's i2v stage starts from an exported text-to-video folder (here 12 latent channels, 13 x 48 x 80 clips):
    the transformer also takes the first-frame mask (one channel per frame of the VAE's temporal factor) and the
    first frame's latent, with --clip-width CLIP tokens too (Wan 2.1 I2V's layout), every other setting is the
    folder's; the export is a Wan I2V folder the pack loads and round-trips with its first frame. The stage without
    --i2v-from, and from a folder that is already image-to-video, is refused before any work."""
    t2v = trained(train_wan_fixture, tmp_path / "t2v", ["--latent-channels", "12", *CLIP],
                  ["--blocks", "1", "--heads", "2", "--head-dim", "24", "--text-layers", "1", *CLIP])
    with pytest.raises(SystemExit, match="needs --i2v-from"):
        train_wan_fixture.main(["i2v", "--work", str(tmp_path / "none")])
    with pytest.raises(SystemExit, match="needs an even width"):
        train_wan_fixture.main(["i2v", "--i2v-from", str(t2v), "--clip-width", "15", "--work", str(tmp_path / "none")])
    assert not (tmp_path / "none").exists()
    work, out = tmp_path / "i2v-work", tmp_path / "i2v"
    with torch.random.fork_rng():
        train_wan_fixture.main(["i2v", "--i2v-from", str(t2v), "--work", str(work), "--threads", "1", "--steps", "1",
                                "--batch", "1", "--dataset", "2", "--clip-width", str(clip), *CLIP])
        train_wan_fixture.main(["export", "--i2v-from", str(t2v), "--work", str(work), "--out", str(out)])
    model = wan.load(out, "fp32")
    config = model.transformer.config
    assert model.is_i2v and config.out_channels == 12 and config.in_channels == 12 + 12 + model.temporal_factor
    assert config.num_layers == 1 and config.attention_head_dim == 24 and config.image_dim == (clip or None)
    assert (model.image_encoder is not None) == bool(clip)
    frames = torch.from_numpy(synthetic.render(synthetic.heldout_specs(1, 13, 48, 80)[0]))
    x0, image, _, _, _ = wan.FAMILY.encode_frames(model, frames, "trim to 4k+1", "resize and crop", 80, 48, "off")
    cond = wan.encode_text(model, "a red circle moving right")
    traj = pipeline.invert(model, cond, x0, 4, Guidance(1.0), Solver(iters=30, tol=1e-9), image_latents=image)
    back = pipeline.sample(model, cond, traj.noise, 4, Guidance(1.0), image_latents=image)
    assert float((back - x0).norm() / x0.norm()) < 1e-4
    assert (image.embeds is None) == (not clip)
    with pytest.raises(SystemExit, match="one-expert text-to-video"):
        train_wan_fixture.main(["i2v", "--i2v-from", str(out), "--work", str(tmp_path / "again"), "--threads", "1"])
