"""Inversion and sampling for a loaded Stable Video Diffusion model: the Euler (EDM) math of
`vidinv.edm` driven by the denoiser of `vidinv.models.svd`, the inversion recorded as the same
TRAJECTORY value as CogVideoX (``family="svd"``, sigmas in place of timesteps, the first frame's
conditioning as the source), and guided sampling with reference K/V in the UNet's self-attention
(`vidinv.svd_attention`). Thin glue, the mirror of `vidinv.inversion`; no ComfyUI here.

`hooks` as in `vidinv.inversion`: ``hooks.before_call()`` runs before every UNet call (reference
passes included) and ``hooks.after_step(i, total, info)`` after every step.

Latents are SVD's ``[B, F, C, h, w]``, scaled by the VAE's factor, unscaled in sigma
(``x = clean + sigma * noise``): the noise a sampler starts from is the latent at the grid's first
sigma, so an inverted trajectory's noise goes in as it is and fresh unit noise is multiplied by
`initial_sigma` first (what the pipeline does).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch

from . import attention, edm, errors, svd_attention
from .inversion import Hooks, guarded, solver_settings, start_noise
from .models import svd
from .models.cogvideox import on_device
from .trajectory import DTYPES, Trajectory, family_of


# ----------------------------------------------------------------------------- options

@dataclasses.dataclass(frozen=True)
class SVDReferenceOptions:
    """Reference attention for SVD (what the Reference Attention node sets, SVD's part of it).

    blocks: spatial transformer blocks, "all" or indices and ranges like "0-3", "0,2", "4-".
    start, end: fraction of the sampling steps where injection is on (``start <= i/N < end``).
    weight: log-bias ``log(weight)`` on the reference logits; 1 = plain concatenation, 0 = off.
        On the bundled tiny SVD weights 1 to 8 edit alike (BENCHMARKS.md section 5); 1 is the neutral default.
    temporal: also inject into the temporal self-attention paired with each chosen block.
    rows: inject into "all" CFG rows, or only the "conditional" one (both exact under CFG).
    """
    blocks: str = "all"
    start: float = 0.0
    end: float = 1.0
    weight: float = 1.0
    temporal: bool = False
    rows: str = "all"

    def active_steps(self, steps: int) -> tuple[int, ...]:
        return attention.window_steps(self.start, self.end, steps)

    def layers(self, unet) -> tuple[str, ...]:
        return svd_attention.self_attention_layers(unet, self.blocks, self.temporal)

    def validate(self, unet) -> None:
        attention.check_window_weight_rows(self.start, self.end, self.weight, self.rows)
        self.layers(unet)


def reference_options(options, temporal: bool = False) -> SVDReferenceOptions:
    """SVD options from `SVDReferenceOptions` (as they are) or from CogVideoX's
    `vidinv.attention.ReferenceOptions` (the Reference Attention node's value): blocks, window,
    weight and rows carry over, `temporal` is added; its text fields do not apply to SVD and are
    refused unless at their neutral values (text off, reference_text "source")."""
    if options is None:
        return SVDReferenceOptions(temporal=temporal)
    if isinstance(options, SVDReferenceOptions):
        return options
    if isinstance(options, attention.ReferenceOptions):
        if options.text:
            raise errors.InputError(
                "reference 'text' does not apply to Stable Video Diffusion: its self-attention holds image tokens only "
                "(the one CLIP image token is in cross-attention, which reference attention leaves alone)",
                "Turn 'text' off for SVD.")
        if options.reference_text != "source":
            raise errors.InputError(
                f"reference_text {options.reference_text!r} does not apply to Stable Video Diffusion: its reference "
                "pass always uses the trajectory's source first frame", "Set reference_text to 'source' for SVD.")
        return SVDReferenceOptions(options.blocks, options.start, options.end, options.weight, temporal, options.rows)
    raise errors.InputError(f"reference options of type {type(options).__name__} are not SVD options",
                            "Connect the Reference Attention options.")


# ----------------------------------------------------------------------------- checks

def check_model(model) -> None:
    family = family_of(model)
    if family != "svd":
        raise errors.InputError(f"model {getattr(model, 'name', '?')!r} is a {family} model, "
                                "not Stable Video Diffusion",
                                "Load a Stable Video Diffusion folder for the SVD nodes.")


def check_inputs(model, cond, latent: torch.Tensor) -> None:
    """The latent ``[B, F, C, h, w]`` and the first-frame conditioning, before any model call."""
    check_model(model)
    if not isinstance(cond, svd.Conditioning):
        kind = f"{type(cond).__module__.rsplit('.', 1)[-1]}.{type(cond).__name__}"
        raise errors.InputError(f"the conditioning is {kind}, not an SVD first-frame conditioning",
                                "Encode the first frame with the SVD image encode node of the same model.")
    svd.check_latent(model, latent, cond)


def check_guidance(min_guidance: float, max_guidance: float) -> None:
    if not (math.isfinite(min_guidance) and math.isfinite(max_guidance) and min_guidance >= 1 and max_guidance >= 1):
        raise errors.InputError(f"guidance {min_guidance} .. {max_guidance} must be finite and >= 1 (below 1 it would "
                                "weaken the first frame instead of guiding)",
                                "SVD's defaults are min 1, max 3; 1 and 1 is no guidance.")


def grid_for(model, steps: int) -> edm.Grid:
    try:
        return edm.grid_from_config(model.scheduler_config, int(steps))
    except ValueError as err:
        raise errors.InputError(f"{model.name}: no {steps}-step Euler grid ({err})",
                                "Pick a step count between 1 and the model's training timesteps "
                                "(25 is SVD's).") from err


def initial_sigma(model, steps: int) -> float:
    """The scale of fresh unit noise at the grid's start (the scheduler's ``init_noise_sigma``)."""
    return grid_for(model, steps).init_noise_sigma


def trajectory_grid(model, traj: Trajectory) -> edm.Grid:
    """The grid the trajectory was inverted on, after checking it against the model's: its own
    stored sigmas and model times (equal to the model's up to float32 rounding)."""
    traj.check_model(model)
    grid = traj.svd_grid(model.scheduler_config)
    traj.check_sigmas(grid, model.scheduler_config)
    return edm.Grid(tuple(traj.sigmas), tuple(traj.timesteps), grid.prediction_type, grid.init_noise_sigma)


def source_conditioning(traj: Trajectory) -> svd.Conditioning:
    """The first-frame conditioning the trajectory was inverted with (its reference passes use it)."""
    traj.check_family("svd")
    c = traj.conditioning
    return svd.Conditioning(traj.embeds.float(), traj.image_latents.float(),
                            torch.tensor(c["added_time_ids"], dtype=torch.float32), int(c["fps"]),
                            int(c["motion_bucket_id"]), float(c["noise_aug_strength"]), int(c["seed"]),
                            traj.model_fingerprint)


# ----------------------------------------------------------------------------- inversion

@torch.no_grad()
def invert(model, cond: svd.Conditioning, latent: torch.Tensor, steps: int = 25, min_guidance: float = 1.0,
           max_guidance: float = 1.0, iters: int = 10, tol: float = 1e-5, memory: int = 5,
           damping: float | None = None, dtype: str = "fp32", hooks: Hooks | None = None) -> Trajectory:
    """Exact inversion of SVD's deterministic Euler sampler: `latent` (``[B, F, C, h, w]``, scaled)
    -> Trajectory on the model's `steps`-step sigma grid, with frame-wise guidance
    `min_guidance` -> `max_guidance` (the same in both directions).

    At most ``1 + iters`` UNet calls per step on average, pooled across steps with a tolerance
    (`vidinv.ddim.step_budget`). `damping` None picks 1 without guidance and 0.5 with CFG, as for
    CogVideoX (on the tiny random SVD neither wins everywhere under guidance 1 -> 3: undamped stalls
    at one step of a 12-step grid where 0.5 converges, and 0.5 is slower on 14 and 25 steps)."""
    hooks = hooks or Hooks()
    check_inputs(model, cond, latent)
    check_guidance(min_guidance, max_guidance)
    damping = solver_settings(damping, max(min_guidance, max_guidance), dtype)
    grid = grid_for(model, steps)
    denoise = guarded(svd.make_denoiser(model, cond, grid, min_guidance, max_guidance), hooks)

    def after(info):
        hooks.after_step(info["i"], steps, {"sigma": info["sigma"], "residual": info["stats"].residual,
                                             "calls": info["stats"].calls})

    with on_device(model.unet, model):
        latents, stats = edm.invert(denoise, latent, grid.sigmas, iters, tol, damping, memory,
                                    prediction_type=grid.prediction_type, callback=after)
    return Trajectory(
        latents=torch.stack(latents).to(DTYPES[dtype]), timesteps=list(grid.timesteps),
        scheduler_config=dict(model.scheduler_config), model_fingerprint=model.fingerprint, model_name=model.name,
        prompt="", negative_prompt="", embeds=cond.image_embeds.float(),
        negative_embeds=torch.zeros_like(cond.image_embeds, dtype=torch.float32),
        guidance=float(max_guidance), dynamic_cfg=False, iterations=int(iters), tolerance=float(tol),
        residuals=[s.residual for s in stats], calls=[s.calls for s in stats],
        image_latents=cond.image_latents.float(), extra={"damping": float(damping), "memory": int(memory)},
        family="svd", sigmas=list(grid.sigmas),
        conditioning={"added_time_ids": cond.added_time_ids.tolist(), "fps": cond.fps,
                      "motion_bucket_id": cond.motion_bucket_id, "noise_aug_strength": cond.noise_aug_strength,
                      "seed": cond.seed, "min_guidance": float(min_guidance), "max_guidance": float(max_guidance)})


# ----------------------------------------------------------------------------- sampling

def run(model, cond: svd.Conditioning, noise: torch.Tensor, grid: edm.Grid, min_guidance: float,
        max_guidance: float, hooks: Hooks, attention: Callable | None = None) -> torch.Tensor:
    """The Euler loop on `grid`; `attention(i, x)` as in `svd.make_denoiser`. ``hooks.before_call``
    runs right before the sample's UNet call of every step (after the step's reference pass,
    which guards its own call)."""
    if attention is None:
        denoise = guarded(svd.make_denoiser(model, cond, grid, min_guidance, max_guidance), hooks)
    else:
        def checked(i, x):
            ctx = attention(i, x)
            hooks.before_call()
            return ctx
        denoise = svd.make_denoiser(model, cond, grid, min_guidance, max_guidance, attention=checked)

    def after(info):
        hooks.after_step(info["i"], grid.steps, {"sigma": info["sigma"], "x": info["x"], "denoised": info["denoised"]})

    with on_device(model.unet, model):
        return edm.sample(denoise, noise, grid.sigmas, after)


@torch.no_grad()
def sample(model, cond: svd.Conditioning, noise: torch.Tensor, steps: int = 25, min_guidance: float = 1.0,
           max_guidance: float = 1.0, hooks: Hooks | None = None,
           attention: Callable | None = None) -> torch.Tensor:
    """Deterministic Euler sampling (SVD's sampler with s_churn = 0) on the model's `steps`-step grid;
    returns the clean latent ``[B, F, C, h, w]``. `noise` is the latent at the first sigma, unscaled
    (a trajectory's noise as it is; fresh unit noise times `initial_sigma`). `attention(i, x)` is an
    optional per-step context for the UNet call (`vidinv.svd_attention.per_step`; it must guard
    its own model calls with the hooks)."""
    hooks = hooks or Hooks()
    check_inputs(model, cond, noise)
    check_guidance(min_guidance, max_guidance)
    return run(model, cond, noise, grid_for(model, steps), min_guidance, max_guidance, hooks, attention)


@torch.no_grad()
def guided_sample(model, cond: svd.Conditioning | None, traj: Trajectory, options=None, min_guidance: float = 1.0,
                  max_guidance: float = 1.0, start: str = "inverted", seed: int = 0,
                  hooks: Hooks | None = None) -> torch.Tensor:
    """Sample the trajectory's grid with the first-frame conditioning `cond` (an edited first
    frame; None = the trajectory's own) while the chosen self-attention layers also attend to
    the K/V of the trajectory latent at each step, recomputed through the same UNet with the
    trajectory's source conditioning: one row per video, shared by the CFG rows, or, for a
    trajectory inverted under CFG sampled with CFG into every row, one per CFG row with the
    conditioning that row used at inversion (zero image conditioning for the unconditional row),
    so that each row's reference duplicates its own keys on reconstruction (DESIGN fact 5).

    `options`: `SVDReferenceOptions`, or CogVideoX's `vidinv.attention.ReferenceOptions` (see
    `reference_options`). With ``start="inverted"`` and the source conditioning this reconstructs
    as plain sampling does, for any options."""
    hooks = hooks or Hooks()
    check_model(model)
    grid = trajectory_grid(model, traj)
    opts = reference_options(options)
    opts.validate(model.unet)
    source = source_conditioning(traj)
    cond = source if cond is None else cond
    noise = start_noise(traj, start, seed, grid.init_noise_sigma)
    check_inputs(model, cond, noise)
    check_guidance(min_guidance, max_guidance)
    layers = opts.layers(model.unet)
    active = set(opts.active_steps(traj.steps))
    sample_cfg = svd.uses_cfg(min_guidance, max_guidance)
    inverted = (traj.conditioning.get("min_guidance", 1.0), traj.conditioning.get("max_guidance", traj.guidance))
    per_cfg_row = attention.reference_per_cfg_row(sample_cfg, svd.uses_cfg(*inverted), opts.rows)
    reference_call = guarded(svd.make_denoiser(model, source, grid, *(inverted if per_cfg_row else (1.0, 1.0))),
                             hooks)
    with svd_attention.installed(model.unet, layers) as channel:
        per_step = svd_attention.per_step(channel, layers, traj.latent_for_step, reference_call, opts.weight,
                                          opts.rows, sample_cfg, active.__contains__)
        return run(model, cond, noise, grid, min_guidance, max_guidance, hooks, per_step)
