"""Null-text inversion (Mokady et al., 2023) and negative-prompt inversion (Miyake et al., 2023)
on top of a guidance-1 trajectory.

Under classifier-free guidance w > 1 a guidance-1 inversion no longer reconstructs. Null-text
inversion keeps the guidance-1 trajectory as the *pivot* and optimises the unconditional
embedding of every step, so that the guidance-w sampling step from the pivot latent lands on
the next pivot latent. Negative-prompt inversion needs no optimisation: it uses the source
prompt as the negative, so the guided output equals the conditional one on reconstruction.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable

import torch

from . import ddim, errors, solver
from .hooks import Hooks
from .models import cogvideox
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


def check_memory(model, traj, checkpoint: bool) -> None:
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
        raise errors.InputError(f"null-text inversion needs about {need / 2**30:.1f} GiB for its backward pass, "
                                f"{free / 2**30:.1f} GiB are free",
                                "Turn gradient checkpointing on, use bf16, fewer frames or a smaller size.")


def null_text_inversion(model, traj, guidance: float, iters: int = 10, lr: float = 5e-2, tol: float = 1e-5,
                        checkpoint: bool | None = None, hooks: Hooks | None = None):
    """Optimise one unconditional embedding per step (noisiest first) so that guidance-`guidance`
    DDIM sampling from the pivot trajectory follows it. Returns the trajectory with
    ``null_embeds`` ``[T, B, L, D]`` and the achieved per-step losses in ``extra``."""
    hooks = hooks or Hooks()
    if traj.guidance != 1.0:
        raise errors.InputError(f"null-text inversion pivots on a guidance-1 inversion; this trajectory used "
                                f"guidance {traj.guidance:g}", "Invert with guidance 1 first.")
    if guidance <= 1.0:
        raise errors.InputError(f"guidance {guidance:g}: null-text inversion is for sampling with guidance > 1",
                                "Pick the guidance you will edit with, e.g. 6.")
    traj.check_model(model)
    schedule = ddim.schedule_from_config(model.scheduler_config)
    traj.check_grid(schedule)
    checkpoint = model.device.type == "cuda" if checkpoint is None else checkpoint
    check_memory(model, traj, checkpoint)
    b = traj.latents.shape[1]
    uncond = traj.negative_embeds.expand(b, -1, -1).clone().to(model.device, torch.float32)
    x = traj.noise.to(model.device)
    nulls, losses = [], []
    with on_device(model.transformer, model), checkpointing(model.transformer, checkpoint):
        for i, (t, p) in enumerate(ddim.grid(schedule, traj.steps)):
            a, bb = ddim.coefficients(schedule, t, p)
            w = cogvideox.guidance_scale_at(guidance, traj.dynamic_cfg, t, traj.steps)
            target = traj.latent_for_step(i + 1).to(model.device) if i + 1 < traj.steps else traj.clean.to(model.device)
            hooks.before_call()
            with torch.no_grad():
                c_out = cogvideox.transformer_call(model, x, traj.embeds.expand(b, -1, -1), t, traj.image_latents)
            emb = uncond.clone().requires_grad_(True)
            opt = torch.optim.Adam([emb], lr=lr)
            loss_value = float("inf")
            for _ in range(iters):
                hooks.before_call()
                with torch.enable_grad():
                    u_out = cogvideox.transformer_call(model, x, emb, t, traj.image_latents)
                    x_prev = a * x + bb * (u_out + w * (c_out - u_out))
                    loss = torch.nn.functional.mse_loss(x_prev, target)
                    loss_value = float(loss.detach())
                    if loss_value <= tol:
                        break
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            uncond = emb.detach()
            with torch.no_grad():
                u_out = cogvideox.transformer_call(model, x, uncond, t, traj.image_latents)
                x = (a * x + bb * (u_out + w * (c_out - u_out))).float()
                loss_value = float(torch.nn.functional.mse_loss(x, target))
            solver.require_finite(x, "null-text inversion", i, traj.steps, f"timestep {t}", loss_value)
            nulls.append(uncond.cpu())
            losses.append(loss_value)
            hooks.after_step(i, traj.steps, {"t": t, "loss": loss_value})
    extra = dict(traj.extra, null_text={"guidance": guidance, "iters": iters, "lr": lr, "tol": tol, "losses": losses})
    return dataclasses.replace(traj, null_embeds=torch.stack(nulls), extra=extra)
