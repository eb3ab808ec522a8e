"""Shared node plumbing: the category root, socket type names, and small helpers."""
from __future__ import annotations

import torch

from ..vidinv import errors
from ..vidinv.trajectory import FAMILY_NAMES, family_of as family  # noqa: F401 (family: for the nodes)

CATEGORY = "video inversion"
MODEL = "VINV_MODEL"
CONDITIONING = "VINV_CONDITIONING"
TRAJECTORY = "VINV_TRAJECTORY"

# inputs shared by the exact-inversion nodes of both families
ITERATIONS = ("INT", {"default": 10, "min": 0, "max": 100,
                      "tooltip": "Fixed-point refinements per step on average (each one model call; 0 is the "
                                 "naive inverse). With a tolerance the budget is pooled: easy steps stop early "
                                 "and the stiff clean end gets what they save."})
TOLERANCE = ("FLOAT", {"default": 1e-5, "min": 0.0, "max": 1.0, "step": 1e-6, "round": 1e-9,
                       "tooltip": "Stop refining a step once |G(x) - x| / |G(x)| is below this; 0 makes exactly "
                                  "'iterations' refinements on every step."})


def latent_value(samples: torch.Tensor, model, image_latents=None, pad: int = 0) -> dict:
    """A ComfyUI LATENT: ``samples`` [B, F, C, H, W] (the transformer's layout, scaled) plus
    what the later stages need under the key ``vinv``."""
    return {"samples": samples, "vinv": {"model_fingerprint": model.fingerprint, "image_latents": image_latents,
                                         "pad_frames": pad}}


def latent_parts(latent: dict):
    """(samples, image_latents, pad_frames) of a LATENT made by this pack (or a plain one)."""
    meta = latent.get("vinv") or {}
    return latent["samples"], meta.get("image_latents"), int(meta.get("pad_frames", 0))


def require_cogvideox(model, node: str, fix: str) -> None:
    """Refuse a model of another family on a CogVideoX-only node, before any work starts."""
    if family(model) != "cogvideox":
        raise errors.InputError(
            f"{node} works on CogVideoX models only; {getattr(model, 'name', '?')!r} is a "
            f"{FAMILY_NAMES.get(family(model), family(model))} model", fix)
