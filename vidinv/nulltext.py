"""Null-text inversion (Mokady et al., 2023), negative-prompt inversion (Miyake et al., 2023) and
prompt-tuning inversion (Dong, Xue, Li et al., 2023) on top of a trajectory.

Under classifier-free guidance w > 1 a guidance-1 inversion no longer reconstructs. Null-text
inversion keeps the guidance-1 trajectory as the *pivot* and optimises the unconditional
embedding of every step, so that the guidance-w sampling step from the pivot latent lands on
the next pivot latent. Negative-prompt inversion needs no optimisation: it uses the source
prompt as the negative, so the guided output equals the conditional one on reconstruction.
Prompt tuning optimises the *conditional* embedding of every step instead (the same loop,
`optimise_steps`), and an edit interpolates between it and the target prompt (`positive_for`).
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable

import torch

from . import ddim, errors, families, solver
from .hooks import Hooks
from .models import cogvideox
from .models import loading
from .models.loading import on_device

NEGATIVE_MODES = ("conditioning", "source prompt", "null-text")


def negative_for(mode: str, traj) -> Callable[[int], torch.Tensor] | None:
    """The unconditional embedding per timestep for the samplers:
    'conditioning' (the sampled conditioning's own negative), 'source prompt' (negative-prompt
    inversion: the trajectory's source prompt), 'null-text' (the trajectory's optimised ones)."""
    if mode == "conditioning":
        return None
    if traj is None:
        raise errors.InputError(f"negative {mode!r} needs a trajectory", "Connect the trajectory of the inversion.")
    if mode == "source prompt":
        return lambda t: traj.embeds
    if mode == "null-text":
        if traj.null_embeds is None:
            raise errors.InputError("this trajectory has no null-text embeddings",
                                    "Run the Null-Text Inversion node on it first, or pick another negative.")
        index = {t: i for i, t in enumerate(traj.timesteps)}
        return lambda t: traj.null_embeds[index[int(t)]]
    raise errors.InputError(f"negative {mode!r} is not one of {NEGATIVE_MODES}", "Pick one of them.")


def positive_for(traj, cond, eta: float) -> Callable[[int], torch.Tensor] | None:
    """The conditional embedding per timestep for the samplers when editing from prompt tuning:
    ``(1 - eta) * tuned[t] + eta * cond.embeds``; eta 0 is the learned embedding (it reconstructs
    at the guidance it was learned at), eta 1 the plain prompt of `cond` (None: nothing overridden)."""
    if not (errors.is_number(eta) and 0.0 <= eta <= 1.0):
        raise errors.InputError(f"tuned_eta {eta!r} must be a number from 0 to 1",
                                "0 = the prompt-tuned embedding, 1 = the plain prompt, between = interpolated.")
    if eta == 1.0:
        return None
    if traj is None or getattr(traj, "tuned_embeds", None) is None:
        raise errors.InputError(f"tuned_eta {eta:g} needs a trajectory with prompt-tuned embeddings; "
                                + ("none is connected" if traj is None else "this one has none"),
                                "Run the Prompt-Tuning Inversion node on the trajectory and connect it, or set "
                                "tuned_eta to 1.")
    tuned, embeds = traj.tuned_embeds, cond.embeds
    if tuned.shape[2:] != embeds.shape[1:] or not (tuned.shape[1] == embeds.shape[0] or 1 in (tuned.shape[1],
                                                                                                embeds.shape[0])):
        raise errors.InputError(f"the trajectory's tuned embeddings {tuple(tuned.shape[1:])} per step do not fit "
                                f"the prompt's embeddings {tuple(embeds.shape)}",
                                "Encode the edit with the model of the trajectory, one prompt or one per video.")
    index = {t: i for i, t in enumerate(traj.timesteps)}
    return lambda t: (1.0 - eta) * tuned[index[int(t)]].float() + eta * embeds


@contextlib.contextmanager
def checkpointing(transformer, on: bool):
    """Gradient checkpointing for the optimisation only; the model's own setting comes back."""
    before = bool(getattr(transformer, "gradient_checkpointing", False))
    if on and not before:
        transformer.enable_gradient_checkpointing()
    try:
        yield
    finally:
        if on and not before:
            transformer.disable_gradient_checkpointing()


def check_memory(model, traj, checkpoint: bool, what: str = "null-text inversion") -> None:
    """On CUDA, refuse before starting when the backward pass will clearly not fit."""
    if model.device.type != "cuda":
        return
    _, b, f, c, h, w = traj.latents.shape
    tokens = f * h * w // (model.patch_size ** 2) + model.max_text_length
    cfg = model.transformer.config
    inner = cfg.num_attention_heads * cfg.attention_head_dim
    per_layer = b * tokens * inner * torch.finfo(model.dtype).bits // 8
    layers = 2 if checkpoint else cfg.num_layers
    need = per_layer * 16 * layers + b * cfg.num_attention_heads * tokens * tokens * 4 * (1 if checkpoint else layers)
    free, _ = torch.cuda.mem_get_info(model.device)
    if need > free:
        raise errors.InputError(f"{what} needs about {need / 2**30:.1f} GiB for its backward pass, "
                                f"{free / 2**30:.1f} GiB are free",
                                "Turn gradient checkpointing on, use bf16, fewer frames or a smaller size.")


@loading.outside_inference_mode
def optimise_steps(model, traj, guidance: float, branch: str, init: torch.Tensor, iters: int, lr: float, tol: float,
                   checkpoint: bool | None, hooks: Hooks | None, what: str) -> tuple[torch.Tensor, list[float]]:
    """The optimisation loop null-text inversion and prompt tuning share: walk guidance-`guidance` DDIM
    sampling from the trajectory's noise and, at each step (noisiest first), optimise one embedding
    with Adam (`iters` forward and backward passes at most, stopping early once the MSE is within
    `tol`) so that the guided step ``a x + b (u + w (c - u))`` lands on the trajectory's next latent;
    the sample then takes that step. `branch` says which CFG branch carries the trainable embedding:
    "negative" (null-text: u; c is the source prompt's) or "positive" (prompt tuning: c; u is the
    source's negative, absent at guidance 1). Each step starts from the previous step's embedding,
    the first from `init` ``[B, L, D]``. Returns the embeddings ``[T, B, L, D]`` and the losses.

    It runs outside inference mode (ComfyUI runs nodes inside it, where autograd is off and every
    tensor is an inference tensor that a backward pass refuses): the trajectory's tensors it uses are
    copied to ordinary ones, and the model's weights are made ordinary where they are not."""
    hooks = hooks or Hooks()
    traj.check_model(model)
    schedule = ddim.schedule_from_config(model.scheduler_config)
    traj.check_grid(schedule)
    checkpoint = model.device.type == "cuda" if checkpoint is None else checkpoint
    check_memory(model, traj, checkpoint, what)
    b = traj.latents.shape[1]
    fixed_text = traj.embeds if branch == "negative" else traj.negative_embeds
    fixed_text = loading.ordinary(fixed_text).expand(b, -1, -1)
    use_cfg = guidance > 1.0
    emb = init.expand(b, -1, -1).clone().to(model.device, torch.float32)
    x = loading.ordinary(traj.noise).to(model.device)
    image_latents = loading.ordinary(traj.image_latents)
    embeds, losses = [], []
    with on_device(model.transformer, model), checkpointing(model.transformer, checkpoint):
        loading.ordinary_weights(model.transformer)
        for i, (t, p) in enumerate(ddim.grid(schedule, traj.steps)):
            a, bb = ddim.coefficients(schedule, t, p)
            w = cogvideox.guidance_scale_at(guidance, traj.dynamic_cfg, t, traj.steps)
            target = traj.latent_for_step(i + 1) if i + 1 < traj.steps else traj.clean
            target = loading.ordinary(target).to(model.device)
            fixed = None
            if use_cfg:
                hooks.before_call()
                with torch.no_grad():
                    fixed = cogvideox.transformer_call(model, x, fixed_text, t, image_latents)

            def step(e):
                out = cogvideox.transformer_call(model, x, e, t, image_latents)
                if fixed is not None:
                    u, c = (out, fixed) if branch == "negative" else (fixed, out)
                    out = u + w * (c - u)
                return a * x + bb * out

            emb = emb.clone().requires_grad_(True)
            opt = torch.optim.Adam([emb], lr=lr)
            for _ in range(iters):
                hooks.before_call()
                with torch.enable_grad():
                    loss = torch.nn.functional.mse_loss(step(emb), target)
                    if float(loss.detach()) <= tol:
                        break
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            emb = emb.detach()
            with torch.no_grad():
                x = step(emb).float()
                loss_value = float(torch.nn.functional.mse_loss(x, target))
            solver.require_finite(x, what, i, traj.steps, f"timestep {t}", loss_value)
            embeds.append(emb.cpu())
            losses.append(loss_value)
            hooks.after_step(i, traj.steps, {"t": t, "loss": loss_value})
    return torch.stack(embeds), losses


def null_text_inversion(model, traj, guidance: float, iters: int = 10, lr: float = 5e-2, tol: float = 1e-5,
                        checkpoint: bool | None = None, hooks: Hooks | None = None):
    """Optimise one unconditional embedding per step (noisiest first) so that guidance-`guidance`
    DDIM sampling from the pivot trajectory follows it. Returns the trajectory with
    ``null_embeds`` ``[T, B, L, D]`` and the achieved per-step losses in ``extra``."""
    traj.require_exact("Null-text inversion")
    if traj.guidance != 1.0:
        raise errors.InputError(f"null-text inversion pivots on a guidance-1 inversion; this trajectory used "
                                f"guidance {traj.guidance:g}", "Invert with guidance 1 first.")
    if guidance <= 1.0:
        raise errors.InputError(f"guidance {guidance:g}: null-text inversion is for sampling with guidance > 1",
                                "Pick the guidance you will edit with, e.g. 6.")
    nulls, losses = optimise_steps(model, traj, guidance, "negative", traj.negative_embeds, iters, lr, tol,
                                   checkpoint, hooks, "null-text inversion")
    extra = dict(traj.extra, null_text={"guidance": guidance, "iters": iters, "lr": lr, "tol": tol, "losses": losses})
    return dataclasses.replace(traj, null_embeds=nulls, extra=extra)


def prompt_tuning_inversion(model, traj, guidance: float, iters: int = 10, lr: float = 5e-2, tol: float = 1e-5,
                            checkpoint: bool | None = None, hooks: Hooks | None = None):
    """Prompt-tuning inversion (Dong, Xue, Li et al., ICCV 2023): optimise one conditional embedding
    per step (noisiest first, starting from the source prompt's) so that guidance-`guidance` DDIM
    sampling with it follows the trajectory; the unconditional branch keeps the source's negative.
    Returns the trajectory with ``tuned_embeds`` ``[T, B, L, D]`` and its settings and per-step
    losses in ``extra["prompt_tuning"]``; `positive_for` makes the edit's embeddings from them."""
    traj.require_exact("Prompt-tuning inversion")
    families.require(model, cogvideox.FAMILY.name, "Prompt-tuning inversion",
                     "It optimises text embeddings; use a CogVideoX model and trajectory.")
    if not (errors.is_number(guidance) and guidance >= 1.0):
        raise errors.InputError(f"guidance {guidance!r}: prompt tuning needs the guidance you will edit with, a "
                                "finite number >= 1", "Pick e.g. 6 (or 1 for sampling without guidance).")
    for name, value, ok in (("iterations", iters, errors.is_count(iters) and iters >= 1),
                            ("learning rate", lr, errors.is_number(lr) and lr > 0),
                            ("tolerance", tol, errors.is_number(tol) and tol >= 0)):
        if not ok:
            raise errors.InputError(f"prompt tuning {name} {value!r} is out of range",
                                    "Use iterations >= 1, a learning rate > 0 and a tolerance >= 0.")
    tuned, losses = optimise_steps(model, traj, float(guidance), "positive", traj.embeds, iters, lr, tol,
                                   checkpoint, hooks, "prompt-tuning inversion")
    extra = dict(traj.extra, prompt_tuning={"guidance": float(guidance), "iters": iters, "lr": lr, "tol": tol,
                                            "losses": losses})
    return dataclasses.replace(traj, tuned_embeds=tuned, extra=extra)
