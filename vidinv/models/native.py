"""ComfyUI's own models (a MODEL from core's loaders, CONDITIONING, SIGMAS from core's scheduler nodes):
the pack's side of the native path, pure and without ComfyUI. Everything that touches core's objects is
in `nodes/native.py`, the adapter; this module holds the math and the trajectory kind.

**Core's Euler step.** A core sampler sees ``D(x, sigma)``, the denoised estimate after CFG, for a
latent x in k-diffusion space (``x = clean + sigma noise`` for EPS / V models, ``x = (1 - sigma)
clean + sigma noise`` for flow models, CONST). Its ``euler`` sampler steps ``x + (x - D) / sigma *
(sigma_next - sigma)``, which is the affine step ``x_next = a x + b D`` with ``a = sigma_next / sigma``
and ``b = 1 - a``: the form `vidinv.solver` inverts. Written ``D = c_skip x + R`` (c_skip = 1 for flow
and EPS, where ``D = x - sigma F``; ``sigma_data^2 / (sigma^2 + sigma_data^2)`` for V), the inverse
step is solved in the split form of `vidinv.edm`, well conditioned up to the clean end (sigma 0).

**The trajectory kind** ``"native"``: latents ``[T+1, B, F, C, H, W]`` in the model's internal latent
space (after core's ``process_latent_in``; a 4-D image latent has F = 1), cleanest first, latents[k]
at ``sigmas[T - k]``; `timesteps` are the T sigmas the model is called at; ``scheduler_config`` holds the
model's sampling kind, sigma_data, the core latent's rank and model class; ``model_conds`` the
model-level conditioning each CFG row used at inversion (``"0.c_crossattn"``: the positive rows,
``"1.…"``: the negative rows), which the reference passes reuse (DESIGN fact 5); ``extra.experts`` the
fingerprints of the models in step order and ``extra.switch_step`` where the second one takes over.
`embeds` / `negative_embeds` are unused placeholders (``[1, 1, 1]`` zeros).
"""
from __future__ import annotations

import math

import torch

from .. import errors, solver

NAME = "native"
SAMPLING_KINDS = ("flow", "eps", "v")  # core's CONST, EPS and V_PREDICTION (EDM included)
VERSION = 6  # trajectory files of this kind (earlier packs read up to 5 and refuse them)
PLACEHOLDER = (1, 1, 1)  # the shape of embeds / negative_embeds in a native trajectory


# ----------------------------------------------------------------------------- the step

def c_skip(kind: str, sigma: float, sigma_data: float = 1.0) -> float:
    """The part of core's D proportional to x: 1 for flow and EPS models, ``sigma_data^2 / (sigma^2 +
    sigma_data^2)`` for V-prediction."""
    if kind not in SAMPLING_KINDS:
        raise errors.InputError(f"model sampling {kind!r} is not one of {', '.join(SAMPLING_KINDS)}",
                                "Use a flow (CONST), EPS or V-prediction model.")
    return sigma_data ** 2 / (sigma ** 2 + sigma_data ** 2) if kind == "v" else 1.0


def check_sigmas(sigmas) -> list[float]:
    """SIGMAS as Python floats: at least two, finite, strictly decreasing, none negative."""
    values = [float(s) for s in (sigmas.flatten().tolist() if isinstance(sigmas, torch.Tensor) else sigmas)]
    if len(values) < 2 or not all(math.isfinite(s) for s in values):
        finite = "" if all(map(math.isfinite, values)) else ", not all finite"
        raise errors.InputError(f"SIGMAS has {len(values)} value(s){finite}; an inversion needs at least two finite "
                                "noise levels",
                                "Connect SIGMAS from a scheduler node (BasicScheduler) with steps >= 1.")
    if any(not a > b for a, b in zip(values, values[1:])) or values[-1] < 0:
        raise errors.InputError(f"SIGMAS {errors.shorten(str([round(s, 4) for s in values]))} is not strictly "
                                "decreasing to a value >= 0, as a sampler's sigmas are",
                                "Connect a scheduler's SIGMAS unchanged (no FlipSigmas: the inversion runs them "
                                "backwards itself).")
    return values


def euler_grid(sigmas, kind: str, sigma_data: float = 1.0) -> solver.Grid:
    """Core's Euler sampler on `sigmas` (noisiest first) as affine steps of D for `vidinv.solver`."""
    sigmas = check_sigmas(sigmas)
    points = []
    for s, nxt in zip(sigmas, sigmas[1:]):
        a = nxt / s
        points.append(solver.Step(a, 1.0 - a, c_skip(kind, s, sigma_data), (0.0, 1.0), {"sigma": s},
                                  f"sigma {s:.4g}", f"sigma {nxt:.4g} -> {s:.4g}"))
    return solver.Grid("euler", tuple(points), tuple(sigmas[:-1]), kind, 1.0, tuple(sigmas),
                       tuple((1.0, s) for s in sigmas))


# ----------------------------------------------------------------------------- layouts

def to_pack(x: torch.Tensor) -> torch.Tensor:
    """A core latent (``[B, C, F, H, W]`` video or ``[B, C, H, W]`` image) as the pack's ``[B, F, C, H, W]``."""
    if x.dim() == 5:
        return x.permute(0, 2, 1, 3, 4)
    if x.dim() == 4:
        return x.unsqueeze(1)
    raise errors.InputError(f"the latent has shape {tuple(x.shape)}; a video [B, C, F, H, W] or image [B, C, H, W] "
                            "latent is needed", "Connect a LATENT from core's VAE Encode or an empty latent node.")


def from_pack(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """The inverse of `to_pack` for a core latent of rank `ndim`."""
    return x.permute(0, 2, 1, 3, 4) if ndim == 5 else x.squeeze(1)


# ----------------------------------------------------------------------------- sigmas of a trajectory

def same_sigma(a: float, b: float, rel: float = 1e-5) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)


def step_of(sigmas: list[float], sigma: float) -> int | None:
    """The sampling step (noisiest first) whose input sits at `sigma`, or None."""
    return next((i for i, s in enumerate(sigmas[:-1]) if same_sigma(s, sigma)), None)


def check_sub_run(traj_sigmas: list[float], sample_sigmas: list[float]) -> int:
    """Where `sample_sigmas` sits in the trajectory's sigmas: they must be a contiguous run of them (the
    whole grid, or one expert's part of it, as SplitSigmas makes). Returns the run's first step."""
    n = len(sample_sigmas)
    for start in range(len(traj_sigmas) - n + 1):
        if all(same_sigma(a, b) for a, b in zip(traj_sigmas[start:start + n], sample_sigmas)):
            return start
    raise errors.InputError(
        f"the sampler's SIGMAS ({n - 1} steps from {sample_sigmas[0]:.4g} to {sample_sigmas[-1]:.4g}) are not the "
        f"trajectory's ({len(traj_sigmas) - 1} steps from {traj_sigmas[0]:.4g} to {traj_sigmas[-1]:.4g}) nor a "
        "contiguous part of them", "Sample with the same scheduler, steps and model sampling (shift) as the "
        "inversion, split with SplitSigmas at most.")


def expert_steps(steps: int, switch_step: int, experts: int) -> list[int]:
    """Which model (0: the first, 1: the second) runs each sampling step, noisiest first: the first
    model before `switch_step`, the second from it on (core's two samplers with a step split)."""
    if experts == 1:
        return [0] * steps
    if not (isinstance(switch_step, int) and 0 < switch_step < steps):
        raise errors.InputError(f"switch_step {switch_step!r} must be between 1 and {steps - 1} for {steps} steps "
                                "with two models", "Give the step where the low-noise model takes over (the "
                                "high-noise sampler's end_at_step).")
    return [0 if i < switch_step else 1 for i in range(steps)]


# ----------------------------------------------------------------------------- the trajectory kind

class NativeFamily:
    """The trajectory side of the native path, registered in `vidinv.families` like a model family
    (so a native trajectory is refused by the diffusers families' nodes and the other way round). Its
    models are core's MODEL values, which the pack's own nodes do not take."""
    name = NAME
    display_name = "ComfyUI-native"
    own_nodes = "For ComfyUI's own models use Invert (native, exact), Reference Attention (native) and core's SamplerCustomAdvanced."  # the hint when one of its models reaches another family's node
    trajectory_version = VERSION
    text_conditioned = False  # no prompt embeddings of its own: null-text and prompt tuning refuse it
    optimisable = False  # null-text / prompt-tuning embeddings: CogVideoX's
    model_conditioned = True  # its trajectories carry model_conds
    grid_kind = "native-euler"
    solver_choice = True

    def _refuse(self, *args, **kwargs):
        raise errors.InputError("a ComfyUI-native trajectory is sampled by core's samplers with the Reference "
                                "Attention (native) patch, not by this pack's diffusers-model nodes",
                                "Use SamplerCustomAdvanced with the trajectory's NOISE and the patched MODEL.")

    networks = encode_frames = encode_video = decode = grid = check_inputs = check_guidance = denoiser = _refuse
    trajectory_fields = source_conditioning = first_frame_latents = edit_conditioning = _refuse
    reference_options = check_reference = reference_layers = reference_processors = _refuse
    edit_mask_tokens = patch_grid = reference_call = edit_recipe = _refuse

    def trajectory_guidance(self, traj):
        from ..family import Guidance
        return Guidance(traj.guidance)

    def grid_from_config(self, config: dict, steps: int):
        self._refuse()

    def check_trajectory_grid(self, traj, grid, config):
        return grid

    def check_trajectory(self, traj, model, refuse) -> None:
        return None

    def validate_trajectory(self, traj, refuse) -> None:
        cfg = traj.scheduler_config
        if cfg.get("sampling") not in SAMPLING_KINDS:
            refuse(f"scheduler_config.sampling must be one of {SAMPLING_KINDS}, got {cfg.get('sampling')!r}")
        if not (errors.is_number(cfg.get("sigma_data", 1.0)) and cfg.get("sigma_data", 1.0) > 0):
            refuse(f"scheduler_config.sigma_data must be a number > 0, got {cfg.get('sigma_data')!r}")
        if cfg.get("ndim") not in (4, 5):
            refuse(f"scheduler_config.ndim must be 4 or 5, got {cfg.get('ndim')!r}")
        sig = traj.sigmas
        if sig is None or len(sig) != traj.steps + 1:
            refuse(f"a native trajectory needs {traj.steps + 1} sigmas, got {None if sig is None else len(sig)}")
        try:
            check_sigmas(sig)
        except errors.InputError as err:
            refuse(err.problem)
        if any(not same_sigma(t, s) for t, s in zip(traj.timesteps, sig)):
            refuse("timesteps must be the first T sigmas")
        experts = traj.extra.get("experts")
        if not (isinstance(experts, list) and len(experts) in (1, 2) and all(isinstance(e, str) for e in experts)):
            refuse(f"extra.experts must list 1 or 2 model fingerprints, got {errors.describe_value(experts)}")
        expert_steps(traj.steps, traj.extra.get("switch_step", 0), len(experts))
        if traj.model_conds is None or not any(k.startswith("0.") for k in traj.model_conds):
            refuse("a native trajectory carries the positive rows' model conditioning (model_conds '0.*')")
        if traj.noise_maps is not None or traj.null_embeds is not None or traj.image_latents is not None:
            refuse("a native trajectory carries no noise maps, null-text embeddings or image latents")

    def trajectory_summary(self, traj) -> dict:
        return {"sigmas": [float(s) for s in traj.sigmas], "sampling": traj.scheduler_config.get("sampling"),
                "experts": len(traj.extra.get("experts", [])), "switch_step": traj.extra.get("switch_step")}

    def step_place(self, traj, i: int) -> str:
        return f"sigma {traj.sigmas[i]:.4g}"

    def latent_extras(self, traj):
        return None, 0


FAMILY = NativeFamily()
