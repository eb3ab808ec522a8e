"""Load a CogVideoX model folder; encode text."""
from __future__ import annotations

import logging

from ..vidinv import errors
from ..vidinv.models import cogvideox
from . import host
from .common import CATEGORY, CONDITIONING, MODEL, require_cogvideox

log = logging.getLogger("vidinv")


def available_models() -> dict:
    """The bundled tiny models first (the default), then folders under models/CogVideo and
    models/diffusers."""
    models = {name: path for name, path in host.BUNDLED_MODELS.items() if path.is_dir()}
    models.update(cogvideox.find_model_folders(host.model_roots()))
    return models


class LoadCogVideoX:
    DESCRIPTION = ("Loads a CogVideoX model from a diffusers-format folder (transformer, VAE, T5 text encoder, "
                   "tokenizer, scheduler). Folders are found under models/CogVideo and models/diffusers.")
    CATEGORY = f"{CATEGORY}/model"
    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The loaded model with its configs; later nodes read every shape from it.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (list(available_models()), {
                "tooltip": "A diffusers CogVideoX folder (models/CogVideo/<name> or models/diffusers/<name>), "
                           "or the tiny model bundled with the pack."}),
            "precision": (list(cogvideox.DTYPES), {
                "default": "fp32", "tooltip": "Weights and compute dtype. fp32 for exact inversion on small "
                                              "models; bf16 for CogVideoX-5B, fp16 for 2B on GPUs."}),
            "offload": (["none", "cpu"], {
                "default": "none", "tooltip": "'cpu' keeps each part on ComfyUI's offload device and moves it "
                                              "to the GPU only while it runs (slower, far less VRAM)."}),
        }}

    def load(self, model, precision, offload):
        folders = available_models()
        if model not in folders:
            raise errors.InputError(f"model {model!r} was not found", "Put the folder under models/CogVideo and "
                                    "refresh the node list.")
        offload_dev = host.offload_device() if offload == "cpu" else host.compute_device()
        m = cogvideox.load(folders[model], precision, host.compute_device(), offload_dev, name=model)
        log.info("loaded %s", m.describe())
        return (m,)


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
        require_cogvideox(model, "Encode Text", "Stable Video Diffusion is conditioned on an image, not text: use "
                          "Encode First Frame (SVD).")
        cond = cogvideox.encode_text(model, prompt, negative_prompt)
        ui = {}
        if cond.truncated:
            warning = (f"Prompt longer than {model.max_text_length} tokens; cut: " +
                       " | ".join(repr(t) for t in cond.truncated))
            log.warning(warning)
            ui = {"text": [warning]}
        return {"ui": ui, "result": (cond,)}
