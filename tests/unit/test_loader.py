"""The loader on tiny random folders shaped like CogVideoX-2B, 5B, 5B-I2V and 1.5."""
import json
import shutil

import pytest
import torch

from vidinv import errors
from vidinv.models import cogvideox


def test_layouts_read_from_config(tiny_folders):
    m2 = cogvideox.load(tiny_folders["2b"])
    assert not m2.tcfg["use_rotary_positional_embeddings"] and m2.scheduler_config["snr_shift_scale"] == 3.0
    assert not m2.is_i2v and m2.latent_channels == 8 and m2.max_text_length == 12
    m5 = cogvideox.load(tiny_folders["5b"])
    assert m5.tcfg["use_rotary_positional_embeddings"] and m5.scheduler_config["snr_shift_scale"] == 1.0
    i2v = cogvideox.load(tiny_folders["5b-i2v"])
    assert i2v.is_i2v and i2v.latent_channels == 6 and i2v.transformer.config.in_channels == 12
    assert i2v.required_size == i2v.native_size == (48, 48)
    m15 = cogvideox.load(tiny_folders["1.5"])
    assert m15.patch_size_t == 2 and m15.size_multiple == 16
    assert len({m.fingerprint for m in (m2, m5, i2v, m15)}) == 4


@pytest.mark.parametrize("dtype,torch_dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16),
                                               ("fp16", torch.float16)])
def test_precision(tiny_folders, dtype, torch_dtype):
    m = cogvideox.load(tiny_folders["5b"], dtype)
    assert m.dtype == torch_dtype
    assert next(m.transformer.parameters()).dtype == torch_dtype
    assert next(m.vae.parameters()).dtype == torch_dtype


def test_folder_discovery(tiny_folders, tmp_path):
    root = tmp_path / "CogVideo"
    root.mkdir()
    shutil.copytree(tiny_folders["2b"], root / "CogVideoX-2b")
    (root / "not-a-model").mkdir()
    (root / "flux").mkdir()
    (root / "flux" / "transformer").mkdir()
    (root / "flux" / "transformer" / "config.json").write_text(json.dumps({"_class_name": "FluxTransformer2DModel"}))
    found = cogvideox.find_model_folders([root, tmp_path / "missing"])
    assert list(found) == ["CogVideoX-2b"]


def test_incomplete_folder_says_what_is_missing(tiny_folders, tmp_path):
    broken = tmp_path / "half"
    shutil.copytree(tiny_folders["5b"], broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(errors.InputError, match="missing vae"):
        cogvideox.load(broken)
    with pytest.raises(errors.InputError, match="does not exist"):
        cogvideox.load(tmp_path / "nowhere")


def test_text_padding_and_truncation(tiny_folders):
    m = cogvideox.load(tiny_folders["5b"])
    c = cogvideox.encode_text(m, "a red circle moving right")
    assert c.embeds.shape == (1, 12, 24) and c.negative_embeds.shape == (1, 12, 24) and not c.truncated
    long = " ".join(["red circle"] * 20)
    c = cogvideox.encode_text(m, long)
    assert c.truncated and "circle" in c.truncated[0]
    batch = cogvideox.encode_text(m, ["a red circle", "a blue square"])
    assert batch.embeds.shape[0] == 2 and batch.negative_embeds.shape[0] == 1


def test_vae_round_trip_shapes(tiny_folders):
    m = cogvideox.load(tiny_folders["5b"])
    frames = torch.rand(9, 32, 48, 3)
    z = cogvideox.encode_video(m, frames)
    assert z.shape == (1, 3, 8, 4, 6) and z.dtype == torch.float32
    out = cogvideox.decode_video(m, z)
    assert out.shape == (9, 32, 48, 3) and 0 <= out.min() and out.max() <= 1


def test_i2v_image_latents_and_1_5_padding(tiny_folders):
    i2v = cogvideox.load(tiny_folders["5b-i2v"])
    frames = torch.rand(9, 48, 48, 3)
    img = cogvideox.encode_image_latents(i2v, frames, 3)
    assert img.shape == (1, 3, 6, 6, 6) and img[:, 1:].abs().sum() == 0
    m15 = cogvideox.load(tiny_folders["1.5"])
    z = cogvideox.encode_video(m15, torch.rand(9, 32, 32, 3))
    padded, pad = cogvideox.pad_latent_frames(m15, z)
    assert z.shape[1] == 3 and pad == 1 and padded.shape[1] == 4 and torch.equal(padded[:, 0], padded[:, 1])


def test_i2v_without_image_latents_is_refused(tiny_folders):
    from vidinv import pipeline
    i2v = cogvideox.load(tiny_folders["5b-i2v"])
    cond = cogvideox.encode_text(i2v, "a red circle")
    with pytest.raises(errors.InputError, match="image-to-video"):
        pipeline.invert(i2v, cond, torch.randn(1, 2, 6, 6, 6), 4)


def test_pipeline_loads_tiny_folders(tiny_folders):
    from diffusers import CogVideoXImageToVideoPipeline, CogVideoXPipeline
    assert CogVideoXPipeline.from_pretrained(tiny_folders["2b"]).transformer is not None
    assert CogVideoXImageToVideoPipeline.from_pretrained(tiny_folders["5b-i2v"]).transformer is not None
