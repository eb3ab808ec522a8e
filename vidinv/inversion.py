"""Inversion and sampling for a loaded model: the DDIM math of `vidinv.ddim` driven by the
model's denoiser, with the trajectory recorded. Thin glue; no ComfyUI here.

`hooks` (optional) is how a host follows along: ``hooks.before_call()`` runs before every model
call (ComfyUI checks for interrupts there, so an interrupt lands mid-step) and
``hooks.after_step(i, total, info)`` after every step (progress bars, previews)."""
from __future__ import annotations

import contextlib
from typing import Callable

import torch

from . import attention, ddim, errors
from .models import cogvideox
from .trajectory import DTYPES, Trajectory


class Hooks:
    """No-op hooks; hosts override what they need."""

    def before_call(self) -> None:
        pass

    def after_step(self, i: int, total: int, info: dict) -> None:
        pass


def guarded(denoise: Callable, hooks: Hooks) -> Callable:
    """The denoiser with ``hooks.before_call()`` in front of every model call."""
    def wrapped(x, t):
        hooks.before_call()
        return denoise(x, t)
    return wrapped


def auto_damping(guidance: float) -> float:
    return 0.5 if guidance > 1.0 else 1.0


def solver_settings(damping: float | None, guidance: float, dtype: str) -> float:
    """Check the inversion's damping and trajectory dtype; None damping picks `auto_damping`."""
    if damping is None:
        damping = auto_damping(guidance)
    if not 0.0 < damping <= 1.0:
        raise errors.InputError(f"damping {damping} is not in (0, 1]", "Use 1 for undamped steps, or 0 for automatic.")
    if dtype not in DTYPES:
        raise errors.InputError(f"trajectory dtype {dtype!r} is not one of {', '.join(DTYPES)}", "Pick fp32, fp16 or bf16.")
    return damping


def check_latent(model, latent: torch.Tensor) -> None:
    if latent.dim() != 5:
        raise errors.InputError(f"latent must be [B, F, C, H, W], got shape {tuple(latent.shape)}",
                                "Connect the output of this pack's VAE Encode node.")
    c = latent.shape[2]
    if c != model.latent_channels:
        raise errors.InputError(f"latent has {c} channels, {model.name} works on {model.latent_channels}",
                                "Encode the video with the same model's VAE.")
    p_t = model.patch_size_t or 1
    if latent.shape[1] % p_t:
        raise errors.InputError(f"{latent.shape[1]} latent frames do not divide into the model's temporal patches of "
                                f"{p_t}", "Encode the video with this pack's VAE Encode node (it pads the frames).")
    p = model.patch_size
    if latent.shape[-1] % p or latent.shape[-2] % p:
        raise errors.InputError(f"latent size {latent.shape[-1]}x{latent.shape[-2]} is not a multiple of the "
                                f"patch size {p}", "Resize the video to a multiple of "
                                f"{model.size_multiple} pixels before encoding.")


def check_conditioning(model, cond: cogvideox.Conditioning) -> None:
    if cond.model_fingerprint != model.fingerprint:
        raise errors.InputError("the conditioning was encoded by another model's text encoder",
                                "Encode the prompt with the model you sample with.")


def check_image_latents(model, image_latents) -> None:
    if model.is_i2v and image_latents is None:
        raise errors.InputError(f"{model.name} is an image-to-video model: the latent carries no image conditioning",
                                "Encode the video with this pack's VAE Encode node and this model.")


@torch.no_grad()
def invert(model, cond, latent: torch.Tensor, steps: int = 50, guidance: float = 1.0, dynamic_cfg: bool = False,
           iters: int = 10, tol: float = 1e-5, memory: int = 5, damping: float | None = None, dtype: str = "fp32",
           image_latents: torch.Tensor | None = None, hooks: Hooks | None = None) -> Trajectory:
    """Exact DDIM inversion of `latent` (``[B, F, C, H, W]``, scaled) into a Trajectory.

    At most ``1 + iters`` model calls per step on average; with a tolerance the budget is pooled
    across steps (see `ddim.step_budget`). `damping` None picks 1 without guidance and 0.5 with
    CFG, which amplifies the model's Jacobian and makes undamped steps overshoot."""
    hooks = hooks or Hooks()
    check_latent(model, latent)
    check_conditioning(model, cond)
    check_image_latents(model, image_latents)
    damping = solver_settings(damping, guidance, dtype)
    schedule = ddim.schedule_from_config(model.scheduler_config)
    ddim.check_invertible(schedule, steps)  # validates steps before any model call
    denoise = guarded(cogvideox.make_denoiser(model, cond, guidance, dynamic_cfg, steps, image_latents), hooks)

    def after(info):
        hooks.after_step(info["i"], steps, {"t": info["t"], "residual": info["stats"].residual,
                                             "calls": info["stats"].calls})

    with cogvideox.on_device(model.transformer, model):
        latents, stats = ddim.invert(denoise, latent, schedule, steps, iters, tol, damping, memory, callback=after)
    return Trajectory(
        latents=torch.stack(latents).to(DTYPES[dtype]), timesteps=ddim.timesteps(schedule, steps),
        scheduler_config=dict(model.scheduler_config), model_fingerprint=model.fingerprint, model_name=model.name,
        prompt=cond.prompt, negative_prompt=cond.negative_prompt, embeds=cond.embeds, negative_embeds=cond.negative_embeds,
        guidance=float(guidance), dynamic_cfg=bool(dynamic_cfg), iterations=int(iters), tolerance=float(tol),
        extra={"damping": float(damping), "memory": int(memory)},
        residuals=[s.residual for s in stats], calls=[s.calls for s in stats],
        image_latents=None if image_latents is None else image_latents.float())


@torch.no_grad()
def sample(model, cond, noise: torch.Tensor, steps: int = 50, guidance: float = 1.0, dynamic_cfg: bool = False,
           image_latents: torch.Tensor | None = None, negative: Callable | None = None, start: int = 0,
           attention_kwargs: Callable | None = None, hooks: Hooks | None = None,
           context=None) -> torch.Tensor:
    """Deterministic DDIM sampling from `noise` (``[B, F, C, H, W]``); returns the clean latent.
    `context` is an optional context manager entered around the loop (attention patches)."""
    hooks = hooks or Hooks()
    check_latent(model, noise)
    check_conditioning(model, cond)
    check_image_latents(model, image_latents)
    schedule = ddim.schedule_from_config(model.scheduler_config)
    ddim.timesteps(schedule, steps)
    denoise = guarded(cogvideox.make_denoiser(model, cond, guidance, dynamic_cfg, steps, image_latents, negative,
                                              attention_kwargs), hooks)

    def after(info):
        hooks.after_step(info["i"], steps, {"t": info["t"], "x": info["x"], "denoised": info["denoised"]})

    with cogvideox.on_device(model.transformer, model), (context or contextlib.nullcontext()):
        return ddim.sample(denoise, noise, schedule, steps, after, start)


def reference_kwargs(model, traj, cond, opts, guidance: float, dynamic_cfg: bool, hooks: Hooks,
                     negative: Callable | None = None) -> Callable:
    """``attention_kwargs(t, x)`` for the sample pass: runs this step's reference pass (the
    trajectory latent through the same transformer, stopped after the last injected block)
    and hands its K/V to the sample pass. Outside the step window it returns None.

    With the source conditioning the reference has one row per video, shared by the CFG rows,
    unless the trajectory was itself inverted under CFG and every row receives the reference:
    then each CFG row gets its own reference row, made with the embedding that row used at
    inversion (the source's negative, the source prompt), so that on reconstruction every row
    attends to duplicates of its own keys (DESIGN fact 5). A shared row would be a duplicate
    for the conditional row only."""
    blocks = attention.parse_blocks(opts.blocks, int(model.transformer.config.num_layers))
    active = set(opts.active_steps(traj.steps))
    index = {t: i for i, t in enumerate(traj.timesteps)}
    use_cfg = guidance > 1.0
    per_cfg_row = attention.reference_per_cfg_row(use_cfg, traj.guidance > 1.0, opts.rows)

    def kwargs(t: int, x: torch.Tensor):
        i = index[int(t)]
        if i not in active or opts.weight == 0.0:
            return None
        b = x.shape[0]
        ref = traj.latent_for_step(i)
        if opts.reference_text == "source":
            text = traj.embeds.expand(b, -1, -1)
            if per_cfg_row:  # the rows' order of the sample call: [negative x B, positive x B]
                text = torch.cat([traj.negative_embeds.expand(b, -1, -1), text])
        else:  # the published recipe: a reference per CFG row, with the prompts being sampled
            text, _ = cogvideox.cfg_rows(cond, guidance, dynamic_cfg, b, None if negative is None else negative(t))
        ref = ref.repeat(text.shape[0] // b, 1, 1, 1, 1)
        rec = attention.Recording(frozenset(blocks), max(blocks), opts.text)
        hooks.before_call()
        try:
            cogvideox.transformer_call(model, ref, text, t, traj.image_latents, {"reference": rec})
        except attention.StopReference:
            pass
        return {"reference": attention.Injection(rec, attention.cfg_row_mask(b, use_cfg, opts.rows), opts.weight)}

    return kwargs


def start_noise(traj, start: str, seed: int, scale: float = 1.0) -> torch.Tensor:
    """The trajectory's inverted noise, or fresh unit noise times `scale` (SVD's first sigma)."""
    if start == "inverted":
        return traj.noise
    if start == "fresh":
        g = torch.Generator().manual_seed(int(seed))
        return torch.randn(traj.noise.shape, generator=g) * scale
    raise errors.InputError(f"start {start!r} is not 'inverted' or 'fresh'", "Pick one of the two.")


@torch.no_grad()
def guided_sample(model, cond, guidance: float = 1.0, dynamic_cfg: bool = False, start: str = "inverted",
                  seed: int = 0, negative: Callable | None = None, hooks: Hooks | None = None,
                  image_latents: torch.Tensor | None = None) -> torch.Tensor:
    """Sample the trajectory's grid with a new conditioning while every injected attention
    layer also attends to the trajectory's keys and values (see `vidinv.attention`).

    I2V models: the sample is conditioned on `image_latents` (an edited first frame) when
    given, else on the source's first frame; the reference pass always uses the source's."""
    spec = model.reference
    if spec is None:
        raise errors.InputError("Guided Sample needs a model patched with a trajectory",
                                "Connect the output of the Reference Attention node to its model input.")
    traj, opts = spec.trajectory, spec.options
    traj.check_model(model)
    traj.check_grid(ddim.schedule_from_config(model.scheduler_config))
    opts.validate(int(model.transformer.config.num_layers))
    hooks = hooks or Hooks()
    noise = start_noise(traj, start, seed)
    kwargs = reference_kwargs(model, traj, cond, opts, guidance, dynamic_cfg, hooks, negative)
    if image_latents is not None and traj.image_latents is not None and image_latents.shape != traj.image_latents.shape:
        raise errors.InputError(f"the edited first frame encodes to {tuple(image_latents.shape)}, the trajectory's "
                                f"image conditioning is {tuple(traj.image_latents.shape)}",
                                "Give a first frame of the source video's size.")
    img = traj.image_latents if image_latents is None else image_latents
    return sample(model, cond, noise, traj.steps, guidance, dynamic_cfg, img, negative,
                  attention_kwargs=kwargs, hooks=hooks, context=attention.installed(model.transformer))
