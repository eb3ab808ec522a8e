"""Shared node plumbing: the category root, socket type names, and small helpers."""
from __future__ import annotations

import functools
import inspect
import math

import torch

from ..vidinv import editmask, errors
from ..vidinv.solver import Solver

CATEGORY = "video inversion"
MODEL = "VINV_MODEL"
CONDITIONING = "VINV_CONDITIONING"
TRAJECTORY = "VINV_TRAJECTORY"

# inputs shared by the exact-inversion nodes of both families
ITERATIONS = ("INT", {"default": 10, "min": 0, "max": 100,
                      "tooltip": "Fixed-point refinements per step on average (each one model call; 0 is the "
                                 "naive inverse: one call per step, no round trip on its own, but as the guide of "
                                 "an edit with Guided Sample's difference mask it kept more of the source on "
                                 "CogVideoX, and that chain still gives the source back with the source prompt; "
                                 "BENCHMARKS section 6). With a tolerance the budget is pooled: easy steps stop "
                                 "early and the stiff clean end gets what they save."})
SOLVER = (["anderson", "plain"], {"default": "anderson",
                                  "tooltip": "Anderson acceleration (safeguarded) converges where the model is stiff "
                                             "(near the clean end); plain is textbook."})
DAMPING = ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05,
                     "tooltip": "Fraction of each step towards G(x); 1 = undamped. 0 = automatic: 1 without "
                                "guidance, 0.5 with CFG (which makes undamped steps overshoot near the clean end)."})


def solver_settings(iterations: int, tolerance: float, solver: str, damping: float = 0.0) -> Solver:
    """The Solver an exact Invert node's inputs ask for (damping 0: automatic)."""
    return Solver(iterations, tolerance, memory=5 if solver == "anderson" else 0, damping=damping or None)


TOLERANCE = ("FLOAT", {"default": 1e-5, "min": 0.0, "max": 1.0, "step": 1e-6, "round": 1e-9,
                       "tooltip": "Stop refining a step once |G(x) - x| / |G(x)| is below this; 0 makes exactly "
                                  "'iterations' refinements on every step."})


# the edit mask's growth, shared by Guided Sample and FlowEdit
MASK_GROW = ("INT", {"default": 0, "min": 0, "max": editmask.MAX_GROW, "tooltip":
                     "Grow the edit mask (the map's or a given MASK) by this many latent cells in every frame (8 "
                     "pixels each for CogVideoX and Wan). A mask tight on the object keeps its edge on the source, "
                     "whose colour can then bleed into the edit (a red object edited to green read yellow): 1 "
                     "frees the edge, at some loss of layout on most models (BENCHMARKS section 6). 0 = as cut."})
MASK_LEVEL = ("FLOAT", {"default": 1.0, "min": 0.05, "max": editmask.MAX_LEVEL, "step": 0.05, "tooltip":
                        "Scale the map's cut level (Otsu's, or the quantile's value) by this: below 1 the mask also "
                        "takes the weaker edge of the region where the prompt's change acts. 1 = the cut as it is "
                        "(BENCHMARKS section 6). Unused with a connected MASK."})


def latent_value(samples: torch.Tensor, model, image_latents=None, pad: int = 0, steps: int | None = None) -> dict:
    """A ComfyUI LATENT: ``samples`` [B, F, C, H, W] (the transformer's layout, scaled) plus
    what the later stages need under the key ``vinv``; `steps`: the step count of the trajectory
    whose noise this is (its sampler must use the same grid)."""
    meta = {"model_fingerprint": model.fingerprint, "model_name": model.name, "image_latents": image_latents,
            "pad_frames": pad}
    if steps is not None:
        meta["trajectory_steps"] = int(steps)
    return {"samples": samples, "vinv": meta}


def check_steps(node: str, steps: int, latent: dict, trajectory=None) -> None:
    """A sampler given a trajectory, or a trajectory's noise, samples that trajectory's grid: any
    other step count starts from noise of the wrong level and does not reconstruct."""
    want = trajectory.steps if trajectory is not None else (latent.get("vinv") or {}).get("trajectory_steps")
    if want is not None and steps != want:
        what = ("the connected trajectory has" if trajectory is not None else
                "the latent is the noise of a trajectory with")
        raise errors.InputError(f"{node}: steps is {steps}, but {what} {want} steps",
                                f"Set steps to {want}: inverted noise reconstructs only on the grid it was inverted "
                                "on (invert again to use another step count).")


def latent_parts(latent: dict, model, node: str):
    """(samples, image_latents, pad_frames) of a LATENT made by this pack (or a plain one). A latent of
    this pack carries its model's fingerprint: one made by another model is refused, even where the
    shapes happen to match (another family's, or another model of one family, samples or decodes
    wrongly without a word)."""
    meta = latent.get("vinv") or {}
    made_by = meta.get("model_fingerprint")
    if made_by is not None and made_by != model.fingerprint:
        raise errors.InputError(f"{node}: this latent was made by the model {meta.get('model_name', made_by)!r}, not "
                                f"by {model.name!r} (fingerprints {made_by} and {model.fingerprint})",
                                "Encode (or invert) the video with the model you give this node, or give it the "
                                "model that made the latent (the same folder and precision).")
    return latent["samples"], meta.get("image_latents"), int(meta.get("pad_frames", 0))


GUIDANCE_NOTE = (" Guidance below 1 would weaken the conditioning instead of guiding (0 ignores it); 1 is no "
                 "guidance.")
GUIDANCE_INPUTS = ("guidance", "min_guidance", "max_guidance")


def check_numbers(node: str, spec: dict, values: dict) -> None:
    """Every INT / FLOAT input of a node call is a finite number of its kind inside the node's own
    min..max: widget values are range-checked by ComfyUI, but NaN passes its check and a value
    that comes through a link is not checked at all."""
    for section in ("required", "optional"):
        for key, (kind, *rest) in spec.get(section, {}).items():
            if kind not in ("INT", "FLOAT") or values.get(key) is None:
                continue
            value, opts = values[key], (rest[0] if rest else {})
            lo, hi = opts.get("min"), opts.get("max")
            span = f"from {lo} to {hi}" if lo is not None and hi is not None else "in range"
            number = isinstance(value, int) if kind == "INT" else isinstance(value, (int, float))
            if isinstance(value, bool) or not number or (kind == "FLOAT" and not math.isfinite(value)):
                raise errors.InputError(f"{node}: {key} is {errors.shorten(repr(value))}, not a finite "
                                        f"{'whole ' if kind == 'INT' else ''}number", f"Set {key} to a number {span}.")
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                raise errors.InputError(f"{node}: {key} {value} is outside {lo}..{hi}",
                                        f"Set {key} to a number {span}." +
                                        (GUIDANCE_NOTE if key in GUIDANCE_INPUTS and value < 1 else ""))


def guard(cls, name: str):
    """Check every numeric input of node `cls` (display name `name`) before its function runs:
    the one place where the nodes' numbers are checked (applied to every registered node)."""
    fn = getattr(cls, cls.FUNCTION)
    if getattr(fn, "vinv_guarded", False):
        return cls
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def checked(self, *args, **kwargs):
        check_numbers(name, cls.INPUT_TYPES(), signature.bind_partial(self, *args, **kwargs).arguments)
        return fn(self, *args, **kwargs)

    checked.vinv_guarded = True
    setattr(cls, cls.FUNCTION, checked)
    return cls
