"""Tiny random-weight CogVideoX folders in diffusers format, shaped like the real variants.

Used to prove the loader and the math on every layout without downloading anything:
2B (absolute positions, snr_shift_scale 3.0), 5B (RoPE, shift 1.0), 5B-I2V (image latents on
channels), 1.5 (temporal patching). Sizes deliberately differ from the bundled model
(channels, text length, latent size) so nothing can lean on its numbers.
"""
from __future__ import annotations

from pathlib import Path

import torch

from vidinv.fixture import build_tokenizer

SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 rescale_betas_zero_snr=True, timestep_spacing="trailing", set_alpha_to_one=True,
                 prediction_type="v_prediction", clip_sample=False, steps_offset=0)

VARIANTS = {
    # name: (transformer overrides, scheduler overrides, latent channels)
    "2b": (dict(use_rotary_positional_embeddings=False), dict(snr_shift_scale=3.0), 8),
    "5b": (dict(use_rotary_positional_embeddings=True), dict(snr_shift_scale=1.0), 8),
    "5b-i2v": (dict(use_rotary_positional_embeddings=True, in_channels=12, use_learned_positional_embeddings=True),
               dict(snr_shift_scale=1.0), 6),
    "1.5": (dict(use_rotary_positional_embeddings=True, patch_size_t=2), dict(snr_shift_scale=1.0), 4),
}


def write_tiny_model(folder, variant: str = "5b", seed: int = 0, text_len: int = 12, latent_hw: int = 6,
                     dtype=torch.float32) -> Path:
    from diffusers import (AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline,
                           CogVideoXTransformer3DModel)
    from transformers import T5Config, T5EncoderModel

    tr_over, sch_over, channels = VARIANTS[variant]
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    text = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=24, d_kv=8, d_ff=32, num_layers=1,
                                   num_heads=2, relative_attention_num_buckets=4, dropout_rate=0.0,
                                   feed_forward_proj="gated-gelu", is_encoder_decoder=False))
    vae = AutoencoderKLCogVideoX(block_out_channels=[8, 8, 8, 8], layers_per_block=1, latent_channels=channels,
                                 norm_num_groups=4, temporal_compression_ratio=4, sample_height=latent_hw * 8,
                                 sample_width=latent_hw * 8)
    tr_cfg = dict(num_attention_heads=2, attention_head_dim=16, in_channels=channels, out_channels=channels,
                  time_embed_dim=32, text_embed_dim=24, num_layers=2, sample_width=latent_hw,
                  sample_height=latent_hw, sample_frames=9, patch_size=2, max_text_seq_length=text_len)
    tr_cfg.update(tr_over)
    if variant == "5b-i2v":
        tr_cfg["in_channels"] = 2 * channels
    transformer = CogVideoXTransformer3DModel(**tr_cfg)
    with torch.no_grad():  # random init leaves the output projection tiny; make the model matter
        for p in transformer.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    pipe = CogVideoXPipeline(tokenizer=tokenizer, text_encoder=text, vae=vae, transformer=transformer,
                             scheduler=CogVideoXDDIMScheduler(**SCHEDULER, **sch_over))
    pipe.to(dtype)
    folder = Path(folder)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
