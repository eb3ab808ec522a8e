"""FlowEdit: inversion-free editing of flow models (`vidinv.flowedit`), one node over the pack's flow
family (Wan). It reads its inputs into the shared values and runs `pipeline.flow_edit`."""
from __future__ import annotations

import torch

from ..vidinv import editmask, errors, families, pipeline
from ..vidinv.family import Guidance
from . import host
from .common import CATEGORY, CONDITIONING, MASK_GROW, MASK_LEVEL, MODEL, latent_parts, latent_value
from .preview import latent_preview

MAX_STEPS = 1000


class FlowEdit:
    DESCRIPTION = (
        "FlowEdit (Kulikov et al., ICCV 2025): edits a video with a flow model (Wan) without inverting it. From the "
        "source latent it integrates the difference of the target and source prompts' velocities, each taken on a "
        "freshly noised copy of the source, over the paper's steps n_max down to n_min + 1, then samples the last "
        "n_min steps with the target prompt. Pick it when you have no trajectory and want one quick edit (2 guided "
        "model calls per step in the window, nothing stored); pick Flow Invert + Reference Attention + Guided Sample "
        "when you edit one video several times, need the exact trajectory (reconstruction, masks from it, saved "
        "trajectories) or want the source's attention to hold the layout (on the pack's tiny Wans that chain kept "
        "the object's shape and path better, at more model calls: BENCHMARKS section 6). With the source prompt "
        "and guidance on both sides and n_min 0 it returns the source exactly. Optionally masks the edit (a MASK, "
        "or the prediction difference between the prompts): outside the mask the source is kept. On a Wan "
        "image-to-video model an edited first_frame conditions the target velocity (the source keeps its own). For "
        "a MODEL from "
        "ComfyUI's own loaders use FlowEdit (native).")
    CATEGORY = f"{CATEGORY}/sampling"
    RETURN_TYPES = ("LATENT", "IMAGE")
    RETURN_NAMES = ("latent", "edit_mask")
    OUTPUT_TOOLTIPS = ("The edited clean latent (VAE Decode Video shows it).",
                       "Where the edit was allowed to change the video (white), frame by frame at the video's size; "
                       "all white without a mask.")
    FUNCTION = "edit"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "A flow-matching model (Load Wan Model); Wan 2.2's two experts are "
                                         "switched by timestep as in Flow Sample."}),
            "source_conditioning": (CONDITIONING, {"tooltip": "Describes the source video (Encode Text (Wan))."}),
            "target_conditioning": (CONDITIONING, {"tooltip": "Describes the edited video."}),
            "latent": ("LATENT", {"tooltip": "The clean source latent from VAE Encode Video (same model), not "
                                             "inverted noise."}),
            "steps": ("INT", {"default": 50, "min": 1, "max": MAX_STEPS,
                              "tooltip": "Steps of the model's shifted sigma grid the window is counted on (the "
                                         "paper's T)."}),
            "n_max": ("INT", {"default": 33, "min": 1, "max": MAX_STEPS,
                              "tooltip": "FlowEdit starts n_max steps before the clean end (the paper's n_max; "
                                         "= steps starts at pure noise). More: stronger edits, less of the source "
                                         "kept. 33 of 50 is the paper's SD3 setting and was FlowEdit's best on the "
                                         "bundled tiny Wan (BENCHMARKS section 6). Model calls: 2 guided calls per "
                                         "step in the window."}),
            "n_min": ("INT", {"default": 0, "min": 0, "max": MAX_STEPS - 1,
                              "tooltip": "The last n_min steps are plain sampling of the target prompt from the "
                                         "edit, re-noised (the paper's SDEdit-like tail); 0 = none (then the source "
                                         "prompt on both sides returns the source exactly)."}),
            "n_avg": ("INT", {"default": 1, "min": 1, "max": 16,
                              "tooltip": "Fresh noises averaged per step (the paper's n_avg; each costs 2 guided "
                                         "calls)."}),
            "source_guidance": ("FLOAT", {"default": 3.5, "min": 1.0, "max": 30.0, "step": 0.1,
                                          "tooltip": "Classifier-free guidance of the source velocity (1 = off)."}),
            "target_guidance": ("FLOAT", {"default": 13.5, "min": 1.0, "max": 30.0, "step": 0.1,
                                          "tooltip": "Classifier-free guidance of the target velocity (1 = off); "
                                                     "the paper uses more than the source's (3.5 / 13.5 for SD3: "
                                                     "these defaults, the best tried on the bundled tiny Wan)."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**63 - 1,
                             "tooltip": "Seed of the fresh noise drawn at every step."}),
        }, "optional": {
            "mask_threshold": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip":
                               "Above 0, mask the edit by how much the model's prediction changes between the two "
                               "prompts on the source noised to the cleanest 40 % of the levels (DiffEdit; 2 one-row "
                               "model calls per ten steps, at most 10, before editing), cut per frame (mask_cut: with 'otsu' any value above 0 "
                               "switches it on; with 'quantile' the quantile kept). Outside the mask every step keeps "
                               "the source. 0 = no mask."}),
            "mask_cut": (list(editmask.CUTS), {"default": "otsu", "tooltip":
                         "'otsu' keeps the part of each frame's map that stands out (Otsu's level); 'quantile' keeps "
                         "the share mask_threshold says."}),
            "mask": ("MASK", {"tooltip": "The region the edit may change (white = 1), instead of the map; one frame "
                                         "for the whole video or one per frame. Overrides mask_threshold."}),
            "mask_grow": MASK_GROW,
            "mask_level": MASK_LEVEL,
            "first_frame": ("IMAGE", {"tooltip": "Image-to-video models only: an edited first frame for the target "
                                                 "velocity (the source velocity keeps the source's first frame, which "
                                                 "rides with the latent); resized and cropped to the latent's size. "
                                                 "Not connected: the source's frame on both sides."}),
        }}

    def edit(self, model, source_conditioning, target_conditioning, latent, steps, n_max, n_min, n_avg,
             source_guidance, target_guidance, seed, mask_threshold=0.0, mask_cut="otsu", mask=None, mask_grow=0,
             mask_level=1.0, first_frame=None):
        node = "FlowEdit"
        samples, image_latents, pad = latent_parts(latent, model, node)
        if (latent.get("vinv") or {}).get("trajectory_steps") is not None:
            raise errors.InputError(f"{node}: the latent is an inversion's inverted noise; FlowEdit starts from the "
                                    "clean source latent", "Connect VAE Encode Video's latent (FlowEdit needs no "
                                    "inversion), or sample the noise with Flow Sample / Guided Sample.")
        target_image = families.of(model).first_frame_latents(model, samples, first_frame)
        progress = host.Progress(min(n_max, steps), latent_preview(model))
        edit_mask = None if mask is None and not mask_threshold else \
            editmask.EditMask(mask_threshold, mask, "difference", mask_cut, mask_grow, mask_level)
        out = pipeline.flow_edit(model, source_conditioning, target_conditioning, samples, steps, n_max, n_min, n_avg,
                                 Guidance(source_guidance), Guidance(target_guidance), seed, image_latents, progress,
                                 edit_mask, target_image)
        latent_mask = torch.ones(out.shape[0], out.shape[1], 1, *out.shape[-2:]) if edit_mask is None else \
            edit_mask.latent
        frames = editmask.to_pixels(latent_mask[:, pad:], model.spatial_factor, model.temporal_factor)
        host.free_memory()
        return (latent_value(out, model, image_latents, pad), frames)
