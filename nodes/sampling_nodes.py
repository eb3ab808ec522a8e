"""Exact DDIM inversion, plain DDIM sampling, reference attention and guided sampling."""
from __future__ import annotations

import dataclasses

from ..vidinv import attention, errors, inversion, nulltext, svd_inversion, video
from ..vidinv.models import cogvideox
from ..vidinv.trajectory import DTYPES
from . import host, svd_nodes
from .common import (CATEGORY, CONDITIONING, ITERATIONS, MODEL, TOLERANCE, TRAJECTORY, check_steps, family,
                     latent_parts, latent_value, require_cogvideox)
from .preview import latent_preview

STEPS = ("INT", {"default": 50, "min": 1, "max": 1000,
                 "tooltip": "DDIM steps on the model's own grid (trailing spacing for CogVideoX)."})
GUIDANCE = ("FLOAT", {"default": 1.0, "min": 1.0, "max": 30.0, "step": 0.1,
                      "tooltip": "Classifier-free guidance scale; 1 = off. Inversion applies the same guidance "
                                 "as sampling, so the round trip stays exact."})
EDIT_GUIDANCE = ("FLOAT", {**GUIDANCE[1], "default": 5.0,
                           "tooltip": "Classifier-free guidance of the edit (5 was best on the edit benchmark); with "
                                      "the source prompt, 1 reconstructs exactly (so does any guidance with negative 'source prompt')."})
DYNAMIC = ("BOOLEAN", {"default": False,
                       "tooltip": "CogVideoX's dynamic CFG (the diffusers pipeline's formula), a function of the "
                                  "timestep: identical in both directions."})
NEGATIVE = (list(nulltext.NEGATIVE_MODES), {
    "default": "conditioning",
    "tooltip": "The unconditional branch of CFG: the conditioning's own negative prompt; the trajectory's source "
               "prompt (negative-prompt inversion: CFG reconstruction without optimisation); or the trajectory's "
               "null-text embeddings (run Null-Text Inversion first, with the same guidance)."})


SVD_SAMPLING = ("For Stable Video Diffusion use Euler Invert (SVD, exact) and Euler Sample (SVD), or Reference "
                "Attention + Guided Sample.")


def source_image_latents(model, latent: dict):
    samples, image_latents, _ = latent_parts(latent)
    if model.is_i2v and image_latents is None:
        raise errors.InputError(f"{model.name} is an image-to-video model, but the latent carries no image "
                                "conditioning", "Encode the video with this pack's VAE Encode node and this model.")
    return samples, image_latents


class DDIMInvert:
    DESCRIPTION = ("Exact DDIM inversion: solves each inverse step by fixed-point iteration (Anderson-"
                   "accelerated) so that sampling the result returns the input. Emits the whole trajectory.")
    CATEGORY = f"{CATEGORY}/sampling"
    RETURN_TYPES = (TRAJECTORY, "LATENT")
    RETURN_NAMES = ("trajectory", "noise")
    OUTPUT_TOOLTIPS = ("Every latent from clean to noise, with the grid, conditioning and convergence.",
                       "The inverted noise (the trajectory's last latent).")
    FUNCTION = "invert"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "The model to invert with (sample with the same one)."}),
            "conditioning": (CONDITIONING, {"tooltip": "Describe the source video; guided sampling uses it as "
                                                       "the reference conditioning."}),
            "latent": ("LATENT", {"tooltip": "The source video latent from VAE Encode."}),
            "steps": STEPS,
            "guidance": GUIDANCE,
            "dynamic_cfg": DYNAMIC,
            "iterations": ITERATIONS,
            "tolerance": TOLERANCE,
            "solver": (["anderson", "plain"], {"default": "anderson",
                                               "tooltip": "Anderson acceleration (safeguarded) converges where the "
                                                          "model is stiff (near the clean end); plain is textbook."}),
            "damping": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                  "tooltip": "Fraction of each step towards G(x); 1 = undamped. 0 = automatic: 1 "
                                             "without guidance, 0.5 with CFG (which makes undamped steps overshoot "
                                             "near the clean end)."}),
            "trajectory_dtype": (list(DTYPES), {"default": "fp32",
                                                "tooltip": "Storage dtype of the trajectory latents (fp16/bf16 "
                                                           "halve the memory; fp32 keeps the round trip exact)."}),
        }}

    def invert(self, model, conditioning, latent, steps, guidance, dynamic_cfg, iterations, tolerance, solver,
               damping, trajectory_dtype):
        require_cogvideox(model, "DDIM Invert", SVD_SAMPLING)
        samples, image_latents = source_image_latents(model, latent)
        progress = host.Progress(steps)
        traj = inversion.invert(model, conditioning, samples, steps, guidance, dynamic_cfg, iterations, tolerance,
                                memory=5 if solver == "anderson" else 0, damping=damping or None,
                                dtype=trajectory_dtype,
                                image_latents=image_latents, hooks=progress)
        _, _, pad = latent_parts(latent)
        traj.extra["pad_frames"] = pad
        noise = latent_value(traj.noise, model, image_latents, pad, traj.steps)
        host.free_memory()
        return {"ui": {"vinv_trajectory": [traj.summary()]}, "result": (traj, noise)}


class DDIMSample:
    DESCRIPTION = ("Plain deterministic DDIM sampling (eta = 0) from a latent, e.g. the inverted noise: the "
                   "round-trip reference. With a trajectory connected it can use its null-text embeddings or "
                   "the source prompt as the negative (negative-prompt inversion).")
    CATEGORY = f"{CATEGORY}/sampling"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The sampled clean latent.",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "The model to sample with."}),
            "conditioning": (CONDITIONING, {"tooltip": "The prompt to sample (the source prompt reconstructs)."}),
            "latent": ("LATENT", {"tooltip": "Starting noise, e.g. DDIM Invert's noise output."}),
            "steps": STEPS,
            "guidance": GUIDANCE,
            "dynamic_cfg": DYNAMIC,
            "negative": NEGATIVE,
        }, "optional": {
            "trajectory": (TRAJECTORY, {"tooltip": "The inversion's trajectory, for the 'source prompt' and "
                                                   "'null-text' negatives."}),
        }}

    def sample(self, model, conditioning, latent, steps, guidance, dynamic_cfg, negative, trajectory=None):
        require_cogvideox(model, "DDIM Sample", SVD_SAMPLING)
        samples, image_latents = source_image_latents(model, latent)
        if trajectory is not None:
            trajectory.check_model(model)
        check_steps("DDIM Sample", steps, latent, trajectory)
        neg = nulltext.negative_for(negative, trajectory)
        progress = host.Progress(steps, latent_preview(model))
        out = inversion.sample(model, conditioning, samples, steps, guidance, dynamic_cfg, image_latents, neg,
                               hooks=progress)
        _, _, pad = latent_parts(latent)
        host.free_memory()
        return (latent_value(out, model, image_latents, pad),)


class ReferenceAttention:
    DESCRIPTION = ("Patches a copy of the model so that guided sampling attends to the trajectory's keys and "
                   "values at each step (RoPE applied per token group). The input model is not changed.")
    CATEGORY = f"{CATEGORY}/sampling"
    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("A copy of the model carrying the trajectory and options; only Guided Sample uses them.",)
    FUNCTION = "patch"

    @classmethod
    def INPUT_TYPES(cls):
        d = attention.ReferenceOptions()
        return {"required": {
            "model": (MODEL, {"tooltip": "The model that made the trajectory."}),
            "trajectory": (TRAJECTORY, {"tooltip": "From DDIM Invert or Load Trajectory."}),
            "blocks": ("STRING", {"default": d.blocks,
                                  "tooltip": "Transformer blocks to inject: 'all', '0-7', '0,2,4', '10-'."}),
            "start": ("FLOAT", {"default": d.start, "min": 0.0, "max": 1.0, "step": 0.05,
                                "tooltip": "Injection starts at this fraction of the steps (0 = first step)."}),
            "end": ("FLOAT", {"default": d.end, "min": 0.0, "max": 1.0, "step": 0.05,
                              "tooltip": "Injection stops at this fraction of the steps (1 = through the last)."}),
            "weight": ("FLOAT", {"default": d.weight, "min": 0.0, "max": 20.0, "step": 0.1,
                                 "tooltip": "Log-bias on the reference logits: 1 = plain concatenation, "
                                            "0 = off, more = stronger pull to the source."}),
            "reference_text": ("BOOLEAN", {"default": d.text,
                                           "tooltip": "Also attend to the reference's text tokens (the source "
                                                      "prompt). Off keeps the text's share of attention."}),
            "rows": (list(attention.ROWS), {"default": d.rows,
                                            "tooltip": "Inject into all CFG rows, or only the conditional one "
                                                       "(keeps CFG reconstruction exact)."}),
            "reference_conditioning": (list(attention.REFERENCE_TEXT), {
                "default": d.reference_text,
                "tooltip": "'source': reference pass with the inversion's prompt, once per step for all rows. "
                           "'edit': with the prompts being sampled, per CFG row (the published recipe). "
                           "Stable Video Diffusion: 'source' only."}),
        }, "optional": {
            "temporal": ("BOOLEAN", {"default": False,
                                     "tooltip": "Stable Video Diffusion only: also inject into the temporal "
                                                "self-attention paired with each chosen block (blocks count SVD's "
                                                "spatial transformer blocks). CogVideoX: leave off."}),
        }}

    def patch(self, model, trajectory, blocks, start, end, weight, reference_text, rows, reference_conditioning,
              temporal=False):
        opts = attention.ReferenceOptions(blocks, start, end, weight, reference_text, rows, reference_conditioning)
        if family(model) == "svd":
            opts = svd_inversion.reference_options(opts, temporal)
            opts.validate(model.unet)
            trajectory.check_model(model)
            trajectory.check_grid(model.scheduler_config)
        else:
            if temporal:
                raise errors.InputError("'temporal' applies to Stable Video Diffusion only (CogVideoX's attention "
                                        "is already spatio-temporal)", "Turn 'temporal' off for CogVideoX.")
            opts.validate(int(model.transformer.config.num_layers))
            trajectory.check_model(model)
        return (dataclasses.replace(model, reference=attention.ReferenceSpec(trajectory, opts)),)


class GuidedSample:
    DESCRIPTION = ("Samples the trajectory's grid with a new prompt while the patched attention keeps the source's "
                   "layout and motion. Starts from the inverted noise (or fresh noise, to compare).")
    CATEGORY = f"{CATEGORY}/sampling"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The edited (or reconstructed) clean latent.",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "A model from Reference Attention."}),
            "conditioning": (CONDITIONING, {"tooltip": "The edited prompt (the source prompt reconstructs)."}),
            "guidance": ("FLOAT", {**EDIT_GUIDANCE[1], "tooltip": EDIT_GUIDANCE[1]["tooltip"] + " Stable Video "
                         "Diffusion: the same scale on every frame (Guided Sample (SVD) has SVD's min/max)."}),
            "dynamic_cfg": DYNAMIC,
            "start": (["inverted", "fresh"], {"default": "inverted",
                                              "tooltip": "Start from the trajectory's inverted noise, or from "
                                                         "fresh noise (the published recipe)."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**63 - 1,
                             "tooltip": "Seed of the fresh noise (unused when starting from the inversion)."}),
            "negative": NEGATIVE,
        }, "optional": {
            "first_frame": ("IMAGE", {"tooltip": "Image-to-video models only: an edited first frame to condition "
                                                 "the edit on (the source's first frame is used otherwise)."}),
        }}

    def sample(self, model, conditioning, guidance, dynamic_cfg, start, seed, negative, first_frame=None):
        if family(model) == "svd":
            return self.sample_svd(model, conditioning, guidance, dynamic_cfg, start, seed, negative, first_frame)
        spec = model.reference
        if spec is None:
            raise errors.InputError("Guided Sample needs a model patched with a trajectory",
                                    "Connect the output of the Reference Attention node to its model input.")
        traj = spec.trajectory
        neg = nulltext.negative_for(negative, traj)
        image_latents = None
        if first_frame is not None:
            if not model.is_i2v:
                raise errors.InputError(f"{model.name} is a text-to-video model: it takes no first frame",
                                        "Disconnect first_frame, or load an image-to-video model (CogVideoX-5B-I2V).")
            first_frame = video.check_images(first_frame, "first_frame")
            h, w = (traj.latents.shape[-2] * model.spatial_factor, traj.latents.shape[-1] * model.spatial_factor)
            frame, _ = video.fit_size(first_frame[:1], h, w, model.size_multiple, "resize and crop",
                                      model.required_size)
            image_latents = cogvideox.encode_image_latents(model, frame, traj.latents.shape[2])
        progress = host.Progress(traj.steps, latent_preview(model))
        out = inversion.guided_sample(model, conditioning, guidance, dynamic_cfg, start, seed, neg, hooks=progress,
                                      image_latents=image_latents)
        opts = spec.options
        window = {"steps": traj.steps, "active": list(opts.active_steps(traj.steps)), "blocks": opts.blocks,
                  "weight": opts.weight}
        host.free_memory()
        return {"ui": {"vinv_guidance": [window]},
                "result": (latent_value(out, model, traj.image_latents, traj.extra.get("pad_frames", 0)),)}

    @staticmethod
    def sample_svd(model, conditioning, guidance, dynamic_cfg, start, seed, negative, first_frame):
        """Stable Video Diffusion: constant guidance on every frame; the CogVideoX-only options
        must stay at their neutral values."""
        if dynamic_cfg:
            raise errors.InputError("dynamic_cfg is CogVideoX's guidance schedule; it does not apply to Stable "
                                    "Video Diffusion", "Turn dynamic_cfg off, or use Guided Sample (SVD) for SVD's "
                                    "frame-wise min/max guidance.")
        if negative != "conditioning":
            raise errors.InputError(f"negative {negative!r} needs text embeddings; Stable Video Diffusion's "
                                    "unconditional branch is a zero image conditioning",
                                    "Set negative to 'conditioning' for SVD.")
        if first_frame is not None:
            raise errors.InputError("first_frame is for CogVideoX image-to-video models; Stable Video Diffusion "
                                    "takes its edited first frame as the conditioning",
                                    "Encode the edited frame with Encode First Frame (SVD), connect it to "
                                    "conditioning, and disconnect first_frame.")
        return svd_nodes.guided_sample(model, conditioning, guidance, guidance, start, seed)


class NullTextInversion:
    DESCRIPTION = ("Null-text inversion: keeps a guidance-1 trajectory as the pivot and optimises the "
                   "unconditional embedding of every step so that sampling with guidance > 1 follows it. The "
                   "embeddings are stored in the trajectory (and saved with it); pick negative 'null-text' when "
                   "sampling, with the same guidance.")
    CATEGORY = f"{CATEGORY}/sampling"
    RETURN_TYPES = (TRAJECTORY,)
    RETURN_NAMES = ("trajectory",)
    OUTPUT_TOOLTIPS = ("The trajectory with its per-step null-text embeddings.",)
    FUNCTION = "optimise"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "The model that made the trajectory."}),
            "trajectory": (TRAJECTORY, {"tooltip": "A guidance-1 trajectory from DDIM Invert."}),
            "guidance": ("FLOAT", {"default": 6.0, "min": 1.01, "max": 30.0, "step": 0.1,
                                   "tooltip": "The guidance you will sample with."}),
            "iterations": ("INT", {"default": 10, "min": 1, "max": 200,
                                   "tooltip": "Adam steps per timestep (each a forward and backward pass)."}),
            "learning_rate": ("FLOAT", {"default": 0.05, "min": 1e-5, "max": 1.0, "step": 0.001,
                                        "tooltip": "Adam learning rate on the embedding (0.05 reconstructed best "
                                                   "on the bundled model; 0.01 was 8x worse)."}),
            "tolerance": ("FLOAT", {"default": 1e-5, "min": 0.0, "max": 1.0, "step": 1e-6, "round": 1e-9,
                                    "tooltip": "Stop a step early once the MSE to the pivot latent is below this."}),
            "gradient_checkpointing": (["auto", "on", "off"], {
                "default": "auto", "tooltip": "Recompute activations in the backward pass to save memory "
                                              "('auto': on for GPUs)."}),
        }}

    def optimise(self, model, trajectory, guidance, iterations, learning_rate, tolerance, gradient_checkpointing):
        require_cogvideox(model, "Null-Text Inversion",
                          "Null-text inversion optimises text embeddings; Stable Video Diffusion has none. Invert "
                          "SVD under guidance with Euler Invert (SVD, exact) instead: it is exact at any guidance.")
        checkpoint = None if gradient_checkpointing == "auto" else gradient_checkpointing == "on"
        progress = host.Progress(trajectory.steps)
        traj = nulltext.null_text_inversion(model, trajectory, guidance, iterations, learning_rate, tolerance,
                                            checkpoint, hooks=progress)
        host.free_memory()
        return {"ui": {"vinv_trajectory": [traj.summary()]}, "result": (traj,)}
