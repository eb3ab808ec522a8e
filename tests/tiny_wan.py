"""A tiny random-weight Wan 2.1 text-to-video folder in diffusers format.

Same components and layout as Wan-AI/Wan2.1-T2V-1.3B-Diffusers (WanTransformer3DModel with 3-D
RoPE, AutoencoderKLWan with per-channel latent statistics, a UMT5 encoder, a tokenizer, a flow
scheduler). Sizes are deliberately small and unlike the real model's and the bundled one's, so
nothing can lean on their numbers: 12 latent channels, 2x spatial and 2x temporal compression,
head width 12, text width 20, three blocks, and a FlowMatchEulerDiscreteScheduler config with
``shift`` 5 (the bundled model ships Wan's UniPC config with ``flow_shift``).

With ``i2v=True`` it is laid out as Wan-AI/Wan2.1-I2V-14B-480P-Diffusers instead: the transformer takes
the noisy latent, the first-frame mask (one channel per frame of the VAE's temporal factor) and the
first-frame condition latent on channels (12 + 2 + 12), CLIP image tokens through ``image_dim`` /
``added_kv_proj_dim``, and the folder holds a tiny CLIP vision encoder (17 tokens of width 16) with
its image processor (32 x 32 crops).

Wan 2.2 layouts: ``boundary_ratio=r`` adds a second expert ``transformer_2`` with other random
weights (so a swapped expert changes every output) and writes ``boundary_ratio`` in model_index.json,
as Wan-AI/Wan2.2-T2V-A14B-Diffusers (with ``i2v=True``: Wan2.2-I2V-A14B-Diffusers, which has no CLIP
encoder: channel conditioning only, ``image_dim`` null). ``ti2v=True`` is laid out as
Wan-AI/Wan2.2-TI2V-5B-Diffusers: a Wan 2.2 VAE (residual blocks, ``patch_size`` 2: 8x spatial
compression here, 8 latent channels), a transformer that takes the latent alone, and
``expand_timesteps`` in model_index.json.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

SCHEDULER = dict(num_train_timesteps=1000, shift=5.0)
LATENT_CHANNELS = 12


TEMPORAL = 2  # the tiny VAE's temporal compression (the I2V mask's channel count)
CLIP_WIDTH = 16


TI2V_CHANNELS = 8  # the tiny Wan 2.2 VAE's latent channels
TI2V_SPATIAL = 8  # its spatial compression: 4 (two downsamplings) x 2 (its patch size)


def tiny_transformer(channels: int, in_channels: int, clip: bool):
    from diffusers import WanTransformer3DModel
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=in_channels,
        out_channels=channels, text_dim=20, freq_dim=16, ffn_dim=32, num_layers=3, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=64, image_dim=CLIP_WIDTH if clip else None,
        added_kv_proj_dim=24 if clip else None)
    with torch.no_grad():  # random init leaves the output projection tiny; make the model matter
        for p in transformer.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return transformer


def write_tiny_wan(folder, seed: int = 0, dtype=torch.float32, i2v: bool = False, boundary_ratio: float | None = None,
                   ti2v: bool = False) -> Path:
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline, WanPipeline
    from transformers import UMT5Config, UMT5EncoderModel

    from vidinv.fixture import build_tokenizer

    assert not (ti2v and (i2v or boundary_ratio is not None)), "TI2V-5B is a single text/image-to-video transformer"
    torch.manual_seed(seed)
    channels = TI2V_CHANNELS if ti2v else LATENT_CHANNELS
    clip = i2v and boundary_ratio is None  # Wan 2.1 I2V has CLIP tokens, Wan 2.2 I2V A14B has none
    in_channels = 2 * channels + TEMPORAL if i2v else channels
    transformer = tiny_transformer(channels, in_channels, clip)
    transformer_2 = None if boundary_ratio is None else tiny_transformer(channels, in_channels, clip)
    g = torch.Generator().manual_seed(seed + 1)
    stats = dict(latents_mean=(torch.randn(channels, generator=g) * 0.1).tolist(),
                 latents_std=(0.5 + torch.rand(channels, generator=g)).tolist())
    if ti2v:
        vae = AutoencoderKLWan(base_dim=8, z_dim=channels, dim_mult=[1, 2, 2], num_res_blocks=1, attn_scales=[],
                               temperal_downsample=[False, True], is_residual=True, patch_size=2, in_channels=12,
                               out_channels=12, scale_factor_spatial=TI2V_SPATIAL, scale_factor_temporal=TEMPORAL,
                               **stats)
    else:
        vae = AutoencoderKLWan(base_dim=8, z_dim=channels, dim_mult=[1, 2], num_res_blocks=1, attn_scales=[],
                               temperal_downsample=[True], scale_factor_spatial=2, scale_factor_temporal=TEMPORAL,
                               **stats)
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=32, d_model=20, d_kv=10, d_ff=24, num_layers=1, num_heads=2, relative_attention_num_buckets=8,
        relative_attention_max_distance=16, dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0, is_encoder_decoder=False))
    parts = dict(tokenizer=build_tokenizer(), text_encoder=text_encoder, vae=vae, transformer=transformer,
                 scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER))
    experts = {} if transformer_2 is None else dict(transformer_2=transformer_2, boundary_ratio=boundary_ratio)
    if i2v and not clip:
        pipe = WanImageToVideoPipeline(image_encoder=None, image_processor=None, **parts, **experts)
    elif i2v:
        from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel
        image_encoder = CLIPVisionModel(CLIPVisionConfig(
            hidden_size=CLIP_WIDTH, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2, image_size=32,
            patch_size=8))
        processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        pipe = WanImageToVideoPipeline(image_encoder=image_encoder, image_processor=processor, **parts)
    else:
        pipe = WanPipeline(**parts, **experts, expand_timesteps=ti2v)
    pipe.to(dtype)
    folder = Path(folder)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def to64(model):
    """A loaded Wan model (every expert, VAE and text encoder) in float64, for tests that compare to 1e-10."""
    for m in (*model.experts, model.vae, model.text_encoder):
        m.double()
    return dataclasses.replace(model, dtype=torch.float64)
