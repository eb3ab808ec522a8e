"""CogVideoX's own nodes: load a model folder, encode text, exact DDIM inversion, plain DDIM sampling,
null-text and prompt-tuning inversion. The shared nodes (VAE, Reference Attention, Guided Sample, trajectories) are in
`pipeline_nodes`, `vae_nodes` and `trajectory_nodes`."""
from __future__ import annotations

import logging

from ..vidinv import families, nulltext
from ..vidinv.family import Guidance
from ..vidinv.models import cogvideox
from ..vidinv.models.loading import DTYPES
from . import host
from .common import (CATEGORY, CONDITIONING, DAMPING, ITERATIONS, MODEL, SOLVER, TOLERANCE, TRAJECTORY,
                     solver_settings)
from .pipeline_nodes import (DYNAMIC, GUIDANCE, NEGATIVE, OFFLOAD, TRAJECTORY_DTYPE, TUNED_ETA, InvertNode,
                             LoaderNode, SampleNode, run_invert, run_load, run_sample)

log = logging.getLogger("vidinv")
FAMILY = cogvideox.FAMILY.name
STEPS = ("INT", {"default": 50, "min": 1, "max": 1000,
                 "tooltip": "DDIM steps on the model's own grid (trailing spacing for CogVideoX)."})
LOAD = "Load a CogVideoX folder with Load CogVideoX Model for the CogVideoX nodes."


def available_models() -> dict:
    """The bundled tiny models first (the default), then folders under models/CogVideo and
    models/diffusers."""
    models = {name: path for name, path in host.BUNDLED_MODELS.items() if path.is_dir()}
    models.update(cogvideox.find_model_folders(host.model_roots()))
    return models


class LoadCogVideoX(LoaderNode):
    DESCRIPTION = ("Loads a CogVideoX model from a diffusers-format folder (transformer, VAE, T5 text encoder, "
                   "tokenizer, scheduler). Folders are found under models/CogVideo and models/diffusers.")
    OUTPUT_TOOLTIPS = ("The loaded model with its configs; later nodes read every shape from it.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (list(available_models()), {
                "tooltip": "A diffusers CogVideoX folder (models/CogVideo/<name> or models/diffusers/<name>), "
                           "or the tiny model bundled with the pack."}),
            "precision": (list(DTYPES), {
                "default": "fp32", "tooltip": "Weights and compute dtype. fp32 for exact inversion on small "
                                              "models; bf16 for CogVideoX-5B, fp16 for 2B on GPUs."}),
            "offload": OFFLOAD,
        }}

    def load(self, model, precision, offload):
        return run_load(cogvideox.load, available_models(), model, precision, offload, "CogVideoX model",
                        "models/CogVideo or models/diffusers")


class EncodeText:
    DESCRIPTION = "Encodes a prompt and a negative prompt with the model's T5, padded to the model's text length."
    CATEGORY = f"{CATEGORY}/model"
    RETURN_TYPES = (CONDITIONING,)
    RETURN_NAMES = ("conditioning",)
    OUTPUT_TOOLTIPS = ("Prompt and negative embeddings for sampling and inversion.",)
    FUNCTION = "encode"
    OUTPUT_NODE = False

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "The model whose text encoder to use."}),
            "prompt": ("STRING", {"multiline": True, "default": "a red circle moving right",
                                  "tooltip": "What the video shows. For inversion: describe the source video."}),
            "negative_prompt": ("STRING", {"multiline": True, "default": "",
                                           "tooltip": "The unconditional branch of classifier-free guidance."}),
        }}

    def encode(self, model, prompt, negative_prompt):
        families.require(model, FAMILY, "Encode Text", LOAD)
        cond = cogvideox.encode_text(model, prompt, negative_prompt)
        ui = {}
        if cond.truncated:
            warning = (f"Prompt longer than {model.max_text_length} tokens; cut: " +
                       " | ".join(repr(t) for t in cond.truncated))
            log.warning(warning)
            ui = {"text": [warning]}
        return {"ui": ui, "result": (cond,)}


class DDIMInvert(InvertNode):
    DESCRIPTION = ("Exact DDIM inversion: solves each inverse step by fixed-point iteration (Anderson-"
                   "accelerated) so that sampling the result returns the input. Emits the whole trajectory.")
    OUTPUT_TOOLTIPS = ("Every latent from clean to noise, with the grid, conditioning and convergence.",
                       "The inverted noise (the trajectory's last latent).")

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
            "solver": SOLVER,
            "damping": DAMPING,
            "trajectory_dtype": TRAJECTORY_DTYPE,
        }}

    def invert(self, model, conditioning, latent, steps, guidance, dynamic_cfg, iterations, tolerance, solver,
               damping, trajectory_dtype):
        families.require(model, FAMILY, "DDIM Invert", LOAD)
        settings = solver_settings(iterations, tolerance, solver, damping)
        return run_invert(model, conditioning, latent, steps, Guidance(guidance, dynamic_cfg), settings,
                          trajectory_dtype)


class DDIMSample(SampleNode):
    DESCRIPTION = ("Plain deterministic DDIM sampling (eta = 0) from a latent, e.g. the inverted noise: the "
                   "round-trip reference. With a trajectory connected it can use its null-text embeddings or "
                   "the source prompt as the negative (negative-prompt inversion).")
    OUTPUT_TOOLTIPS = ("The sampled clean latent.",)

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
                                                   "'null-text' negatives and for tuned_eta."}),
            "tuned_eta": TUNED_ETA,
        }}

    def sample(self, model, conditioning, latent, steps, guidance, dynamic_cfg, negative, trajectory=None,
               tuned_eta=1.0):
        families.require(model, FAMILY, "DDIM Sample", LOAD)
        return run_sample("DDIM Sample", model, conditioning, latent, steps, Guidance(guidance, dynamic_cfg), negative,
                          trajectory, tuned_eta)


class OptimiseNode:
    """What the Null-Text and Prompt-Tuning Inversion nodes share: place, output, inputs."""
    CATEGORY = f"{CATEGORY}/sampling"
    RETURN_TYPES = (TRAJECTORY,)
    RETURN_NAMES = ("trajectory",)
    FUNCTION = "optimise"
    GUIDANCE_MIN = 1.01
    TRAJECTORY_TOOLTIP = "A guidance-1 trajectory from DDIM Invert."
    LR_TOOLTIP = ("Adam learning rate on the embedding (0.05 reconstructed best on the bundled model; 0.01 was 8x "
                  "worse).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "The model that made the trajectory."}),
            "trajectory": (TRAJECTORY, {"tooltip": cls.TRAJECTORY_TOOLTIP}),
            "guidance": ("FLOAT", {"default": 6.0, "min": cls.GUIDANCE_MIN, "max": 30.0, "step": 0.1,
                                   "tooltip": "The guidance you will sample with."}),
            "iterations": ("INT", {"default": 10, "min": 1, "max": 200,
                                   "tooltip": "Adam steps per timestep (each a forward and backward pass)."}),
            "learning_rate": ("FLOAT", {"default": 0.05, "min": 1e-5, "max": 1.0, "step": 0.001,
                                        "tooltip": cls.LR_TOOLTIP}),
            "tolerance": ("FLOAT", {"default": 1e-5, "min": 0.0, "max": 1.0, "step": 1e-6, "round": 1e-9,
                                    "tooltip": "Stop a step early once the MSE to the pivot latent is below this."}),
            "gradient_checkpointing": (["auto", "on", "off"], {
                "default": "auto", "tooltip": "Recompute activations in the backward pass to save memory "
                                              "('auto': on for GPUs)."}),
        }}

    def run(self, optimise, node, model, trajectory, guidance, iterations, learning_rate, tolerance,
            gradient_checkpointing):
        families.require(model, FAMILY, node, f"{node} optimises CogVideoX's text embeddings; the other families' "
                          "exact Invert nodes are exact at any guidance without it.")
        checkpoint = None if gradient_checkpointing == "auto" else gradient_checkpointing == "on"
        progress = host.Progress(trajectory.steps)
        traj = optimise(model, trajectory, guidance, iterations, learning_rate, tolerance, checkpoint, hooks=progress)
        host.free_memory()
        return {"ui": {"vinv_trajectory": [traj.summary()]}, "result": (traj,)}


class NullTextInversion(OptimiseNode):
    DESCRIPTION = ("Null-text inversion: keeps a guidance-1 trajectory as the pivot and optimises the "
                   "unconditional embedding of every step so that sampling with guidance > 1 follows it. The "
                   "embeddings are stored in the trajectory (and saved with it); pick negative 'null-text' when "
                   "sampling, with the same guidance.")
    OUTPUT_TOOLTIPS = ("The trajectory with its per-step null-text embeddings.",)

    def optimise(self, model, trajectory, guidance, iterations, learning_rate, tolerance, gradient_checkpointing):
        return self.run(nulltext.null_text_inversion, "Null-Text Inversion", model, trajectory, guidance, iterations,
                        learning_rate, tolerance, gradient_checkpointing)


class PromptTuningInversion(OptimiseNode):
    DESCRIPTION = ("Prompt-tuning inversion: optimises the conditional (prompt) embedding of every step so that "
                   "sampling with the chosen guidance follows the trajectory. The embeddings are stored in the "
                   "trajectory (and saved with it); DDIM Sample and Guided Sample use them through tuned_eta: 0 "
                   "reconstructs, 1 is the plain edit prompt, between interpolates.")
    OUTPUT_TOOLTIPS = ("The trajectory with its per-step prompt-tuned embeddings.",)
    GUIDANCE_MIN = 1.0
    TRAJECTORY_TOOLTIP = "A trajectory from DDIM Invert (guidance 1 is the usual pivot)."
    LR_TOOLTIP = ("Adam learning rate on the embedding (0.05 reconstructed better than 0.01 on the bundled model "
                  "at guidance 6, by 4.5x).")

    def optimise(self, model, trajectory, guidance, iterations, learning_rate, tolerance, gradient_checkpointing):
        return self.run(nulltext.prompt_tuning_inversion, "Prompt-Tuning Inversion", model, trajectory, guidance,
                        iterations, learning_rate, tolerance, gradient_checkpointing)
