"""FlowEdit: inversion-free editing of flow models (`vidinv.flowedit`), one node over the pack's flow
family (Wan). It reads its inputs into the shared values and runs `pipeline.flow_edit`."""
from __future__ import annotations

from ..vidinv import errors, pipeline
from ..vidinv.family import Guidance
from . import host
from .common import CATEGORY, CONDITIONING, MODEL, latent_parts, latent_value
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
        "trajectories) or want the source's attention to hold the layout. With the source prompt and guidance on "
        "both sides and n_min 0 it returns the source exactly.")
    CATEGORY = f"{CATEGORY}/sampling"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The edited clean latent (VAE Decode Video shows it).",)
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
        }}

    def edit(self, model, source_conditioning, target_conditioning, latent, steps, n_max, n_min, n_avg,
             source_guidance, target_guidance, seed):
        node = "FlowEdit"
        samples, image_latents, pad = latent_parts(latent, model, node)
        if (latent.get("vinv") or {}).get("trajectory_steps") is not None:
            raise errors.InputError(f"{node}: the latent is an inversion's inverted noise; FlowEdit starts from the "
                                    "clean source latent", "Connect VAE Encode Video's latent (FlowEdit needs no "
                                    "inversion), or sample the noise with Flow Sample / Guided Sample.")
        progress = host.Progress(min(n_max, steps), latent_preview(model))
        out = pipeline.flow_edit(model, source_conditioning, target_conditioning, samples, steps, n_max, n_min, n_avg,
                                 Guidance(source_guidance), Guidance(target_guidance), seed, image_latents, progress)
        host.free_memory()
        return (latent_value(out, model, image_latents, pad),)
