"""The training scripts build held-out models of other shapes, the VAE's latent channel count included: one step
of each stage with --latent-channels, exported, then loaded by the pack (every shape read from the folder's
configs) and a synthetic video encoded, inverted and sampled back through it. The models' quality is not the point
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


def trained(script, tmp_path, vae: list[str], dit: list[str]):
    work, out = tmp_path / "work", tmp_path / "model"
    common = ["--work", str(work), "--threads", "1", "--steps", "1", "--batch", "1"]
    with torch.random.fork_rng():
        script.main(["vae", *common, *vae])
        script.main(["dit", *common, "--dataset", "2", *dit])
        script.main(["export", "--work", str(work), "--out", str(out)])
    return out


@pytest.mark.parametrize("family,script,channels,dit", [
    (wan, train_wan_fixture, 12, ["--blocks", "1", "--heads", "2", "--head-dim", "24", "--text-layers", "1"]),
    (cogvideox, train_fixture, 8, ["--layers", "1"]),
], ids=["wan", "cogvideox"])
def test_a_model_with_another_latent_channel_count_trains_loads_and_round_trips(tmp_path, family, script, channels,
                                                                                  dit):
    model = family.load(trained(script, tmp_path, ["--latent-channels", str(channels)], dit), "fp32")
    config = model.transformer.config
    assert model.latent_channels == channels == config.in_channels == config.out_channels and config.num_layers == 1
    frames = torch.from_numpy(synthetic.render(synthetic.heldout_specs(1)[0]))
    x0 = family.encode_video(model, frames)
    assert x0.shape[2] == channels
    cond = family.encode_text(model, "a red circle moving right")
    traj = pipeline.invert(model, cond, x0, 4, Guidance(1.0), Solver(iters=30, tol=1e-9))
    back = pipeline.sample(model, cond, traj.noise, 4, Guidance(1.0))
    assert float((back - x0).norm() / x0.norm()) < 1e-4
