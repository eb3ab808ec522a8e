"""The native path's nodes: exact inversion of core's Euler sampler on a MODEL from core's loaders, reference
attention as a MODEL patch, FlowEdit on a flow MODEL, and loading a native trajectory back. Core's own
samplers do the sampling (SamplerCustomAdvanced with the inverted NOISE and the patched MODEL); the adapter
to core's internals is `nodes/native.py`, imported when a node runs."""
from __future__ import annotations

import torch

from ..vidinv import attention, budget, errors, flowedit, trajectory
from ..vidinv.family import check_scale
from ..vidinv.models import native as family
from . import host
from .common import CATEGORY, DAMPING, ITERATIONS, SOLVER, TOLERANCE, TRAJECTORY, solver_settings
from ..vidinv.pipeline import check_dtype
from .pipeline_nodes import ROWS_INPUT, TRAJECTORY_DTYPE, reference_window
from .trajectory_nodes import file_changed, trajectory_files

NATIVE = f"{CATEGORY}/native"
NOISE_TIP = ("The inverted noise as core's NOISE: connect it to SamplerCustomAdvanced (with the same SIGMAS, cfg "
             "and conditioning it reconstructs the latent; with the Reference Attention (native) MODEL and an "
             "edited prompt it edits). Two models: the high-noise sampler takes it, the low-noise one DisableNoise.")


def native_trajectory(traj, node: str):
    if traj.family != family.NAME:
        raise errors.InputError(f"{node} takes a trajectory of a ComfyUI MODEL (from Invert (native)); this one is "
                                f"a {traj.family_name} trajectory made with {traj.model_name!r}",
                                "Use the pack's own nodes for it (Guided Sample, DDIM / Flow Sample), or invert "
                                "the video again with Invert (native).")
    return traj


# Wan 2.2 A14B's second expert, on the nodes that run steps of core's MODEL (Invert, FlowEdit)
EXPERT_INPUTS = {
    "low_noise_model": ("MODEL", {"tooltip": "Wan 2.2 A14B: the low-noise expert, which runs from switch_step on."}),
    "switch_step": ("INT", {"default": 0, "min": 0, "max": 10000,
                            "tooltip": "With a low-noise model: the first step it runs (the high-noise sampler's "
                                       "end_at_step); steps before it use 'model'."}),
}


def experts_of(node: str, model, low_noise_model, switch_step: int) -> list:
    """The MODEL and, for Wan 2.2 A14B, the low-noise expert: switch_step only with a second model, no cache node
    on either, both sampling alike (kind and sigma_data)."""
    from . import native
    if switch_step and low_noise_model is None:
        raise errors.InputError(f"{node}: switch_step {switch_step} without a low_noise_model",
                                "Connect Wan 2.2's low-noise expert, or set switch_step to 0 for one model.")
    experts = [model] + ([low_noise_model] if low_noise_model is not None else [])
    for m in experts:
        native.refuse_caches(m, node)
    kinds = {native.model_sampling(m)[:2] for m in experts}
    if len(kinds) > 1:
        raise errors.InputError(f"{node}: the two models sample differently ({sorted(kinds)})",
                                "Give both experts the same model sampling (ModelSamplingSD3 shift).")
    return experts


def noise_of(traj, model):
    from . import native
    return native.InvertedNoise(family.from_pack(traj.noise, int(traj.scheduler_config["ndim"])), model,
                                traj.sigmas[0])


class NativeInvert:
    DESCRIPTION = ("Exact inversion of core's Euler sampler on a MODEL from core's loaders (Load Diffusion Model, "
                   "with LoRAs, fp8, GGUF, core's offloading): each step's inverse is solved with the pack's "
                   "fixed-point solver through core's own CFG, so that SamplerCustomAdvanced (sampler 'euler', the "
                   "same SIGMAS, cfg and conditioning) started from the NOISE returns the latent to within the "
                   "reported residuals. Wan 2.2's two experts: connect the low-noise MODEL and the step where it "
                   "takes over.")
    CATEGORY = NATIVE
    RETURN_TYPES = (TRAJECTORY, "NOISE")
    RETURN_NAMES = ("trajectory", "noise")
    OUTPUT_TOOLTIPS = ("The trajectory (every latent, the sigmas, each CFG row's conditioning): Reference Attention "
                       "(native) and Save Trajectory take it.", NOISE_TIP)
    FUNCTION = "invert"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model to invert with (the high-noise expert of Wan 2.2 A14B)."}),
            "positive": ("CONDITIONING", {"tooltip": "Describe the source video."}),
            "negative": ("CONDITIONING", {"tooltip": "The negative prompt (used when cfg > 1)."}),
            "cfg": ("FLOAT", {"default": 1.0, "min": 1.0, "max": 30.0, "step": 0.1,
                              "tooltip": "Classifier-free guidance, as the sampler will use it: the round trip is "
                                         "exact at any cfg when both directions use the same."}),
            "sigmas": ("SIGMAS", {"tooltip": "From a scheduler node (BasicScheduler), as for the sampler."}),
            "latent": ("LATENT", {"tooltip": "The source video's latent from core's VAE Encode."}),
            "iterations": ITERATIONS,
            "tolerance": TOLERANCE,
            "solver": SOLVER,
            "damping": DAMPING,
            "trajectory_dtype": TRAJECTORY_DTYPE,
        }, "optional": {
            **EXPERT_INPUTS,
        }}

    def invert(self, model, positive, negative, cfg, sigmas, latent, iterations, tolerance, solver, damping,
               trajectory_dtype, low_noise_model=None, switch_step=0):
        from . import native
        check_scale(cfg)
        storage = check_dtype(trajectory_dtype)
        experts = experts_of("Invert (native)", model, low_noise_model, switch_step)
        kind, sigma_data, _ = native.model_sampling(model)
        sig = family.check_sigmas(sigmas.cpu())
        steps = len(sig) - 1
        family.expert_steps(steps, switch_step, len(experts))  # checks switch_step for two models
        samples = native.latent_samples(latent, model)
        family.to_pack(samples)  # a latent of another rank is refused here, before any model call
        budget.require_trajectory(steps, samples)
        settings = solver_settings(iterations, tolerance, solver, damping).resolved(cfg > 1.0)
        capture = native.ConditioningCapture()
        progress = host.Progress(steps)
        done = iter(range(steps))

        def after():
            progress.after_step(next(done), steps, {})

        # the cleanest part first; with two models the second runs the steps from switch_step on
        parts = [(model, sigmas)] if len(experts) == 1 else \
            [(experts[1], sigmas[switch_step:]), (model, sigmas[:switch_step + 1])]
        latents, stats = [], []
        for m, part in parts:  # each part starts where the one before ended
            lat, st = native.invert_segment(m, positive, negative, cfg, part, samples, settings, capture,
                                            start=latents[-1] if latents else None, after=after)
            latents, stats = latents + lat[1 if latents else 0:], stats + st
        prints = [native.fingerprint(m) for m in experts]
        traj = trajectory.Trajectory(
            latents=torch.stack([family.to_pack(x.float().cpu()) for x in latents]).to(storage),
            timesteps=sig[:-1], sigmas=sig, family=family.NAME, model_name=type(model.model).__name__,
            scheduler_config={"sampling": kind, "sigma_data": sigma_data, "ndim": samples.dim(),
                              "model": type(model.model).__name__},
            model_fingerprint=prints[0], prompt="", negative_prompt="",
            embeds=torch.zeros(family.PLACEHOLDER), negative_embeds=torch.zeros(family.PLACEHOLDER),
            guidance=float(cfg), dynamic_cfg=False, iterations=int(settings.iters), tolerance=float(settings.tol),
            residuals=[s.residual for s in stats], calls=[s.calls for s in stats], model_conds=capture.conds,
            extra={**settings.record(), "experts": prints, "switch_step": int(switch_step) if len(experts) > 1 else 0})
        trajectory.validate(traj, "the native inversion")
        host.free_memory()
        return {"ui": {"vinv_trajectory": [traj.summary()]}, "result": (traj, noise_of(traj, model))}


class NativeReferenceAttention:
    DESCRIPTION = ("Reference attention as a MODEL patch (core's Wan 2.1 / 2.2): a clone of the MODEL whose chosen "
                   "blocks' self-attention also attends to the K/V of the trajectory's latent at each step's sigma "
                   "(recomputed through the same model with the conditioning each CFG row had at inversion), so that "
                   "core's SamplerCustomAdvanced with an edited prompt is the guided sample. With the source prompt it "
                   "reconstructs as plain sampling does. The MODEL given is left untouched; patch each of Wan 2.2's "
                   "two experts with the same trajectory.")
    CATEGORY = NATIVE
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The patched MODEL: give it to the sampler's guider.",)
    FUNCTION = "patch"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model (or one expert) the trajectory was inverted with."}),
            "trajectory": (TRAJECTORY, {"tooltip": "From Invert (native) or Load Trajectory (native)."}),
            **reference_window(),
            "rows": ROWS_INPUT,
        }}

    def patch(self, model, trajectory, blocks, start, end, weight, rows):
        from . import native
        traj = native_trajectory(trajectory, "Reference Attention (native)")
        native.refuse_caches(model, "Reference Attention (native)")
        count = native.wan_blocks(model)
        if native.fingerprint(model) not in traj.extra["experts"]:
            raise errors.InputError(f"this MODEL is not the one the trajectory was inverted with ({traj.model_name!r}: "
                                    f"fingerprints {', '.join(traj.extra['experts'])})",
                                    "Patch the model (or expert) that made the trajectory, with the same LoRAs.")
        options = attention.ReferenceOptions(blocks=blocks, start=start, end=end, weight=weight, rows=rows)
        options.validate(count)
        patched = native.ReferencePatch(traj, options, options.block_indices(count)).install(model)
        return {"ui": {"vinv_guidance": [{"steps": traj.steps, "active": list(options.active_steps(traj.steps)),
                                          "blocks": blocks, "weight": weight}]}, "result": (patched,)}


class NativeFlowEdit:
    DESCRIPTION = ("FlowEdit (Kulikov et al., ICCV 2025) on a flow MODEL from core's loaders (Wan, with LoRAs, fp8, "
                   "GGUF, core's offloading): edits the clean latent without inverting it, integrating the difference "
                   "of the target and source prompts' velocities, each on a freshly noised copy of the source, over "
                   "the paper's steps n_max down to n_min + 1 of the SIGMAS, then n_min plain steps with the target. "
                   "Both velocities go through core's own CFG and conditioning; the update is the pack's FlowEdit "
                   "node's (the same noises for the same seed). With the source prompt on both sides, the same cfg "
                   "and n_min 0 it returns the latent. A LATENT with a noise mask (Set Latent Noise Mask) is edited "
                   "inside the mask only, the source kept outside it at every step, as core's samplers keep it. Wan "
                   "2.2 A14B: connect the low-noise expert and the step it takes over at.")
    CATEGORY = NATIVE
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The edited latent: core's VAE Decode shows it.",)
    FUNCTION = "edit"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "A MODEL core samples as flow (CONST: Wan; ModelSamplingSD3 sets its "
                                           "shift); Wan 2.2 A14B's high-noise expert."}),
            "source": ("CONDITIONING", {"tooltip": "Describes the source video."}),
            "target": ("CONDITIONING", {"tooltip": "Describes the edited video."}),
            "negative": ("CONDITIONING", {"tooltip": "The negative prompt of both velocities (used where a cfg is "
                                                     "above 1)."}),
            "sigmas": ("SIGMAS", {"tooltip": "From a scheduler node (BasicScheduler): the steps the window is "
                                             "counted on (the paper's T = their count)."}),
            "latent": ("LATENT", {"tooltip": "The clean source latent from core's VAE Encode (not inverted noise); "
                                              "with a noise mask (Set Latent Noise Mask) only the masked region is "
                                              "edited."}),
            "n_max": ("INT", {"default": 33, "min": 1, "max": 10000,
                              "tooltip": "FlowEdit starts n_max steps before the clean end (= the step count "
                                         "starts at pure noise); 33 of 50 is the paper's setting. 2 guided calls per "
                                         "step in the window."}),
            "n_min": ("INT", {"default": 0, "min": 0, "max": 9999,
                              "tooltip": "The last n_min steps are plain sampling of the target from the re-noised "
                                         "edit (the paper's tail); 0 = none."}),
            "n_avg": ("INT", {"default": 1, "min": 1, "max": 16,
                              "tooltip": "Fresh noises averaged per step (each costs 2 guided calls)."}),
            "source_cfg": ("FLOAT", {"default": 3.5, "min": 1.0, "max": 30.0, "step": 0.1,
                                     "tooltip": "Classifier-free guidance of the source velocity (1 = off)."}),
            "target_cfg": ("FLOAT", {"default": 13.5, "min": 1.0, "max": 30.0, "step": 0.1,
                                     "tooltip": "Classifier-free guidance of the target velocity; the paper uses "
                                                "more than the source's (3.5 / 13.5, the pack FlowEdit node's)."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**63 - 1,
                             "tooltip": "Seed of the fresh noise drawn at every step."}),
        }, "optional": {
            **EXPERT_INPUTS,
        }}

    def edit(self, model, source, target, negative, sigmas, latent, n_max, n_min, n_avg, source_cfg, target_cfg,
             seed, low_noise_model=None, switch_step=0):
        from . import native
        node = "FlowEdit (native)"
        check_scale(source_cfg)
        check_scale(target_cfg)
        experts = experts_of(node, model, low_noise_model, switch_step)
        kind, _, sampling = native.model_sampling(model)
        if kind != "flow":
            raise errors.InputError(f"{node} needs a flow-matching MODEL; this one samples as "
                                    f"{type(sampling).__name__}", "Load a flow model (Wan), or edit this one with "
                                    "Invert (native) + Reference Attention (native) + SamplerCustomAdvanced.")
        noise_mask = checked_noise_mask(node, latent.get("noise_mask"))
        steps = len(family.check_sigmas(sigmas.cpu())) - 1
        family.expert_steps(steps, switch_step, len(experts))  # checks switch_step for two models
        first, _ = flowedit.window(steps, n_min, n_max, n_avg)
        samples = native.latent_samples(latent, model)
        family.to_pack(samples)  # a latent of another rank is refused here, before any model call
        progress = host.Progress(n_max)

        def after(info):
            progress.after_step(info["i"] - first, n_max, {})

        out = native.flow_edit(experts, switch_step, source, target, negative, source_cfg, target_cfg, sigmas,
                               samples, n_max, n_min, n_avg, seed, after, noise_mask)
        host.free_memory()
        return ({**{k: v for k, v in latent.items() if k != "samples"}, "samples": out.float().cpu()},)


def checked_noise_mask(node: str, mask) -> torch.Tensor | None:
    """A LATENT's noise_mask (Set Latent Noise Mask; 1 = may change) as core's samplers take it: a finite ``[..., H,
    W]`` tensor in 0..1 (core resizes it to the latent), checked before any model call."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.dim() < 2 or mask.numel() == 0:
        raise errors.InputError(f"{node}: the LATENT's noise_mask is {type(mask).__name__} "
                                f"{tuple(getattr(mask, 'shape', ()))}; a mask [..., height, width] is needed",
                                "Set it with Set Latent Noise Mask from a MASK.")
    mask = mask.float()
    if not torch.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
        raise errors.InputError(f"{node}: the LATENT's noise_mask holds values outside 0..1 ({float(mask.min()):.3g} "
                                f"to {float(mask.max()):.3g})", "Give a MASK of values from 0 (keep) to 1 (edit).")
    return mask


class NativeLoadTrajectory:
    DESCRIPTION = ("Loads a trajectory of a ComfyUI MODEL (saved by Save Trajectory after Invert (native)) and "
                   "checks it against the MODEL; returns it with its inverted NOISE.")
    CATEGORY = NATIVE
    RETURN_TYPES = (TRAJECTORY, "NOISE")
    RETURN_NAMES = ("trajectory", "noise")
    OUTPUT_TOOLTIPS = ("The loaded trajectory.", NOISE_TIP)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model (the high-noise expert of two) the trajectory belongs to."}),
            "file": (trajectory_files(), {"tooltip": "A .safetensors trajectory from ComfyUI's input folder, or one "
                                                     "saved to the output folder ('[output]')."}),
        }}

    IS_CHANGED = classmethod(file_changed)

    def load(self, model, file):
        from . import native
        traj = native_trajectory(trajectory.load(host.annotated_path(file)), "Load Trajectory (native)")
        if native.fingerprint(model) != traj.extra["experts"][0]:
            raise errors.InputError(f"this trajectory was made with another MODEL ({traj.model_name!r}, fingerprint "
                                    f"{traj.extra['experts'][0]})", "Load the model (the high-noise expert) that "
                                    "inverted the video, with the same LoRAs.")
        return {"ui": {"vinv_trajectory": [traj.summary()]}, "result": (traj, noise_of(traj, model))}
