"""A tiny random-weight Stable Video Diffusion folder in diffusers format.

Same components and layout as stabilityai/stable-video-diffusion-img2vid(-xt): a spatio-temporal
UNet (image latents on channels, CLIP image embeddings as the only cross-attention token, three
added time ids), the temporal-decoder VAE, a CLIP vision tower with projection, its image
processor, and the Euler scheduler configured as SVD's (Karras sigmas 0.002..700, continuous
time, v-prediction). Sizes are deliberately small and unlike the real model's, so nothing can
lean on SVD's numbers (2x spatial compression, 16-wide image embeddings, 8-wide time ids).
"""
from __future__ import annotations

from pathlib import Path

import torch

# scheduler/scheduler_config.json of stabilityai/stable-video-diffusion-img2vid-xt
SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 prediction_type="v_prediction", interpolation_type="linear", use_karras_sigmas=True,
                 sigma_min=0.002, sigma_max=700.0, timestep_spacing="leading", timestep_type="continuous",
                 steps_offset=1)


def write_tiny_svd(folder, seed: int = 0, dtype=torch.float32) -> Path:
    from diffusers import (AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, StableVideoDiffusionPipeline,
                           UNetSpatioTemporalConditionModel)
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    embed = 16  # CLIP projection = the UNet's cross-attention width
    unet = UNetSpatioTemporalConditionModel(
        sample_size=8, in_channels=8, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal"),
        up_block_types=("CrossAttnUpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        num_attention_heads=(2, 4), cross_attention_dim=embed, addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=24, num_frames=4)
    with torch.no_grad():  # random init leaves the output projections tiny; make the model matter
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    vae = AutoencoderKLTemporalDecoder(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                                       layers_per_block=1, latent_channels=4, sample_size=16)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=24, intermediate_size=32, projection_dim=embed, num_hidden_layers=1, num_attention_heads=2,
        image_size=224, patch_size=56))  # the pipeline resizes to 224 whatever the config says
    processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    pipe = StableVideoDiffusionPipeline(vae=vae, image_encoder=image_encoder, unet=unet,
                                        scheduler=EulerDiscreteScheduler(**SCHEDULER), feature_extractor=processor)
    pipe.to(dtype)
    folder = Path(folder)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
