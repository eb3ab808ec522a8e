"""Stable Video Diffusion's own nodes: load a folder, encode the first frame, exact Euler inversion,
Euler sampling and guided sampling with SVD's frame-wise guidance. They read SVD's inputs into the
shared values and run the shared node bodies of `pipeline_nodes`; the shared nodes (VAE, Reference
Attention, Guided Sample, trajectories) take SVD models as they are."""
from __future__ import annotations

from ..vidinv import families, video
from ..vidinv.family import Guidance
from ..vidinv.models import svd
from ..vidinv.models.loading import DTYPES
from ..vidinv.solver import Solver
from . import host
from .common import CATEGORY, CONDITIONING, ITERATIONS, MODEL, TOLERANCE
from .pipeline_nodes import (GUIDED_START_AT, MASK_INPUT, OFFLOAD, SEED, START_AT, TRAJECTORY_DTYPE, GuidedSampleNode,
                             InvertNode, LoaderNode, SampleNode, run_guided, run_invert, run_load, run_sample)

STEPS = ("INT", {"default": 25, "min": 1, "max": 1000,
                 "tooltip": "Euler steps on the model's own sigma grid (25 is SVD's default)."})
MIN_GUIDANCE = ("FLOAT", {"default": 1.0, "min": 1.0, "max": 30.0, "step": 0.1,
                          "tooltip": "Guidance of the first frame; it rises linearly to max_guidance at the last "
                                     "frame (SVD's frame-wise CFG). 1 and 1 = no guidance. Inversion applies the "
                                     "same guidance as sampling, so the round trip stays exact."})
MAX_GUIDANCE = ("FLOAT", {**MIN_GUIDANCE[1], "tooltip": "Guidance of the last frame (SVD's default is 3; 1 and 1 "
                                                        "= no guidance, the fastest exact inversion)."})
EDIT_MIN_GUIDANCE = ("FLOAT", {**MIN_GUIDANCE[1], "tooltip": "Guidance of the first frame, rising linearly to "
                                                             "max_guidance (SVD's defaults: 1 -> 3)."})
EDIT_MAX_GUIDANCE = ("FLOAT", {**MIN_GUIDANCE[1], "default": 3.0,
                               "tooltip": "Guidance of the last frame (SVD's default 3). With the source first "
                                          "frame and rows 'conditional' any guidance reconstructs."})


def available_models() -> dict:
    """The bundled tiny SVD first (the default), then SVD folders under models/SVD and
    models/diffusers (only those with an SVD UNet)."""
    models = {name: path for name, path in host.BUNDLED_SVD_MODELS.items() if path.is_dir()}
    models.update(svd.find_model_folders(host.model_roots(host.SVD_FOLDER_KINDS)))
    return models


def require_svd(model, node: str) -> None:
    families.require(model, svd.FAMILY.name, node, "Load a Stable Video Diffusion folder for the SVD nodes.")


class LoadSVD(LoaderNode):
    DESCRIPTION = ("Loads a Stable Video Diffusion model (image-to-video) from a diffusers-format folder (unet, "
                   "vae, image_encoder, feature_extractor, scheduler). Folders are found under models/SVD and "
                   "models/diffusers.")
    OUTPUT_TOOLTIPS = ("The loaded SVD model; the VAE, Reference Attention, Guided Sample and trajectory nodes "
                       "accept it too.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (list(available_models()), {
                "tooltip": "A diffusers Stable Video Diffusion folder (models/SVD/<name> or models/diffusers/<name>, "
                           "e.g. stable-video-diffusion-img2vid-xt); 'tiny-svd (bundled)' is the pack's tiny "
                           "trained SVD (64x64, 9 frames, direction = motion bucket)."}),
            "precision": (list(DTYPES), {
                "default": "fp32", "tooltip": "Weights and compute dtype. fp32 for exact inversion on small "
                                              "models; fp16 for SVD on GPUs."}),
            "offload": OFFLOAD,
        }}

    def load(self, model, precision, offload):
        return run_load(svd.load, available_models(), model, precision, offload, "SVD model",
                        "models/SVD or models/diffusers")


class SVDEncodeFirstFrame:
    DESCRIPTION = ("Encodes the first frame that conditions Stable Video Diffusion: CLIP image embeddings, the "
                   "VAE latent of the noise-augmented frame, and the time ids (fps, motion bucket, noise "
                   "augmentation). Use the source's first frame to invert and reconstruct, an edited one to edit.")
    CATEGORY = f"{CATEGORY}/model"
    RETURN_TYPES = (CONDITIONING,)
    RETURN_NAMES = ("conditioning",)
    OUTPUT_TOOLTIPS = ("The SVD first-frame conditioning for Euler Invert / Sample and Guided Sample.",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "An SVD model from Load SVD Model."}),
            "image": ("IMAGE", {"tooltip": "The first frame (only the first image of a batch is used), at the "
                                           "video's size: connect VAE Encode Video's 'frames' output."}),
            "fps": ("INT", {"default": 7, "min": 1, "max": 1000,
                            "tooltip": "Frame rate SVD is told (it is conditioned on fps - 1); 7 is the default."}),
            "motion_bucket_id": ("INT", {"default": 127, "min": 0, "max": 1023,
                                         "tooltip": "How much motion SVD is told to expect (127 is the default)."}),
            "noise_aug_strength": ("FLOAT", {"default": 0.02, "min": 0.0, "max": 10.0, "step": 0.01,
                                             "tooltip": "Noise added to the first frame before its VAE encoding "
                                                        "(also a time id); 0.02 is the default."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**63 - 1,
                             "tooltip": "Seed of the noise augmentation (drawn on the CPU: the same on every "
                                        "device)."}),
        }}

    def encode(self, model, image, fps, motion_bucket_id, noise_aug_strength, seed):
        require_svd(model, "Encode First Frame (SVD)")
        frame = video.check_images(image, "image")[:1]
        cond = svd.encode_image(model, frame, fps, motion_bucket_id, noise_aug_strength, seed)
        host.free_memory()
        return (cond,)


class SVDInvert(InvertNode):
    DESCRIPTION = ("Exact inversion of SVD's deterministic Euler sampler: solves each inverse step by fixed-point "
                   "iteration so that Euler Sample (SVD) of the result returns the input. Emits the whole "
                   "trajectory (sigma grid and first-frame conditioning included).")
    OUTPUT_TOOLTIPS = ("Every latent from clean to noise, with the sigma grid, conditioning and convergence.",
                       "The inverted noise (the trajectory's last latent).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "The SVD model to invert with (sample with the same one)."}),
            "conditioning": (CONDITIONING, {"tooltip": "The source video's first frame, from Encode First Frame "
                                                       "(SVD); guided sampling uses it for the reference pass."}),
            "latent": ("LATENT", {"tooltip": "The source video latent from VAE Encode Video (same model)."}),
            "steps": STEPS,
            "min_guidance": MIN_GUIDANCE,
            "max_guidance": MAX_GUIDANCE,
            "iterations": ITERATIONS,
            "tolerance": TOLERANCE,
            "trajectory_dtype": TRAJECTORY_DTYPE,
        }}

    def invert(self, model, conditioning, latent, steps, min_guidance, max_guidance, iterations, tolerance,
               trajectory_dtype):
        require_svd(model, "Euler Invert (SVD)")
        return run_invert(model, conditioning, latent, steps, Guidance(max_guidance, first=min_guidance),
                          Solver(iterations, tolerance), trajectory_dtype)


class SVDSample(SampleNode):
    DESCRIPTION = ("Deterministic Euler sampling with SVD (its sampler without churn) from a latent, e.g. the "
                   "inverted noise (the round trip) or a loaded trajectory's noise.")
    OUTPUT_TOOLTIPS = ("The sampled clean latent.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "The SVD model to sample with."}),
            "conditioning": (CONDITIONING, {"tooltip": "The first frame from Encode First Frame (SVD) (the "
                                                       "source's reconstructs)."}),
            "latent": ("LATENT", {"tooltip": "Starting noise at the grid's first sigma, e.g. Euler Invert's or "
                                             "Load Trajectory's noise output."}),
            "steps": STEPS,
            "min_guidance": MIN_GUIDANCE,
            "max_guidance": MAX_GUIDANCE,
        }}

    def sample(self, model, conditioning, latent, steps, min_guidance, max_guidance):
        require_svd(model, "Euler Sample (SVD)")
        return run_sample("Euler Sample (SVD)", model, conditioning, latent, steps,
                          Guidance(max_guidance, first=min_guidance))


class SVDGuidedSample(GuidedSampleNode):
    DESCRIPTION = ("Guided sampling for SVD with its frame-wise guidance: samples the trajectory's grid with a "
                   "(possibly edited) first frame while the patched self-attention keeps the source's layout and "
                   "motion. The model must come from Reference Attention. An optional MASK limits where the "
                   "edit may change the video.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "An SVD model from Reference Attention."}),
            "min_guidance": EDIT_MIN_GUIDANCE,
            "max_guidance": EDIT_MAX_GUIDANCE,
            "start": (["inverted", "fresh"], {"default": "inverted",
                                              "tooltip": "Start from the trajectory's inverted noise, or from "
                                                         "fresh noise."}),
            "seed": SEED,
        }, "optional": {
            "conditioning": (CONDITIONING, {"tooltip": "An edited first frame from Encode First Frame (SVD); "
                                                       "unconnected = the trajectory's source first frame."}),
            "mask": MASK_INPUT,
            "start_at": GUIDED_START_AT,
        }}

    def sample(self, model, min_guidance, max_guidance, start, seed, conditioning=None, mask=None, start_at=START_AT):
        require_svd(model, "Guided Sample (SVD)")
        return run_guided(model, conditioning, Guidance(max_guidance, first=min_guidance), start, seed, mask=mask,
                          start_at=start_at)
