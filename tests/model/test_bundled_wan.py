"""The committed tiny Wan (assets/tiny-wan): loads with WanPipeline and in the pack, is listed first by
Load Wan Model, reproduces pinned sampling statistics, follows its captions, inverts exactly at
guidance 1 and 5 within issue 19's targets (50 steps: <= 1e-4 and <= 1e-3 relative latent error, <= 8
model calls per step), reconstructs through reference attention as plain sampling does, and its
model card quotes the measured numbers. The pack's assets stay within 50 MB."""
import json

import numpy as np
import pytest
import torch

from tests.conftest import ROOT
from vidinv import pipeline, synthetic
from vidinv.attention import ReferenceOptions
from vidinv.family import Guidance
from vidinv.models import wan

FOLDER = ROOT / "assets" / "tiny-wan"
# Pinned when the weights were committed: caption "a blue square moving up", seed 1234, 50 flow
# Euler steps, guidance 5, fp32 on CPU. A change in weights, loader, text encoding or sampler moves these.
PINNED = {"mean": -0.0744, "std": 1.38905, "abs_mean": 0.99904}


@pytest.fixture(scope="module")
def model():
    if not FOLDER.is_dir():
        pytest.fail(f"the bundled Wan is missing at {FOLDER}")
    return wan.load(FOLDER, "fp32")


def test_assets_are_small_and_complete():
    assets = sum(p.stat().st_size for p in (ROOT / "assets").rglob("*") if p.is_file())
    assert assets <= 50 * 1024 * 1024, assets / 2**20
    for sub in ("model_index.json", "transformer", "vae", "text_encoder", "tokenizer", "scheduler", "MODEL_CARD.md",
                "quality.json"):
        assert (FOLDER / sub).exists(), sub


def test_loads_in_wan_pipeline():
    from diffusers import WanPipeline
    pipe = WanPipeline.from_pretrained(FOLDER, torch_dtype=torch.float32)
    frames = pipe("a red circle moving right", num_frames=9, height=64, width=64, num_inference_steps=4,
                  output_type="np").frames[0]
    assert frames.shape == (9, 64, 64, 3)
    assert pipe.scheduler.config.flow_shift == 3.0


def test_listed_first_by_load_wan():
    from tests.conftest import load_pack
    options = load_pack().NODE_CLASS_MAPPINGS["VInvLoadWan"].INPUT_TYPES()["required"]["model"][0]
    assert options[0] == "tiny-wan (bundled)"


def pinned_sample(model, caption):
    cond = wan.encode_text(model, caption)
    noise = torch.randn(1, 3, model.latent_channels, 8, 8, generator=torch.Generator().manual_seed(1234))
    return pipeline.sample(model, cond, noise, 50, Guidance(5.0))


def test_reproduces_pinned_sampling_statistics_and_follows_the_caption(model):
    z = pinned_sample(model, "a blue square moving up")
    stats = {"mean": float(z.mean()), "std": float(z.std()), "abs_mean": float(z.abs().mean())}
    for k, v in PINNED.items():
        assert v is not None and abs(stats[k] - v) < 1e-3 * max(1.0, abs(v)), (k, stats[k], v)
    got = synthetic.describe(wan.decode_video(model, z).numpy())
    assert got["colour"] == "blue" and got["direction"] == "up", got  # (its square comes out round: shape 0.64)


@pytest.fixture(scope="module")
def heldout(model):
    specs = synthetic.heldout_specs(2)
    x0 = torch.cat([wan.encode_video(model, torch.from_numpy(synthetic.render(s))) for s in specs])
    return specs, x0, wan.encode_text(model, [s.caption for s in specs])


@pytest.mark.slow
@pytest.mark.parametrize("g, bound, calls", [(1.0, 1e-4, 4.0), (5.0, 1e-3, 5.0)])
def test_exact_round_trip_and_guided_reconstruction(model, heldout, g, bound, calls):
    """Node defaults; calls per step (issue 34, first iterates predicted without a call): 3.32 / 4.08
    measured on these 2 videos, 4.72 / 6.14 before on 8 (BENCHMARKS section 1)."""
    specs, x0, cond = heldout
    traj = pipeline.invert(model, cond, x0, 50, Guidance(g))
    back = pipeline.sample(model, cond, traj.noise, 50, Guidance(g))
    errs = [float((b - a).norm() / a.norm()) for a, b in zip(x0, back)]
    assert max(errs) <= bound, errs
    assert np.mean(traj.calls) <= calls, traj.calls
    guided = pipeline.guided_sample(pipeline.with_reference(model, traj, ReferenceOptions()), cond, Guidance(g))
    assert float((guided - back).norm() / back.norm()) <= bound


def test_vae_reconstructs_heldout_videos(model):
    psnrs = []
    for spec in synthetic.heldout_specs(8):
        frames = torch.from_numpy(synthetic.render(spec))
        rec = wan.decode_video(model, wan.encode_video(model, frames)).numpy()
        psnrs.append(synthetic.psnr(rec, frames.numpy()))
        assert synthetic.describe(rec)["colour"] == spec.colour
    assert np.mean(psnrs) >= 23.0, psnrs  # the model card's gate (measured: 23.8 dB on 48 videos)


def test_model_card_numbers_are_the_measured_ones():
    quality = json.loads((FOLDER / "quality.json").read_text())
    card = (FOLDER / "MODEL_CARD.md").read_text()
    assert "DRAFT" not in card and "TODO" not in card
    assert f"{quality['vae']['psnr_db']:.1f} dB" in card
    g5 = next(r for r in quality["generation"] if r["guidance"] == 5.0)
    for key in ("colour_acc", "direction_acc", "shape_acc"):
        assert f"{g5[key]:.2f}" in card
    assert min(g5["colour_acc"], g5["direction_acc"]) >= 0.9
