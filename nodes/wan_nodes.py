"""Wan's own nodes: load a folder, encode text (UMT5), exact flow-matching Euler inversion and plain
Euler sampling. They read Wan's inputs into the shared values and run the shared node bodies of
`pipeline_nodes`; the shared nodes (VAE, Reference Attention, Guided Sample, trajectories) take Wan
models as they are."""
from __future__ import annotations

import logging

from ..vidinv import families
from ..vidinv.family import Guidance
from ..vidinv.models import wan
from ..vidinv.models.loading import DTYPES
from . import host
from .common import CATEGORY, CONDITIONING, ITERATIONS, MODEL, SOLVER, TOLERANCE, TRAJECTORY, solver_settings
from .pipeline_nodes import (GUIDANCE, OFFLOAD, TRAJECTORY_DTYPE, InvertNode, LoaderNode, SampleNode, run_invert,
                             run_load, run_sample)

log = logging.getLogger("vidinv")
FAMILY = wan.FAMILY.name
STEPS = ("INT", {"default": 50, "min": 1, "max": 1000,
                 "tooltip": "Euler steps on the model's shifted sigma grid (the scheduler's flow shift; 50 is "
                            "WanPipeline's default)."})


GUIDANCE_2 = ("FLOAT", {"default": 0.0, "min": 0.0, "max": 30.0, "step": 0.1,
                        "tooltip": "Wan 2.2 two-expert models (A14B): the guidance of the low-noise expert "
                                   "(transformer_2; diffusers' guidance_scale_2); 0 = the same as guidance. A "
                                   "one-network model takes 0 (or the same value) only."})


def guidance_of(guidance: float, guidance_2: float) -> Guidance:
    return Guidance(guidance, second=guidance_2 if guidance_2 else None)


def available_models() -> dict:
    """The bundled tiny Wan first (the default), then Wan folders under models/Wan and models/diffusers."""
    models = {name: path for name, path in host.BUNDLED_WAN_MODELS.items() if path.is_dir()}
    models.update(wan.find_model_folders(host.model_roots(host.WAN_FOLDER_KINDS)))
    return models


def require_wan(model, node: str) -> None:
    families.require(model, FAMILY, node, "Load a Wan folder with Load Wan Model for the Wan nodes.")


class LoadWan(LoaderNode):
    DESCRIPTION = ("Loads a Wan 2.x text-to-video or image-to-video model from a diffusers-format folder "
                   "(transformer, VAE, UMT5 text encoder, tokenizer, scheduler; CLIP image encoder for image-to-"
                   "video). Folders are found under models/Wan and models/diffusers. Image-to-video models take "
                   "the video's first frame as their conditioning (VAE Encode adds it). Wan 2.2: two-expert folders "
                   "(A14B T2V and I2V: 'transformer' for high noise, 'transformer_2' for low noise, switched at "
                   "boundary_ratio as diffusers does; with offload only the expert in use is on the GPU) and TI2V-5B "
                   "(VAE Encode adds the first frame's latent, which replaces the first latent frame). Wan 2.1 "
                   "first-last-frame folders are refused with a message.")
    OUTPUT_TOOLTIPS = ("The loaded Wan model; the VAE, Reference Attention, Guided Sample and trajectory nodes "
                       "accept it too.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (list(available_models()), {
                "tooltip": "A diffusers Wan folder (models/Wan/<name> or models/diffusers/<name>, e.g. "
                           "Wan2.1-T2V-1.3B-Diffusers or Wan2.1-I2V-14B-480P-Diffusers); 'tiny-wan (bundled)' is the pack's tiny trained Wan "
                           "(64x64, 9 frames)."}),
            "precision": (list(DTYPES), {
                "default": "fp32", "tooltip": "Weights and compute dtype. fp32 for exact inversion on small "
                                              "models; bf16 for Wan 1.3B and 14B on GPUs."}),
            "offload": OFFLOAD,
        }}

    def load(self, model, precision, offload):
        return run_load(wan.load, available_models(), model, precision, offload, "Wan model",
                        "models/Wan or models/diffusers")


class WanEncodeText:
    DESCRIPTION = ("Encodes a prompt and a negative prompt with the model's UMT5 as WanPipeline does (attention "
                   "mask, zeros past the prompt, 512 tokens).")
    CATEGORY = f"{CATEGORY}/model"
    RETURN_TYPES = (CONDITIONING,)
    RETURN_NAMES = ("conditioning",)
    OUTPUT_TOOLTIPS = ("Prompt and negative embeddings for Wan sampling and inversion.",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "The Wan model whose text encoder to use."}),
            "prompt": ("STRING", {"multiline": True, "default": "a red circle moving right",
                                  "tooltip": "What the video shows. For inversion: describe the source video."}),
            "negative_prompt": ("STRING", {"multiline": True, "default": "",
                                           "tooltip": "The unconditional branch of classifier-free guidance."}),
        }}

    def encode(self, model, prompt, negative_prompt):
        require_wan(model, "Encode Text (Wan)")
        cond = wan.encode_text(model, prompt, negative_prompt)
        ui = {}
        if cond.truncated:
            warning = f"Prompt longer than {model.max_text_length} tokens; cut: " + " | ".join(map(repr, cond.truncated))
            log.warning(warning)
            ui = {"text": [warning]}
        return {"ui": ui, "result": (cond,)}


class WanInvert(InvertNode):
    DESCRIPTION = ("Exact inversion of Wan's deterministic flow-matching Euler sampler: solves each inverse step "
                   "x_i = x_next - (sigma_next - sigma_i) v(x_i) by fixed-point iteration (Anderson-accelerated), "
                   "so that Flow Sample (Wan) of the result returns the input. Emits the whole trajectory.")
    OUTPUT_TOOLTIPS = ("Every latent from clean to noise, with the sigma grid, conditioning and convergence.",
                       "The inverted noise (the trajectory's last latent, at sigma 1).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "The Wan model to invert with (sample with the same one)."}),
            "conditioning": (CONDITIONING, {"tooltip": "Describe the source video (Encode Text (Wan)); guided "
                                                       "sampling uses it as the reference conditioning."}),
            "latent": ("LATENT", {"tooltip": "The source video latent from VAE Encode Video (same model)."}),
            "steps": STEPS,
            "guidance": GUIDANCE,
            "iterations": ITERATIONS,
            "tolerance": TOLERANCE,
            "solver": SOLVER,
            "trajectory_dtype": TRAJECTORY_DTYPE,
        }, "optional": {
            "guidance_2": GUIDANCE_2,
        }}

    def invert(self, model, conditioning, latent, steps, guidance, iterations, tolerance, solver, trajectory_dtype,
               guidance_2=0.0):
        require_wan(model, "Flow Invert (Wan)")
        settings = solver_settings(iterations, tolerance, solver)
        return run_invert(model, conditioning, latent, steps, guidance_of(guidance, guidance_2), settings,
                          trajectory_dtype)


class WanSample(SampleNode):
    DESCRIPTION = ("Deterministic flow-matching Euler sampling with Wan from a latent, e.g. the inverted noise "
                   "(the round trip) or a loaded trajectory's noise. With a trajectory connected the source "
                   "prompt can be the negative (negative-prompt inversion).")
    OUTPUT_TOOLTIPS = ("The sampled clean latent.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "The Wan model to sample with."}),
            "conditioning": (CONDITIONING, {"tooltip": "The prompt to sample (the source prompt reconstructs)."}),
            "latent": ("LATENT", {"tooltip": "Starting noise at sigma 1, e.g. Flow Invert's noise output."}),
            "steps": STEPS,
            "guidance": GUIDANCE,
            "negative": (["conditioning", "source prompt"], {
                "default": "conditioning",
                "tooltip": "The unconditional branch of CFG: the conditioning's own negative prompt, or the "
                           "trajectory's source prompt (negative-prompt inversion: CFG reconstruction without "
                           "optimisation)."}),
        }, "optional": {
            "trajectory": (TRAJECTORY, {"tooltip": "The inversion's trajectory, for the 'source prompt' negative."}),
            "guidance_2": GUIDANCE_2,
        }}

    def sample(self, model, conditioning, latent, steps, guidance, negative, trajectory=None, guidance_2=0.0):
        require_wan(model, "Flow Sample (Wan)")
        return run_sample("Flow Sample (Wan)", model, conditioning, latent, steps, guidance_of(guidance, guidance_2),
                          negative, trajectory)
