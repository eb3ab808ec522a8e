"""The nodes every model family shares (Reference Attention, Guided Sample), and the bodies of the
invert and sample nodes, written once over `vidinv.pipeline`; the family nodes only read their own
inputs into the shared values (`Guidance`, `Solver`)."""
from __future__ import annotations

import logging

import torch

from ..vidinv import attention, editmask, errors, families, friendly, nulltext, pipeline
from ..vidinv.family import EditRecipe, Guidance, measured_picks
from ..vidinv.solver import Solver
from ..vidinv.trajectory import STORAGE_DTYPES
from . import host
from .common import (CATEGORY, CONDITIONING, MASK_GROW, MASK_LEVEL, MODEL, TRAJECTORY, check_steps,
                     latent_parts, latent_value)
from .preview import latent_preview

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
TUNED_ETA = ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05,
                       "tooltip": "Prompt tuning: the prompt's embedding is (1 - eta) x the trajectory's tuned "
                                  "embedding + eta x this conditioning's. 1 = the plain prompt (no effect); 0 = the "
                                  "tuned embedding (reconstructs at the guidance it was learned at). Below 1 needs a "
                                  "trajectory from Prompt-Tuning Inversion."})
# Guided Sample starts from fresh noise inside the edit mask (issue 36's rule, BENCHMARKS section 6: the colour on
# every dev model, where the inverted noise kept a source colour on one held-out Wan video)
START = (list(pipeline.STARTS), {"default": pipeline.STARTS[2],
                                 "tooltip": "Start from the trajectory's inverted noise, from fresh noise (the "
                                            "published recipe), or from fresh noise inside the edit mask and the "
                                            "inverted noise outside it (the default: the masked region starts free "
                                            "of the source's colour; needs a mask made before sampling, the "
                                            "difference map or a MASK, an exact trajectory and start_at 0, "
                                            "otherwise inverted). The source prompt reconstructs exactly with "
                                            "'inverted' and 'fresh in mask'."})
SEED = ("INT", {"default": 0, "min": 0, "max": 2**63 - 1,
                "tooltip": "Seed of the fresh noise (unused when starting from the inverted noise alone)."})


TRAJECTORY_DTYPE = (list(STORAGE_DTYPES), {"default": "fp32",
                                           "tooltip": "Storage dtype of the trajectory latents (fp16/bf16 halve the "
                                                      "memory; fp32 keeps the round trip exact)."})


OFFLOAD = (["none", "cpu"], {"default": "none",
                             "tooltip": "'cpu' keeps each part on ComfyUI's offload device and moves it to the GPU "
                                        "only while it runs (slower, far less VRAM)."})


class LoaderNode:
    """What every family's Load node shares: its place, its output, its function."""
    CATEGORY = f"{CATEGORY}/model"
    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    FUNCTION = "load"


def run_load(load, folders: dict, model: str, precision: str, offload: str, what: str, where: str) -> tuple:
    """The body of every Load node: the listed folder `model` loaded with the family's `load` on
    ComfyUI's devices (`where`: the folders to put it in, for the message)."""
    if model not in folders:
        raise errors.InputError(f"{what} {model!r} was not found",
                                f"Put the diffusers folder under {where} and refresh the node list.")
    offload_dev = host.offload_device() if offload == "cpu" else host.compute_device()
    m = load(folders[model], precision, host.compute_device(), offload_dev, name=model)
    logging.getLogger("vidinv").info("loaded %s", m.describe())
    return (m,)


class InvertNode:
    """What every family's Invert node shares: its place, its outputs, its function."""
    CATEGORY = f"{CATEGORY}/sampling"
    RETURN_TYPES = (TRAJECTORY, "LATENT")
    RETURN_NAMES = ("trajectory", "noise")
    FUNCTION = "invert"


class SampleNode:
    """What every Sample and Guided Sample node shares: its place, its output, its function."""
    CATEGORY = f"{CATEGORY}/sampling"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    FUNCTION = "sample"


class GuidedSampleNode(SampleNode):
    """The Guided Sample nodes: the latent and the edit mask it used."""
    RETURN_TYPES = ("LATENT", "IMAGE")
    RETURN_NAMES = ("latent", "edit_mask")
    OUTPUT_TOOLTIPS = ("The edited (or reconstructed) clean latent.",
                       "Where the edit was allowed to change the video (white), frame by frame at the video's "
                       "size; all white without a mask.")


# Guided Sample's edit-mask defaults: the prediction difference cut at Otsu's level (it finds the object,
# whatever its size, where the attention and a fixed quantile do not), on by default since issue 36: without
# it the chain lost to the published recipe on held-out CogVideoX and Wan models (mask IoU or path), with it
# it did not (BENCHMARKS section 6, "Defaults on models not tuned on"). Any threshold above 0 switches it on.
MASK_THRESHOLD, MASK_SOURCE, MASK_CUT = 0.9, "difference", "otsu"
# Every step by default: a later start (FlowEdit's window skips a third) kept less of the source on a held-out
# Wan (BENCHMARKS section 6, issue 36), though it cost a third less.
START_AT = 0.0


def start_at_input(default: float, tooltip: str) -> tuple:
    return ("FLOAT", {"default": default, "min": 0.0, "max": 0.95, "step": 0.01, "tooltip": tooltip})


GUIDED_START_AT = start_at_input(START_AT, "Skip this fraction of the steps, the noisiest, and start from the "
                                 "trajectory's latent where the rest begins: the skipped steps cost no call, and the "
                                 "source prompt still reconstructs exactly. 0 = every step (on a held-out Wan a late "
                                 "start kept less of the source). A trajectory from Edit-Friendly Invert with a "
                                 "start_at starts no earlier than that.")
# Guided Sample's mask_level: 0 (below the range of a level, FlowEdit's widget) = the family's cut level
AUTO_LEVEL = 0.0
GUIDED_MASK_LEVEL = ("FLOAT", {**MASK_LEVEL[1], "default": 0.0, "min": 0.0, "tooltip": MASK_LEVEL[1]["tooltip"] +
                               f" 0 = the family's measured pick: {measured_picks('mask_level')}."})
MASK_INPUT = ("MASK", {"tooltip": "The region the edit may change (white = 1); outside it every step follows the "
                                  "trajectory. One frame for the whole video, or one per frame (a batch of "
                                  "videos: also one set per video, one after another). Overrides mask_threshold."})

def trajectory_noise(traj, model) -> dict:
    """A trajectory's noise as a LATENT, with what rides along for its family (I2V image latents, padding)
    and, for an edit-friendly trajectory, its kind (the deterministic samplers refuse its noise)."""
    image_latents, pad = families.of(traj).latent_extras(traj)
    out = latent_value(traj.noise, model, image_latents, pad, traj.steps)
    out["vinv"]["trajectory_kind"] = traj.kind
    return out


def run_invert(model, conditioning, latent: dict, steps: int, guidance: Guidance, settings: Solver,
               dtype: str) -> dict:
    """The body of every exact Invert node: invert, show the trajectory summary, return it and its noise."""
    return run_inversion(model, latent, steps, lambda samples, image_latents, progress, pad: pipeline.invert(
        model, conditioning, samples, steps, guidance, settings, dtype, image_latents, progress, pad))


def run_inversion(model, latent: dict, steps: int, invert) -> dict:
    """`invert(samples, image_latents, hooks, pad_frames) -> Trajectory` on the LATENT's parts, with
    progress; the trajectory's summary on the node, the trajectory and its noise as outputs."""
    samples, image_latents, pad = latent_parts(latent, model, "the Invert node")
    traj = invert(samples, image_latents, host.Progress(steps), pad)
    host.free_memory()
    return {"ui": {"vinv_trajectory": [traj.summary()]}, "result": (traj, trajectory_noise(traj, model))}


def run_sample(node: str, model, conditioning, latent: dict, steps: int, guidance: Guidance,
               negative: str = "conditioning", trajectory=None, tuned_eta: float = 1.0) -> tuple:
    """The body of every plain Sample node: the step count checked against the noise's trajectory."""
    samples, image_latents, pad = latent_parts(latent, model, node)
    if (latent.get("vinv") or {}).get("trajectory_kind") == friendly.KIND:
        raise errors.InputError(f"{node}: the latent is the noise of an edit-friendly trajectory, which only its own "
                                "noise maps bring back", "Sample it with Edit-Friendly Sample (DDPM), or Reference "
                                "Attention + Guided Sample, with that trajectory.")
    if trajectory is not None:
        trajectory.check_model(model)
    check_steps(node, steps, latent, trajectory)
    neg = nulltext.negative_for(negative, trajectory)
    pos = nulltext.positive_for(trajectory, conditioning, tuned_eta)
    progress = host.Progress(steps, latent_preview(model))
    out = pipeline.sample(model, conditioning, samples, steps, guidance, image_latents, neg, hooks=progress,
                          positive=pos)
    host.free_memory()
    return (latent_value(out, model, image_latents, pad),)


def run_guided(model, conditioning, guidance: Guidance, start: str, seed: int, negative: str = "conditioning",
               first_frame=None, tuned_eta: float = 1.0, mask_threshold: float = MASK_THRESHOLD, mask=None,
               mask_source: str = MASK_SOURCE, mask_cut: str = MASK_CUT, start_at: float = START_AT,
               mask_grow: int = 0, mask_level: float = 1.0) -> dict:
    """The body of every Guided Sample node; the panel shows the injection window and the guide. An edit
    mask from `mask` (a MASK) or, with `mask_threshold` > 0, from the `mask_source` map cut by `mask_cut` at
    its level times `mask_level` (`AUTO_LEVEL`: the family's, `EditRecipe.mask_level`), grown by `mask_grow`
    latent cells; returned as IMAGE frames."""
    spec = model.reference
    if spec is None:
        raise errors.InputError("Guided Sample needs a model patched with a trajectory",
                                "Connect the output of the Reference Attention node to its model input.")
    traj, opts = spec.trajectory, spec.options
    fam = families.of(model)
    check_text_options(fam, negative, tuned_eta)
    neg = nulltext.negative_for(negative, traj)
    pos = nulltext.positive_for(traj, conditioning, tuned_eta)
    image_latents = fam.first_frame_latents(model, traj.latents[0], first_frame)
    if mask_level == AUTO_LEVEL:
        mask_level = fam.edit_recipe(model).mask_level
    # a threshold masks by the prompt's change: families without a prompt (SVD) take only a given MASK
    edit_mask = None if mask is None and not (mask_threshold and fam.text_conditioned) else \
        editmask.EditMask(mask_threshold, mask, mask_source, mask_cut, mask_grow, mask_level)
    progress = host.Progress(traj.steps, latent_preview(model))
    out = pipeline.guided_sample(model, conditioning, guidance, start, seed, neg, image_latents, progress, pos,
                                 edit_mask, start_at)
    first = pipeline.first_guided_step(traj, start_at)
    window = {"steps": traj.steps, "active": [i for i in opts.active_steps(traj.steps) if i >= first],
              "blocks": opts.blocks, "weight": opts.weight, "first_step": first}
    followed = pipeline.guide_for(spec, edit_mask)  # a one-call trajectory: the one made for the sample, or given
    window["guide"] = "one-call" if followed.kind == "exact" and followed.iterations == 0 else "trajectory"
    if edit_mask is not None and edit_mask.latent is not None:
        window["mask_fraction"] = round(float(edit_mask.latent.mean()), 4)
        window["mask_level"] = edit_mask.level
    window["start"] = pipeline.start_used(start, traj, start_at, edit_mask)
    latent_mask = torch.ones(out.shape[0], out.shape[1], 1, *out.shape[-2:]) if edit_mask is None or \
        edit_mask.latent is None else edit_mask.latent
    source_image, pad = fam.latent_extras(traj)
    mask_frames = editmask.to_pixels(latent_mask[:, pad:], model.spatial_factor, model.temporal_factor)
    host.free_memory()
    return {"ui": {"vinv_guidance": [window]},
            "result": (latent_value(out, model, source_image, pad), mask_frames)}


def check_text_options(fam, negative: str, tuned_eta: float = 1.0) -> None:
    """The negative and tuned_eta options need a text-conditioned family."""
    if negative != "conditioning" and not fam.text_conditioned:
        raise errors.InputError(f"negative {negative!r} needs text embeddings; {fam.display_name}'s unconditional "
                                "branch is not a prompt", "Set negative to 'conditioning' for this model.")
    if tuned_eta != 1.0 and not fam.text_conditioned:
        raise errors.InputError(f"tuned_eta {tuned_eta:g} needs prompt-tuned text embeddings; "
                                f"{fam.display_name} is not conditioned on a prompt", "Set tuned_eta to 1.")


FRIENDLY_STEPS = ("INT", {"default": 50, "min": 1, "max": 1000,
                          "tooltip": "Steps on the model's own grid (CogVideoX: DDIM's, SVD: Euler's, Wan: the "
                                     "shifted flow sigmas); one model call each."})


class FriendlyInvert(InvertNode):
    DESCRIPTION = ("Edit-friendly DDPM inversion (Huberman-Spiegelglas et al., CVPR 2024; the inversion under "
                   "LEDITS++) for every model family: each step's latent is drawn from the noised source, and "
                   "the noise map that makes the stochastic sampler land on the next one is solved and stored. "
                   "Sampling with the maps reproduces the source exactly, at one model call per step; with an "
                   "edited prompt they hold its structure.")
    OUTPUT_TOOLTIPS = ("An edit-friendly trajectory (its noisy latents and noise maps); Reference Attention, "
                       "Guided Sample, Edit-Friendly Sample and Save Trajectory take it.",
                       "Its noisiest latent (only the trajectory's noise maps bring it back).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "The model to invert with (sample with the same one)."}),
            "conditioning": (CONDITIONING, {"tooltip": "The source's conditioning (a prompt from the family's "
                                                       "Encode Text, or SVD's Encode First Frame)."}),
            "latent": ("LATENT", {"tooltip": "The video latent from VAE Encode Video."}),
            "steps": FRIENDLY_STEPS,
            "guidance": ("FLOAT", {**GUIDANCE[1], "tooltip": "Classifier-free guidance of the inversion; the "
                                   "source is reproduced when sampled with the same (SVD: the same scale on "
                                   "every frame)."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**63 - 1,
                             "tooltip": "Seed of the noise each step's latent is drawn with."}),
            "trajectory_dtype": TRAJECTORY_DTYPE,
        }, "optional": {
            "start_at": start_at_input(START_AT, "Solve only the steps from this fraction of them on: the "
                                       "noisiest ones, which an edit starting here never runs, cost no call "
                                       "(Guided Sample and Edit-Friendly Sample then start there; FlowEdit's "
                                       "window, n_max 33 of 50, skips the same share). 0 = every step."),
        }}

    def invert(self, model, conditioning, latent, steps, guidance, seed, trajectory_dtype, start_at=START_AT):
        def invert(samples, image_latents, progress, pad):
            return pipeline.invert_friendly(model, conditioning, samples, steps, Guidance(guidance), seed,
                                            trajectory_dtype, image_latents, progress, pad, start_at)
        return run_inversion(model, latent, steps, invert)


class FriendlySample(SampleNode):
    DESCRIPTION = ("Samples an edit-friendly trajectory with its noise maps (DDPM sampling that reuses the "
                   "inversion's noise): the source prompt and guidance reproduce the video; an edited prompt "
                   "edits it. Reference Attention + Guided Sample take the same trajectory to add the source's "
                   "attention.")
    OUTPUT_TOOLTIPS = ("The edited (or reconstructed) clean latent.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "The model that made the trajectory."}),
            "trajectory": (TRAJECTORY, {"tooltip": "From Edit-Friendly Invert (DDPM) or Load Trajectory."}),
            "conditioning": (CONDITIONING, {"tooltip": "The edited conditioning (the source's reconstructs)."}),
            "guidance": ("FLOAT", {**EDIT_GUIDANCE[1], "tooltip": "Classifier-free guidance of the sample; the "
                                   "inversion's guidance with the source reconstructs."}),
            "negative": NEGATIVE,
        }}

    def sample(self, model, trajectory, conditioning, guidance, negative):
        if trajectory.noise_maps is None:
            raise errors.InputError("Edit-Friendly Sample needs an edit-friendly trajectory; this one is exact",
                                    "Sample an exact trajectory's noise with its family's Sample node, or invert "
                                    "with Edit-Friendly Invert (DDPM).")
        trajectory.check_model(model)
        fam = families.of(model)
        check_text_options(fam, negative)
        trajectory.check_grid(model.scheduler_config)
        image_latents, pad = fam.latent_extras(trajectory)
        progress = host.Progress(trajectory.steps, latent_preview(model))
        first = trajectory.first_step  # a trajectory solved from a later step starts there
        out = pipeline.sample(model, conditioning, trajectory.latent_for_step(first), trajectory.steps,
                              Guidance(guidance), image_latents, nulltext.negative_for(negative, trajectory), first,
                              progress, noise_maps=trajectory.noise_maps)
        host.free_memory()
        return (latent_value(out, model, image_latents, pad),)


# Reference Attention's and Guided Sample's defaults are the family's measured chain (`EditRecipe`, BENCHMARKS
# section 6): the weight widget's AUTO (any value below 0) and the guide's "auto" resolve to it, injecting in the
# first 40 % of the steps, and Guided Sample's mask_level AUTO_LEVEL to its cut level. The library's
# ReferenceOptions (and the native node's, whose sampling has no mask) stay weight 4 at every step, section 2's pick.
AUTO = -1.0
REFERENCE_END = EditRecipe().end


WEIGHT_TOOLTIP = ("Log-bias on the reference logits: 1 = plain concatenation, 0 = off, more = stronger pull to the "
                  "source.")
AUTO_WEIGHT_TOOLTIP = (WEIGHT_TOOLTIP + " -1 (any value below 0) = the family's measured pick: "
                       f"{measured_picks('weight')} (BENCHMARKS section 6).")


def reference_window(weight: float = attention.ReferenceOptions().weight,
                     end: float = attention.ReferenceOptions().end) -> dict:
    """The Reference Attention inputs every patching node shares: blocks, step window and weight (`AUTO`: the
    widget starts at -1, the family's pick)."""
    d = attention.ReferenceOptions()
    auto = weight == AUTO
    return {
        "blocks": ("STRING", {"default": d.blocks,
                              "tooltip": "Transformer blocks to inject: 'all', '0-7', '0,2,4', '10-'."}),
        "start": ("FLOAT", {"default": d.start, "min": 0.0, "max": 1.0, "step": 0.05,
                            "tooltip": "Injection starts at this fraction of the steps (0 = first step)."}),
        "end": ("FLOAT", {"default": end, "min": 0.0, "max": 1.0, "step": 0.05,
                          "tooltip": "Injection stops at this fraction of the steps (1 = through the last)."}),
        "weight": ("FLOAT", {"default": weight, "min": AUTO if auto else 0.0, "max": 20.0, "step": 0.1,
                             "tooltip": AUTO_WEIGHT_TOOLTIP if auto else WEIGHT_TOOLTIP}),
    }


ROWS_INPUT = (list(attention.ROWS), {"default": attention.ReferenceOptions().rows,
                                     "tooltip": "Inject into all CFG rows, or only the conditional one (keeps CFG "
                                                "reconstruction exact)."})


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
            "trajectory": (TRAJECTORY, {"tooltip": "From an Invert node (DDIM, Euler (SVD), Flow (Wan)) or Load "
                                                    "Trajectory."}),
            **reference_window(AUTO, REFERENCE_END),
            "reference_text": ("BOOLEAN", {"default": d.text,
                                           "tooltip": "Also attend to the reference's text tokens (the source "
                                                      "prompt). Off keeps the text's share of attention. "
                                                      "CogVideoX only (SVD and Wan self-attention holds "
                                                      "image tokens only)."}),
            "rows": ROWS_INPUT,
            "reference_conditioning": (list(attention.REFERENCE_TEXT), {
                "default": d.reference_text,
                "tooltip": "'source': reference pass with the inversion's prompt, once per step for all rows. "
                           "'edit': with the prompts being sampled, per CFG row (the published recipe). "
                           "Stable Video Diffusion: 'source' only."}),
        }, "optional": {
            "temporal": ("BOOLEAN", {"default": d.temporal,
                                     "tooltip": "Stable Video Diffusion only: also inject into the temporal "
                                                "self-attention paired with each chosen block (blocks count SVD's "
                                                "spatial transformer blocks). CogVideoX and Wan: leave off."}),
            "guide": (list(pipeline.GUIDES), {"default": pipeline.GUIDES[0], "tooltip":
                      "What Guided Sample follows when its mask is the difference map (the reference's latents, the "
                      "latents kept outside the mask, the start noise): the connected 'trajectory', or the "
                      "'one-call' inversion of its clean latent (one model call per step, made by the first Guided "
                      "Sample that follows it and kept; DDIM Invert with iterations 0 gives the same), which kept "
                      "more of the source's layout on CogVideoX. With the source prompt the mask is empty and the "
                      "source comes back exactly either way. 'auto' = the family's pick: "
                      f"{measured_picks('guide')} (and the trajectory for edit-friendly, null-text or prompt-tuned "
                      "trajectories)."}),
        }}

    def patch(self, model, trajectory, blocks, start, end, weight, reference_text, rows, reference_conditioning,
              temporal=False, guide=pipeline.GUIDES[0]):
        if weight < 0:  # AUTO
            weight = families.of(model).edit_recipe(model).weight
        opts = attention.ReferenceOptions(blocks, start, end, weight, reference_text, rows, reference_conditioning,
                                          temporal)
        return (pipeline.with_reference(model, trajectory, opts, guide),)


class GuidedSample(GuidedSampleNode):
    DESCRIPTION = ("Samples the trajectory's grid with a new prompt while the patched attention keeps the source's "
                   "layout and motion. Starts from the inverted noise (or fresh noise, to compare). Optionally "
                   "masks the edit: outside the mask each step follows the trajectory.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "A model from Reference Attention."}),
            "conditioning": (CONDITIONING, {"tooltip": "The edited prompt (the source prompt reconstructs)."}),
            "guidance": ("FLOAT", {**EDIT_GUIDANCE[1], "tooltip": EDIT_GUIDANCE[1]["tooltip"] + " Stable Video "
                         "Diffusion: the same scale on every frame (Guided Sample (SVD) has SVD's min/max)."}),
            "dynamic_cfg": DYNAMIC,
            "start": START,
            "seed": SEED,
            "negative": NEGATIVE,
        }, "optional": {
            "first_frame": ("IMAGE", {"tooltip": "Image-to-video models only: an edited first frame to condition "
                                                 "the edit on (the source's first frame is used otherwise)."}),
            "tuned_eta": TUNED_ETA,
            "mask_threshold": ("FLOAT", {"default": MASK_THRESHOLD, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip":
                               "CogVideoX and Wan (on by default; Stable Video Diffusion takes only a connected "
                               "MASK): above 0, mask the edit by a map of where the prompt's change acts "
                               "(mask_source), smoothed and cut per frame (mask_cut: with 'otsu' any value above 0 "
                               "switches it on; with 'quantile' this is the quantile kept, 0.9 = the top tenth, "
                               "LEDITS++'s default); 0 = no mask. With the source prompt (and first frame) the mask is "
                               "empty (exact reconstruction). The edit_mask output shows it."}),
            "mask_source": (list(editmask.SOURCES), {"default": MASK_SOURCE, "tooltip":
                            "The map the mask is cut from: 'attention' = the sample's attention to the prompt words "
                            "that differ from the source prompt (Prompt-to-Prompt, LEDITS++); 'difference' = how "
                            "much the model's prediction changes between the source and the edited prompt (and "
                            "first_frame) on the trajectory's cleanest 40 % of steps (DiffEdit; 2 extra model calls "
                            "per ten steps, at most 10, before sampling). An edited first_frame with the source prompt needs "
                            "'difference'."}),
            "mask_cut": (list(editmask.CUTS), {"default": MASK_CUT, "tooltip":
                         "How each frame's map becomes the mask: 'otsu' keeps the part that stands out from the "
                         "rest (Otsu's level), as large as the changed region is; 'quantile' keeps the share of "
                         "the frame that mask_threshold says, whatever the object's size."}),
            "mask": MASK_INPUT,
            "start_at": GUIDED_START_AT,
            "mask_grow": MASK_GROW,
            "mask_level": GUIDED_MASK_LEVEL,
        }}

    def sample(self, model, conditioning, guidance, dynamic_cfg, start, seed, negative, first_frame=None,
               tuned_eta=1.0, mask_threshold=MASK_THRESHOLD, mask=None, mask_source=MASK_SOURCE, mask_cut=MASK_CUT,
               start_at=START_AT, mask_grow=0, mask_level=0.0):
        return run_guided(model, conditioning, Guidance(guidance, dynamic_cfg), start, seed, negative, first_frame,
                          tuned_eta, mask_threshold, mask, mask_source, mask_cut, start_at, mask_grow, mask_level)
