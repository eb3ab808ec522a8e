"""The committed tiny CogVideoX: loads in diffusers and in the pack, reproduces pinned sampling
statistics, and meets the quality its model card claims where that is cheap to check."""
import json

import numpy as np
import torch

from tests.conftest import BUNDLED
from vidinv.family import Guidance
from vidinv import pipeline, synthetic
from vidinv.models import cogvideox

# Pinned when the weights were committed (tools/train_fixture.py export): prompt, seed, 20 steps,
# guidance 5, fp32 on CPU. A change in weights, loader, text path or sampler moves these.
PINNED = {"mean": -0.35521, "std": 1.13422, "abs_mean": 1.02812}


def test_folder_is_small_and_complete():
    files = [p for p in BUNDLED.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 25 * 1024 * 1024
    for sub in ("model_index.json", "transformer", "vae", "scheduler", "text_encoder", "tokenizer", "MODEL_CARD.md"):
        assert (BUNDLED / sub).exists(), sub


def test_loads_in_diffusers_pipeline():
    from diffusers import CogVideoXPipeline
    from transformers import AutoTokenizer
    pipe = CogVideoXPipeline.from_pretrained(BUNDLED, dtype=torch.float32)
    assert pipe.transformer.config.use_rotary_positional_embeddings
    assert pipe.scheduler.config.snr_shift_scale == 3.0 and pipe.scheduler.config.rescale_betas_zero_snr
    tok = AutoTokenizer.from_pretrained(BUNDLED / "tokenizer")
    assert tok("a red circle moving right").input_ids[-1] == tok.eos_token_id


def test_listed_as_the_default_model():
    from tests.conftest import load_pack
    pack = load_pack()
    options = pack.NODE_CLASS_MAPPINGS["VInvLoadCogVideoX"].INPUT_TYPES()["required"]["model"][0]
    assert options[0] == "tiny-cogvideox (bundled)"


def pinned_sample(model):
    cond = cogvideox.encode_text(model, "a yellow triangle moving down")
    h, w = model.native_size
    noise = torch.randn(1, 3, model.latent_channels, h // 8, w // 8, generator=torch.Generator().manual_seed(1234))
    return pipeline.sample(model, cond, noise, 20, Guidance(5.0))


def test_reproduces_pinned_sampling_statistics(bundled_model):
    z = pinned_sample(bundled_model)
    stats = {"mean": float(z.mean()), "std": float(z.std()), "abs_mean": float(z.abs().mean())}
    for k, v in PINNED.items():
        assert v is not None and abs(stats[k] - v) < 1e-3 * max(1.0, abs(v)), (k, stats[k], v)


def test_generates_what_the_prompt_says(bundled_model):
    frames = cogvideox.decode_video(bundled_model, pinned_sample(bundled_model)).numpy()
    d = synthetic.describe(frames)
    assert d["colour"] == "yellow" and d["direction"] == "down", d


def test_model_card_numbers_are_the_measured_ones():
    quality = json.loads((BUNDLED / "quality.json").read_text())
    card = (BUNDLED / "MODEL_CARD.md").read_text()
    assert f"{quality['vae']['psnr_db']:.1f} dB" in card
    g5 = quality["generation"][0]
    assert g5["guidance"] == 5.0 and f"{g5['colour_acc']:.2f}" in card


def test_vae_reconstructs_heldout_videos(bundled_model):
    specs = synthetic.heldout_specs(8)
    psnrs = []
    for spec in specs:
        frames = torch.from_numpy(synthetic.render(spec))
        rec = cogvideox.decode_video(bundled_model, cogvideox.encode_video(bundled_model, frames)).numpy()
        psnrs.append(synthetic.psnr(rec, frames.numpy()))
        assert synthetic.describe(rec)["colour"] == spec.colour
    assert np.mean(psnrs) >= 26.0


def test_i2v_folder_loads_in_diffusers_pipeline():
    from diffusers import CogVideoXImageToVideoPipeline
    pipe = CogVideoXImageToVideoPipeline.from_pretrained(BUNDLED.with_name("tiny-cogvideox-i2v"), dtype=torch.float32)
    assert pipe.transformer.config.in_channels == 2 * pipe.vae.config.latent_channels


def test_committed_configs_name_no_training_folder():
    """diffusers records the folder a module was loaded from as `_name_or_path`; the bundled
    folders are exported without it (vidinv.fixture.save_pipeline)."""
    configs = sorted(BUNDLED.parent.glob("*/*/*config.json"))
    assert len(configs) >= 12
    for cfg in configs:
        assert "_name_or_path" not in json.loads(cfg.read_text()), cfg


def test_export_drops_name_or_path_and_keeps_the_card(tmp_path):
    from diffusers import CogVideoXPipeline

    from vidinv.fixture import save_pipeline
    pipe = CogVideoXPipeline.from_pretrained(BUNDLED, dtype=torch.float32)
    assert pipe.vae.config._name_or_path  # what from_pretrained records, and save_pretrained would write
    out = tmp_path / "export"
    out.mkdir()
    (out / "MODEL_CARD.md").write_text("card")
    (out / "stale.txt").write_text("old export")
    assert save_pipeline(pipe, out) == {"MODEL_CARD.md"}
    assert (out / "MODEL_CARD.md").read_text() == "card" and not (out / "stale.txt").exists()
    for cfg in out.glob("*/config.json"):
        assert "_name_or_path" not in json.loads(cfg.read_text()), cfg
    again = CogVideoXPipeline.from_pretrained(out, dtype=torch.float32)
    assert again.transformer.config.num_layers == pipe.transformer.config.num_layers


def test_i2v_folder_carries_the_t2v_vae_and_text_encoder():
    """The I2V transformer was fine-tuned on the T2V model's VAE latents and T5 embeddings: its
    copies of those parts (kept so the folder stands alone, see its MODEL_CARD) must not drift."""
    i2v = BUNDLED.with_name("tiny-cogvideox-i2v")
    for part in ("vae", "text_encoder", "tokenizer", "scheduler"):
        files = sorted(p.relative_to(BUNDLED) for p in (BUNDLED / part).rglob("*") if p.is_file())
        assert files and files == sorted(p.relative_to(i2v) for p in (i2v / part).rglob("*") if p.is_file())
        for f in files:
            assert (BUNDLED / f).read_bytes() == (i2v / f).read_bytes(), f
