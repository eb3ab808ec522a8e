"""CogVideoX's 3-D rotary position table, built exactly as the diffusers pipelines build it."""
from __future__ import annotations

import torch


def rotary_table(transformer_config, latent_frames: int, latent_height: int, latent_width: int,
                 device=None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(cos, sin) for the image tokens of a latent of this size, or None for models without RoPE
    (CogVideoX-2B adds absolute position embeddings at patch embedding instead).

    CogVideoX 1.0 (no temporal patching) resizes the grid into the training grid and takes
    linspace positions; 1.5 (``patch_size_t``) slices a fixed-size table.
    """
    cfg = transformer_config
    if not cfg.get("use_rotary_positional_embeddings", False):
        return None
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

    p, p_t = cfg["patch_size"], cfg.get("patch_size_t")
    grid_h, grid_w = latent_height // p, latent_width // p
    base_h, base_w = cfg["sample_height"] // p, cfg["sample_width"] // p
    if p_t is None:
        crops = get_resize_crop_region_for_grid((grid_h, grid_w), base_w, base_h)
        return get_3d_rotary_pos_embed(cfg["attention_head_dim"], crops, (grid_h, grid_w), latent_frames,
                                       device=device)
    return get_3d_rotary_pos_embed(cfg["attention_head_dim"], None, (grid_h, grid_w),
                                   (latent_frames + p_t - 1) // p_t, grid_type="slice",
                                   max_size=(base_h, base_w), device=device)
