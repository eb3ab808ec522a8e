"""VAE encode / decode of IMAGE frames, with the frame-count and size policies."""
from __future__ import annotations

import logging

from ..vidinv import families, video
from . import host
from .common import CATEGORY, MODEL, latent_parts, latent_value

log = logging.getLogger("vidinv")
TILING = ("auto", "on", "off")
MAX_SIZE = 4096  # pixels a side: above every video model's size (Wan 1280, CogVideoX 1.5 1360); memory is checked too


class VAEEncodeVideo:
    DESCRIPTION = ("Encodes video frames into the model's latent space ([B, F, C, H, W], scaled). Frames are "
                   "fitted to 4k+1 and to the model's size grid first; the fitted frames are returned too.")
    CATEGORY = f"{CATEGORY}/vae"
    RETURN_TYPES = ("LATENT", "IMAGE")
    RETURN_NAMES = ("latent", "frames")
    OUTPUT_TOOLTIPS = ("The video latent; for image-to-video models the first frame's conditioning rides along "
                       "(CogVideoX I2V: its latent; Wan I2V: mask, latent and CLIP tokens).",
                       "The frames actually encoded (after trimming and resizing), to compare results with.")
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "The model whose VAE encodes."}),
            "images": ("IMAGE", {"tooltip": "Video frames [N, H, W, 3], e.g. from Get Video Components."}),
            "frames": (list(video.FRAME_POLICIES), {
                "default": video.FRAME_POLICIES[0],
                "tooltip": "CogVideoX needs 4k+1 frames: trim to the largest such count, or stop with an error. "
                           "Stable Video Diffusion takes any frame count (all are used)."}),
            "size": (list(video.SIZE_POLICIES), {
                "default": video.SIZE_POLICIES[0],
                "tooltip": "How to reach width x height: scale and centre-crop, stretch, or stop with an error."}),
            "width": ("INT", {"default": 0, "min": 0, "max": MAX_SIZE, "step": 8,
                              "tooltip": "Target width in pixels; 0 = the model's native width (Stable Video "
                                         "Diffusion: the video's own width). Must be a multiple of 8 x patch "
                                         "size (16 for CogVideoX; 8 for SVD)."}),
            "height": ("INT", {"default": 0, "min": 0, "max": MAX_SIZE, "step": 8,
                               "tooltip": "Target height in pixels; 0 = the model's native height (Stable "
                                          "Video Diffusion: the video's own height)."}),
            "tiling": (list(TILING), {"default": "auto",
                                      "tooltip": "VAE tiling saves memory on large frames; 'auto' tiles frames "
                                                 "larger than the VAE's tile size (CogVideoX; SVD encodes frame "
                                                 "by frame)."}),
        }}

    def encode(self, model, images, frames, size, width, height, tiling):
        images = video.check_images(images)
        z, image_latents, pad, clip, note = families.of(model).encode_frames(model, images, frames, size, width,
                                                                             height, tiling)
        log.info("VAE encode: %s", note)
        host.free_memory()
        return {"ui": {"text": [note]}, "result": (latent_value(z, model, image_latents, pad), clip)}


class VAEDecodeVideo:
    DESCRIPTION = "Decodes a video latent into IMAGE frames (0..1), one video at a time."
    CATEGORY = f"{CATEGORY}/vae"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("Frames [N, H, W, 3]; several videos in a batch come one after the other.",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "The model whose VAE decodes (the one that made the latent)."}),
            "latent": ("LATENT", {"tooltip": "A video latent [B, F, C, H, W] from this pack's nodes."}),
            "tiling": (list(TILING), {"default": "auto", "tooltip": "VAE tiling saves memory on large frames "
                                                                    "(CogVideoX; SVD decodes in chunks of frames)."}),
        }}

    def decode(self, model, latent, tiling):
        samples, _, pad = latent_parts(latent, model, "VAE Decode Video")
        frames = families.of(model).decode(model, samples[:, pad:], tiling)
        host.free_memory()
        return (frames,)
